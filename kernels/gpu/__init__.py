"""GPU kernels (CuPy): `ops` registers them (and imports CuPy); `codegen` and the `cuda_*` source
modules are pure Python, so tests can generate and nvcc-compile kernels without CuPy or a GPU."""
