"""ONNX Runtime's com.microsoft fused ops whose semantics graphopt's own ai.graphopt ops share.

Models that went through ORT's transformer optimizer or `graphopt compile --target ort` hold
these; graphopt.Session runs them with the ai.graphopt kernels (kernels/cpu/fused.py, which
were written to ORT's definitions) and their build-time prepared forms. The contrib schemas are
not in the onnx package, so their attribute defaults are filled in here; they were checked
against onnxruntime 1.32 (tests/unit/test_contrib_kernels.py runs each op in both).

    Gelu(X)                          erf GELU
    FastGelu(X, bias?)               tanh-approximated GELU of X + bias
    BiasGelu(A, B)                   erf GELU of A + B
    QuickGelu(X; alpha=1.702)        X * sigmoid(alpha * X)
    SkipLayerNormalization(X, skip, gamma, beta?, bias?; epsilon=1e-12)
    FusedConv, FusedGemm             Conv / Gemm + activation (the same attributes as ai.graphopt's)
    SkipSimplifiedLayerNormalization(X, skip, gamma, bias?; epsilon=1e-12)   RMS norm of X + skip (+ bias)
    FusedMatMul(A, B; alpha, transA, transB)   alpha * A' @ B' (transBatchA/B refused at build)
    GridSample(X, grid; mode, padding_mode, align_corners)   PyTorch's export below opset 16
In the default domain, for opsets where ONNX has no such op: LayerNormalization (standard from 17)
and SimplifiedLayerNormalization (RMS norm), which ORT registers from opset 1.
Attention, MultiHeadAttention and EmbedLayerNormalization: kernels/cpu/contrib_attention.py;
GroupQueryAttention: kernels/cpu/contrib_gqa.py. Others stay unsupported: Session lists them at
build, as any op without a kernel.
"""
from __future__ import annotations

import numpy as np

from ..registry import kernel, prepare
from . import fused, norm, resize

DOMAIN = "com.microsoft"


def _with_defaults(fn, defaults: dict):
    """fn(ins, attrs) with the attributes a node leaves out taken from `defaults`."""
    if not defaults:
        return fn

    def run(ins, at):
        return fn(ins, {**defaults, **at})
    return run


def _prepare_with_defaults(hook, defaults: dict):
    if not defaults:
        return hook

    def prep(at, consts, generic):
        return hook({**defaults, **at}, consts, generic)
    return prep


def _fast_gelu(ins, at):
    bias = ins[1] if len(ins) > 1 and ins[1] is not None else None
    if bias is None:
        return fused.gelu(ins[:1], {"approximate": "tanh"})
    return fused.bias_gelu([ins[0], bias], {"approximate": "tanh"})


def _skip_simplified_layer_norm(ins, at):
    """RMS norm of input + skip (+ bias); outputs (y, mean: not written, inv_std_var: not written, sum)."""
    s = ins[0] + ins[1]
    if len(ins) > 3 and ins[3] is not None:
        s = s + ins[3]
    y = fused.rms_norm([s, ins[2]], {"epsilon": at["epsilon"]})[0]
    return (y, None, None, s) if at.get("__n_outputs__", 1) >= 4 else (y,)


_SAME = {  # op -> (ai.graphopt kernel, its prepare hook or None, ORT's attribute defaults)
    "Gelu": (lambda ins, at: fused.gelu(ins, {"approximate": "none"}), None, {}),
    "FastGelu": (_fast_gelu, None, {}),
    "BiasGelu": (lambda ins, at: fused.bias_gelu(ins, {"approximate": "none"}), None, {}),
    "QuickGelu": (fused.quick_gelu, None, {"alpha": 1.702}),
    "SkipLayerNormalization": (fused.skip_layer_norm, fused.prepare_skip_layer_norm, {"epsilon": 1e-12}),
    "FusedConv": (fused.fused_conv, fused.prepare_fused_conv, {}),
    "FusedGemm": (fused.fused_gemm, fused.prepare_fused_gemm, {}),
    # RMS norms of ORT's transformer optimizer (T5/LLaMA-like models): the ai.graphopt RMSNormalization
    "SkipSimplifiedLayerNormalization": (_skip_simplified_layer_norm, None, {"epsilon": 1e-12}),
}
for _op, (_fn, _hook, _defaults) in _SAME.items():
    kernel(_op, 1, domain=DOMAIN)(_with_defaults(_fn, _defaults))
    if _hook is not None:
        prepare(_op, 1, domain=DOMAIN)(_prepare_with_defaults(_hook, _defaults))


def _fused_matmul(ins, at):
    """alpha * op(A) @ op(B), op transposing the last two axes (ORT's MatMul + Transpose/Mul fusion)."""
    a, b = ins[0], ins[1]
    if at.get("transA") and a.ndim >= 2:
        a = np.swapaxes(a, -1, -2)
    if at.get("transB") and b.ndim >= 2:
        b = np.swapaxes(b, -1, -2)
    y = np.matmul(a, b)
    alpha = at.get("alpha", 1.0)
    return (y if alpha == 1.0 else (y * y.dtype.type(alpha)).astype(y.dtype, copy=False),)


def _refuse_fused_matmul(at, inputs, outputs):
    return "transBatchA/transBatchB" if at.get("transBatchA") or at.get("transBatchB") else None


_fused_matmul.refuse = _refuse_fused_matmul
kernel("FusedMatMul", 1, domain=DOMAIN)(_fused_matmul)


# PyTorch exports grid_sample below opset 16 as com.microsoft GridSample: the standard op's semantics
# (GridSample-16), with the same attributes and defaults
kernel("GridSample", 1, domain=DOMAIN)(_with_defaults(
    resize.grid_sample, {"mode": "bilinear", "padding_mode": "zeros", "align_corners": 0}))


# ORT also registers two normalizations in the default domain from opset 1 on, and its transformer
# optimizer writes them into models of any opset (LayerNormalization is standard only from 17):
# below 17 they would otherwise have no kernel here
_ORT_DEFAULT_DOMAIN = {
    "LayerNormalization": (norm.layer_norm, {"axis": -1, "epsilon": 1e-5, "stash_type": 1}),
    "SimplifiedLayerNormalization": (lambda ins, at: fused.rms_norm(ins[:2], at), {"axis": -1, "epsilon": 1e-5}),
}
for _op, (_fn, _defaults) in _ORT_DEFAULT_DOMAIN.items():
    kernel(_op, 1)(_with_defaults(_fn, _defaults))
