"""Lossy quantization passes (opt-in, never implied by -O): int8 static QDQ, int8 dynamic.

They work on the exported ModelProto after the lossless pipeline; graphopt.lossy drives them."""
from .dynamic import apply_dynamic  # noqa: F401
from .static import QuantReport, apply_static, plan_static  # noqa: F401
