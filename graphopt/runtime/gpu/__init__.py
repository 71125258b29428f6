"""The GPU runtime (CuPy arrays end to end), built on the plan's public builder API only.
Importing it does not import CuPy; building a GpuSession does."""
