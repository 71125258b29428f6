"""O2 convolution fusions: fold BatchNormalization, per-channel Mul/Add and zero Pad into the op before.

All arithmetic on weights is done in float64 and stored back in the weight's dtype.
"""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.compiler.pass_manager import register_rules
from graphopt.compiler.rewrite import Const, Op, Rule, Var, attr_value

from .common import FLOAT_TYPES, axis_vector, only_first_output_used, optional_input, out_like

NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Abs", "Softplus", "Exp"}  # what zero-padding a MaxPool may rely on


# ---------------------------------------------------------------- weights

def _out_channels(conv, w: np.ndarray, opset: int) -> int:
    if conv.op == "ConvTranspose":
        return w.shape[1] * (attr_value(conv, "group", opset) or 1)
    return w.shape[0]


def _scale_out_channels(conv, w: np.ndarray, s: np.ndarray, opset: int) -> np.ndarray:
    """W with output channel k multiplied by s[k] (Conv: W[k]; ConvTranspose: W[:, k] within its group)."""
    w64 = w.astype(np.float64)
    if conv.op == "Conv":
        out = w64 * s.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        g = attr_value(conv, "group", opset) or 1
        grouped = w64.reshape((g, w.shape[0] // g, w.shape[1]) + w.shape[2:])
        out = (grouped * s.reshape((g, 1, w.shape[1]) + (1,) * (w.ndim - 2))).reshape(w.shape)
    return out.astype(w.dtype)


def _bias(m, node, index: int, size: int) -> np.ndarray:
    t = optional_input(node, index)
    return np.zeros(size, np.float64) if t is None else np.broadcast_to(ir.const_value(t).astype(np.float64), (size,))


def _conv_ok(m) -> str | None:
    conv, w = m.nodes["conv"], m.const("w")
    if w.dtype not in FLOAT_TYPES:
        return "weight is not floating point"
    b = optional_input(conv, 2)
    if b is not None and ir.const_value(b) is None:
        return f"{conv.op} bias is not a constant"
    if conv.op == "ConvTranspose" and w.shape[0] % (attr_value(conv, "group", m.opset) or 1):
        return "ConvTranspose weight does not divide into groups"
    return None


# ---------------------------------------------------------------- BatchNormalization

def _bn_inference(m, bn=None) -> str | None:
    bn = bn or m.root
    if m.opset < 7 and attr_value(bn, "is_test", m.opset) == 0:
        return "BatchNormalization in training mode (is_test=0)"
    if m.opset < 9 and attr_value(bn, "spatial", m.opset) == 0:
        return "BatchNormalization with spatial=0 (per-element statistics)"
    if m.opset >= 14 and attr_value(bn, "training_mode", m.opset) == 1:
        return "BatchNormalization in training mode"
    if not only_first_output_used(m.graph, bn):
        return "BatchNormalization running statistics are used"
    return None


def _bn_scale_shift(m, channels: int):
    """y = s*x + t for this BatchNormalization, or a reason string."""
    stats = [m.const(k) for k in ("scale", "bias", "mean", "var")]
    if any(v.size != channels for v in stats):
        return f"BatchNormalization statistics do not have {channels} channels"
    scale, bias, mean, var = (v.astype(np.float64).reshape(-1) for v in stats)
    eps = attr_value(m.root, "epsilon", m.opset)
    s = scale / np.sqrt(var + (1e-5 if eps is None else eps))
    if not np.all(np.isfinite(s)):
        return "BatchNormalization scale is not finite (variance + epsilon <= 0?)"
    return s, bias - mean * s


def _bn_conv_check(m) -> str | None:
    reason = _bn_inference(m) or _conv_ok(m)
    if reason:
        return reason
    st = _bn_scale_shift(m, _out_channels(m.nodes["conv"], m.const("w"), m.opset))
    return st if isinstance(st, str) else None


def _bn_into_conv(m):
    conv, w = m.nodes["conv"], m.const("w")
    s, t = _bn_scale_shift(m, _out_channels(conv, w, m.opset))
    bias = _bias(m, conv, 2, s.size) * s + t
    return m.op(conv.op, [m["x"], m.constant(_scale_out_channels(conv, w, s, m.opset), "w"),
                          m.constant(bias.astype(w.dtype), "b")], conv.attrs, **out_like(m))


def _gemm_shape(m):
    """(K, N, transB) of the Gemm/MatMul feeding the BatchNormalization, or a reason."""
    node, w = m.nodes["gemm"], m.const("w")
    if w.ndim != 2:
        return "weight is not 2-D"
    if ir.rank(m["x"]) != 2:
        return "input rank is not known to be 2 (the channel axis would not be the last)"
    if w.dtype not in FLOAT_TYPES:
        return "weight is not floating point"
    if node.op == "MatMul":
        return w.shape[0], w.shape[1], 0
    if optional_input(node, 2) is not None and ir.const_value(node.inputs[2]) is None:
        return "Gemm C is not a constant"
    trans_b = attr_value(node, "transB", m.opset) or 0
    return (w.shape[1], w.shape[0], trans_b) if trans_b else (w.shape[0], w.shape[1], 0)


def _bn_gemm_check(m) -> str | None:
    reason = _bn_inference(m)
    if reason:
        return reason
    shape = _gemm_shape(m)
    if isinstance(shape, str):
        return shape
    if m.opset < 7 and m.nodes["gemm"].op == "Gemm":
        return "Gemm before opset 7 needs the broadcast attribute"
    st = _bn_scale_shift(m, shape[1])
    return st if isinstance(st, str) else None


def _bn_into_gemm(m):
    node, w = m.nodes["gemm"], m.const("w")
    _, n, trans_b = _gemm_shape(m)
    s, t = _bn_scale_shift(m, n)
    alpha = attr_value(node, "alpha", m.opset) if node.op == "Gemm" else 1.0
    beta = attr_value(node, "beta", m.opset) if node.op == "Gemm" else 1.0
    w2 = w.astype(np.float64) * alpha * (s[:, None] if trans_b else s[None, :])
    c = optional_input(node, 2) if node.op == "Gemm" else None
    c_val = 0.0 if c is None else ir.const_value(c).astype(np.float64)
    bias = (beta * c_val) * s + t  # broadcasts to [N] or [M, N]
    attrs = {"transA": attr_value(node, "transA", m.opset) or 0} if node.op == "Gemm" else {}
    attrs["transB"] = trans_b
    return m.op("Gemm", [m["x"], m.constant(w2.astype(w.dtype), "w"), m.constant(bias.astype(w.dtype), "c")],
                attrs, **out_like(m))


# ---------------------------------------------------------------- per-channel Mul / Add

def _channel_vector(m, node, channels: int) -> np.ndarray | str:
    c = m.const("c")
    out = node.outputs[0]
    rank = ir.rank(out) if ir.rank(out) is not None else (m.const("w").ndim if "w" in m.consts else None)
    if rank is None or rank < 2:
        return "rank of the output is unknown"
    if out.dtype is not None and np.dtype(out.dtype) != c.dtype:
        return "dtypes differ"
    vec = axis_vector(c, rank, 1, channels)
    if vec is None:
        return "constant is not per-channel (it varies along another axis or would broadcast the output)"
    if not np.all(np.isfinite(vec)):
        return "constant is not finite"
    return vec.astype(np.float64)


def _conv_affine_check(m) -> str | None:
    reason = _conv_ok(m)
    if reason:
        return reason
    vec = _channel_vector(m, m.nodes["conv"], _out_channels(m.nodes["conv"], m.const("w"), m.opset))
    return vec if isinstance(vec, str) else None


def _mul_into_conv(m):
    conv, w = m.nodes["conv"], m.const("w")
    c = _channel_vector(m, conv, _out_channels(conv, w, m.opset))
    bias = optional_input(conv, 2)
    inputs = [m["x"], m.constant(_scale_out_channels(conv, w, c, m.opset), "w")]
    if bias is not None:
        inputs.append(m.constant((_bias(m, conv, 2, c.size) * c).astype(w.dtype), "b"))
    return m.op(conv.op, inputs, conv.attrs, **out_like(m))


def _add_into_conv(m):
    conv, w = m.nodes["conv"], m.const("w")
    c = _channel_vector(m, conv, _out_channels(conv, w, m.opset))
    bias = _bias(m, conv, 2, c.size) + c
    return m.op(conv.op, [m["x"], conv.inputs[1],
                          m.constant(bias.astype(w.dtype), "b")], conv.attrs, **out_like(m))


def _bn_affine_check(m) -> str | None:
    bn = m.nodes["bn"]
    reason = _bn_inference(m, bn)
    if reason:
        return reason
    if m.const("scale").shape != m.const("bias").shape or m.const("scale").ndim != 1:
        return "BatchNormalization scale/bias are not vectors"
    vec = _channel_vector(m, bn, m.const("scale").size)
    return vec if isinstance(vec, str) else None


def _affine_into_bn(m, mul: bool):
    bn = m.nodes["bn"]
    c = _channel_vector(m, bn, m.const("scale").size)
    scale, bias = m.const("scale"), m.const("bias")
    new_scale = scale.astype(np.float64) * c if mul else scale
    new_bias = bias.astype(np.float64) * c if mul else bias.astype(np.float64) + c
    inputs = [m["x"], m.constant(np.asarray(new_scale).astype(scale.dtype), "scale"),
              m.constant(new_bias.astype(bias.dtype), "bias"), m["mean"], m["var"]]
    return m.op("BatchNormalization", inputs, bn.attrs, **out_like(m))


# ---------------------------------------------------------------- Pad

def _pad_amounts(m, rank: int | None):
    """(pads over all axes as [begins..., ends...], fill value) of the matched Pad, or a reason."""
    pad = m.nodes["pad"]
    if m.opset < 2:
        return "Pad before opset 2 not handled"
    if m.opset < 11:
        pads, value = attr_value(pad, "pads", m.opset), attr_value(pad, "value", m.opset) or 0.0
        axes = None
    else:
        vals = [None if t is None else ir.const_value(t) for t in (optional_input(pad, i) for i in (1, 2, 3))]
        if vals[0] is None or any(v is None and optional_input(pad, i) is not None for i, v in zip((1, 2, 3), vals)):
            return "pads, constant_value or axes are not constant"
        pads, value, axes = vals[0], 0.0 if vals[1] is None else vals[1], vals[2]
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    value = float(np.asarray(value).reshape(-1)[0]) if np.asarray(value).size else 0.0
    if axes is not None:
        if rank is None:
            return "Pad has axes and the rank is unknown"
        axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[rank + a] = pads[i], pads[len(axes) + i]
        pads = full
    if rank is not None and len(pads) != 2 * rank:
        return "Pad rank does not match"
    return pads, value


def _merged_pads(m, node, rank: int | None):
    """The consumer's pads with the Pad's spatial padding added, or a reason."""
    got = _pad_amounts(m, rank)
    if isinstance(got, str):
        return got
    pads, value = got
    r = len(pads) // 2
    if attr_value(node, "auto_pad", m.opset) not in (None, "NOTSET"):
        return f"{node.op} uses auto_pad"
    if any(p < 0 for p in pads):
        return "Pad crops (negative pads)"
    if pads[0] or pads[1] or pads[r] or pads[r + 1]:
        return "Pad pads the batch or channel axis"
    own = list(attr_value(node, "pads", m.opset) or [0] * (2 * (r - 2)))
    if len(own) != 2 * (r - 2):
        return "pads rank mismatch"
    spatial = pads[2:r] + pads[r + 2:]
    return [a + b for a, b in zip(own, spatial)], value, own


def _pad_conv_check(m) -> str | None:
    rank = ir.rank(m["x"]) or ir.rank(m["w"])
    got = _merged_pads(m, m.root, rank)
    if isinstance(got, str):
        return got
    return None if got[1] == 0 else "Pad value is not zero"


def _pool_rank(m):
    kernel = attr_value(m.root, "kernel_shape", m.opset)
    return None if kernel is None else len(kernel) + 2


def _pad_avgpool_check(m) -> str | None:
    got = _merged_pads(m, m.root, _pool_rank(m))
    if isinstance(got, str):
        return got
    _, value, own = got
    if value != 0:
        return "Pad value is not zero"
    if m.opset < 7:
        return "AveragePool before opset 7 cannot count padding"
    if attr_value(m.root, "ceil_mode", m.opset):
        return "AveragePool uses ceil_mode"
    if any(own) and not attr_value(m.root, "count_include_pad", m.opset):
        return "AveragePool has its own padding excluded from the average (count_include_pad=0)"
    return None


def _pad_maxpool_check(m) -> str | None:
    got = _merged_pads(m, m.root, _pool_rank(m))
    if isinstance(got, str):
        return got
    merged, value, _ = got
    if len(m.root.outputs) > 1 and not only_first_output_used(m.graph, m.root):
        return "MaxPool indices are used"
    if value == -np.inf:
        return None
    if value != 0:
        return "Pad value is neither zero nor -inf"
    src = ir.producer(m["x"])
    if src is None or src.op not in NONNEGATIVE_OPS:
        return "zero padding differs from MaxPool padding unless the input is known non-negative"
    kernel = attr_value(m.root, "kernel_shape", m.opset)
    r = len(kernel)
    if attr_value(m.root, "ceil_mode", m.opset) or any(d != 1 for d in (attr_value(m.root, "dilations", m.opset) or [])):
        return "MaxPool uses ceil_mode or dilations"
    if any(p >= kernel[i % r] for i, p in enumerate(merged)):
        return "a window could lie entirely in the padding"
    return None


def _pad_into(m, extra: dict | None = None):
    got = _merged_pads(m, m.root, ir.rank(m["x"]) or (ir.rank(m["w"]) if "w" in m.values else _pool_rank(m)))
    attrs = dict(m.root.attrs, pads=got[0], **(extra or {}))
    inputs = [m["x"]] + list(m.root.inputs[1:])
    return m.op(m.root.op, inputs, attrs, **out_like(m))  # MaxPool indices are unused (checked)


# ---------------------------------------------------------------- the rules

CONV = Op(("Conv", "ConvTranspose"), Var("x"), Const("w"), allow_extra_inputs=True, name="conv")
BN_STATS = (Const("scale"), Const("bias"), Const("mean"), Const("var"))
BN = Op("BatchNormalization", Var("x"), Const("scale"), Const("bias"), Var("mean"), Var("var"), name="bn")
PAD = Op("Pad", Var("x"), allow_extra_inputs=True, attrs={"mode": "constant"}, name="pad")

CONV_RULES = [
    Rule("bn-into-conv", Op("BatchNormalization", CONV, *BN_STATS), _bn_into_conv,
         _bn_conv_check),  # BN(Conv(x, W, B)) -> Conv(x, W*s, (B-mean)*s+beta), s = g/sqrt(var+eps)
    Rule("bn-into-gemm", Op("BatchNormalization", Op(("Gemm", "MatMul"), Var("x"), Const("w"), allow_extra_inputs=True,
                                                     name="gemm"), *BN_STATS),
         _bn_into_gemm, _bn_gemm_check),  # BN(x@W + C) -> Gemm(x, W*s, (C-mean)*s+beta)   (x 2-D)
    Rule("mul-into-conv", Op("Mul", CONV, Const("c"), commutative=True), _mul_into_conv,
         _conv_affine_check),  # Conv(x, W, B) * c[C] -> Conv(x, W*c, B*c)
    Rule("add-into-conv", Op("Add", CONV, Const("c"), commutative=True), _add_into_conv,
         _conv_affine_check),  # Conv(x, W, B) + c[C] -> Conv(x, W, B+c)
    Rule("mul-into-bn", Op("Mul", BN, Const("c"), commutative=True), lambda m: _affine_into_bn(m, True),
         _bn_affine_check),  # BN(x; g, b) * c[C] -> BN(x; g*c, b*c)
    Rule("add-into-bn", Op("Add", BN, Const("c"), commutative=True), lambda m: _affine_into_bn(m, False),
         _bn_affine_check),  # BN(x; g, b) + c[C] -> BN(x; g, b+c)
    Rule("pad-into-conv", Op("Conv", PAD, Var("w"), allow_extra_inputs=True), _pad_into,
         _pad_conv_check),  # Conv(Pad(x, p, 0)) -> Conv(x, pads+p)
    Rule("pad-into-avgpool", Op("AveragePool", PAD), lambda m: _pad_into(m, {"count_include_pad": 1}),
         _pad_avgpool_check),  # AveragePool(Pad(x, p, 0)) -> AveragePool(x, pads+p, count_include_pad=1)
    Rule("pad-into-maxpool", Op("MaxPool", PAD), _pad_into,
         _pad_maxpool_check),  # MaxPool(Pad(x>=0, p, 0 | -inf)) -> MaxPool(x, pads+p)
]

# O1: every rule here folds constants into weights (standard ops only, any target), which is the
# constant folding users expect from -O1 (onnxsim does the same by default).
register_rules("fuse-conv", CONV_RULES, level=1,
               doc="Fold BatchNormalization, per-channel Mul/Add and zero Pad into Conv/ConvTranspose/Gemm/pools")
