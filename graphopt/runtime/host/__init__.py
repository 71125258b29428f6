"""What the runtime asks of the host: memory kept between runs, BLAS thread caps."""
