"""O2 fusions. Importing registers them; order is pipeline order. Transformer rules build canonical
ai.graphopt ops that lower.py spells for the output target (onnx / ort / graphopt)."""
from . import conv, gemm, layout, transformer, gelu, attention, hardswish  # noqa: F401
from . import activation  # noqa: F401,E402  (Conv/Gemm + activation -> FusedConv/FusedGemm, after BN folding)
from . import rmsnorm  # noqa: F401,E402  (residual Add + RMSNorm -> SkipSimplifiedLayerNormalization)
from . import rotary  # noqa: F401,E402  (rotate_half rotary embedding -> RotaryEmbedding before the head split)
from . import flat_gemm  # noqa: F401,E402  (Gemm on flattened tokens viewed back -> MatMul + Add)
from . import gated_mlp  # noqa: F401,E402  (SiLU(g) * u -> SiluMul, target graphopt)
