"""O2 fusions for target `onnx` (standard ops only). Importing registers them; order is pipeline order."""
from . import conv, gemm, layout, transformer  # noqa: F401
