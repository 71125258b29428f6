"""Importing this registers every GPU kernel (it imports CuPy: only the GPU session does)."""
from . import data, elementwise, fused, linalg, nn  # noqa: F401
