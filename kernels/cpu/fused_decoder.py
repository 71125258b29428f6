"""ai.graphopt fused ops of decoder models (compile --target graphopt), on the fused.py kernels.

    SkipSimplifiedLayerNormalization(X, skip, gamma, bias?; epsilon=1e-12)
        RMS norm of s = X + skip (+ bias) over the last axis, times gamma; outputs (y, -, -, s):
        the 2nd and 3rd (mean, inverse std) are never written, as in ORT's com.microsoft op of that
        name, whose semantics and default epsilon it keeps (passes/fusion/rmsnorm.py emits it).
    RotaryEmbedding(X, cos, sin; num_heads, interleaved=0)
        the standard op's 3-D form without position_ids (passes/fusion/rotary.py emits it); cos/sin
        (B|1, S, D/2) broadcast over the batch as the export's Mul did
    SiluMul(G, U)
        G * sigmoid(G) * U, the SiLU-gated MLP's gate (passes/fusion/gated_mlp.py), G and U of one shape
"""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from . import attention, fused

DOMAIN = "ai.graphopt"


@kernel("SkipSimplifiedLayerNormalization", 1, domain=DOMAIN)
def skip_simplified_layer_norm(ins, at):
    s = ins[0] + ins[1]
    if len(ins) > 3 and ins[3] is not None:
        s = s + ins[3]
    y = fused.rms_norm([s, ins[2]], {"epsilon": at.get("epsilon", 1e-12)})[0]
    return (y, None, None, s) if at.get("__n_outputs__", 1) >= 4 else (y,)


kernel("RotaryEmbedding", 1, domain=DOMAIN)(attention.rotary_embedding)


@kernel("SiluMul", 1, domain=DOMAIN)
def silu_mul(ins, at):
    g, u = ins
    y = fused.quick_gelu([g], {"alpha": 1.0})[0]  # a fresh array: the product is written into it
    np.multiply(y, u, out=y)
    return (y,)
