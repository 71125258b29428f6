"""GPU kernels for graphopt's own fused ops (domain ai.graphopt, `graphopt compile --target graphopt`);
the semantics are those of the CPU kernels (kernels/cpu/gelu.py, layernorm.py, attention.py, conv_activation.py). Attention goes to the tiled online-softmax kernel, the
norms and GELU to their custom kernels, FusedConv / FusedGemm to the Conv / GEMM paths plus the
activation."""
from __future__ import annotations

import numpy as np

import cupy as cp

from ..registry import kernel
from . import cupy_runtime as rt
from . import elementwise, linalg, nn

DOMAIN = "ai.graphopt"


@kernel("Gelu", 1, device="gpu", domain=DOMAIN)
def gelu(ins, at):
    return elementwise.gelu([ins[0]], {"approximate": at.get("approximate") or "none"})


@kernel("QuickGelu", 1, device="gpu", domain=DOMAIN)
def quick_gelu(ins, at):
    x = rt.device(ins[0])
    calc = x.astype(np.float32) if x.dtype == np.float16 else x  # as the CPU kernel: float16's exp overflows
    gate = calc * calc.dtype.type(at.get("alpha", 1.702))
    return ((calc / (1 + cp.exp(-gate))).astype(x.dtype, copy=False),)


@kernel("BiasGelu", 1, device="gpu", domain=DOMAIN)
def bias_gelu(ins, at):
    x = rt.device(ins[0])
    return elementwise.gelu([x + rt.device(ins[1]).astype(x.dtype, copy=False)],
                            {"approximate": at.get("approximate") or "none"})


@kernel("LayerNormalization", 1, device="gpu", domain=DOMAIN)
def layer_norm(ins, at):
    bias = rt.device(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    return nn._norm(rt.device(ins[0]), rt.device(ins[1]), bias, at.get("axis", -1), at.get("epsilon", 1e-5), 0, 1)


@kernel("SkipLayerNormalization", 1, device="gpu", domain=DOMAIN)
def skip_layer_norm(ins, at):
    x = rt.device(ins[0])
    x = x + rt.device(ins[1]).astype(x.dtype, copy=False)
    if len(ins) > 4 and ins[4] is not None:  # ORT's 5th input: a bias added with the skip (and in the sum)
        x += rt.device(ins[4]).astype(x.dtype, copy=False)
    bias = rt.device(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    y = nn._norm(x, rt.device(ins[2]), bias, -1, at.get("epsilon", 1e-5), 0, 1)
    if at.get("__n_outputs__", 1) < 4:
        return y
    return (y[0], None, None, x)  # ORT's output order (as the CPU kernel): the sum is the 4th


@kernel("RMSNormalization", 1, device="gpu", domain=DOMAIN)
def rms_norm(ins, at):
    return nn._norm(rt.device(ins[0]), rt.device(ins[1]), None, at.get("axis", -1), at.get("epsilon", 1e-5), 1, 1)


@kernel("Attention", 1, device="gpu", domain=DOMAIN)
def attention(ins, at):
    """Q, K, V (B, S, H*D) with an optional additive mask: the standard Attention kernel's 3-D form."""
    heads = int(at["num_heads"])
    std = {"q_num_heads": heads, "kv_num_heads": int(at.get("kv_num_heads", heads)), "scale": float(at["scale"]), "is_causal": 0,
           "__n_outputs__": 1}
    mask = ins[3] if len(ins) > 3 and ins[3] is not None else None
    if mask is not None:
        m = rt.device(mask)
        mask = m.astype(np.float32, copy=False) if m.dtype != np.bool_ else m
    return nn.attention([ins[0], ins[1], ins[2], mask], std)[:1]


def _activate(y, name: str, params):
    t = y.dtype.type
    if name == "Identity":
        return y
    if name == "Relu":
        return cp.maximum(y, 0, out=y)
    if name == "Tanh":
        return cp.tanh(y, out=y)
    if name == "Sigmoid":
        return (1 / (1 + cp.exp(-y))).astype(y.dtype, copy=False)
    if name == "LeakyRelu":
        return cp.where(y < 0, y * t(params[0]), y).astype(y.dtype, copy=False)
    if name == "Clip":
        return cp.clip(y, t(params[0]), t(params[1]), out=y)
    if name == "HardSigmoid":
        return cp.clip(y * t(params[0]) + t(params[1]), 0, 1).astype(y.dtype, copy=False)
    if name == "HardSwish":
        return (y * cp.clip(y * t(1 / 6) + t(0.5), 0, 1)).astype(y.dtype, copy=False)
    raise rt.Unsupported(f"FusedConv/FusedGemm on the GPU: unknown activation {name!r}")


@kernel("FusedConv", 1, device="gpu", domain=DOMAIN)
def fused_conv(ins, at):
    conv_at = {k: at.get(k) for k in ("group", "strides", "dilations", "pads", "auto_pad", "kernel_shape")}
    conv_at["group"] = conv_at["group"] or 1
    y = linalg.conv(list(ins[:3]), conv_at)[0]
    if len(ins) > 3 and ins[3] is not None:
        y += rt.device(ins[3]).astype(y.dtype, copy=False)
    return (_activate(y, at.get("activation") or "Identity", at.get("activation_params") or []),)


@kernel("FusedGemm", 1, device="gpu", domain=DOMAIN)
def fused_gemm(ins, at):
    gemm_at = {k: (at.get(k) if at.get(k) is not None else d)
               for k, d in (("alpha", 1.0), ("beta", 1.0), ("transA", 0), ("transB", 0))}
    y = linalg.gemm(list(ins), gemm_at)[0]
    params = [at.get("activation_alpha", 0.01), at.get("activation_beta", 0.5)]
    return (_activate(y, at.get("activation") or "Identity", params),)
