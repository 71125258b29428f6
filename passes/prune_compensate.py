"""Bias compensation for channel pruning.

A channel is pruned because its weights are small, not its bias: its output is close to the
constant act(bias), and the next layers rely on that constant. Dropping it outright shifts every
downstream activation; instead the constant is carried through the region (the per-channel ops in
between are applied to it) and folded into the bias of the Conv/Gemm that ends the region. Exact
when the pruned weights are zero and the ending layer has no padding (the tests build such
models); elsewhere a first-order correction. Where the constant cannot be followed (a gate, an op
without a rule here), `lost` is None and the channel is simply dropped.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper


def _attr(node, name, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def unary(view, node, v: np.ndarray | None) -> np.ndarray | None:
    """The elementwise op `node` applied to the constant values v (None: no rule for it)."""
    if v is None:
        return None
    v = v.astype(np.float64)
    op = node.op_type
    if op in ("Identity", "Dropout"):
        return v
    if op == "Relu":
        return np.maximum(v, 0)
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-v))
    if op == "Tanh":
        return np.tanh(v)
    if op == "Neg":
        return -v
    if op == "Abs":
        return np.abs(v)
    if op == "HardSigmoid":
        return np.clip(_attr(node, "alpha", 0.2) * v + _attr(node, "beta", 0.5), 0, 1)
    if op == "HardSwish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    if op == "LeakyRelu":
        return np.where(v >= 0, v, _attr(node, "alpha", 0.01) * v)
    if op == "Elu":
        return np.where(v > 0, v, _attr(node, "alpha", 1.0) * np.expm1(v))
    if op == "Softplus":
        return np.logaddexp(0, v)
    if op == "Mish":
        return v * np.tanh(np.logaddexp(0, v))
    if op == "Gelu" and _attr(node, "approximate", "none") in ("none", b"none"):
        return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))
    if op in ("Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Softsign"):
        with np.errstate(all="ignore"):  # a constant outside the op's domain: no folding (None below)
            out = {"Erf": lambda x: np.vectorize(math.erf)(x) if x.size else x, "Exp": np.exp, "Log": np.log,
                   "Sqrt": np.sqrt, "Reciprocal": lambda x: 1 / x, "Softsign": lambda x: x / (1 + np.abs(x))}[op](v)
        return out if np.all(np.isfinite(out)) else None
    if op == "Clip":
        bounds = [_attr(node, "min", None), _attr(node, "max", None)]  # opset < 11
        for k, name in enumerate(node.input[1:3]):
            if name:
                value = view.const(name)
                if value is None:
                    return None
                bounds[k] = float(value)
        return np.clip(v, -np.inf if bounds[0] is None else bounds[0], np.inf if bounds[1] is None else bounds[1])
    return None


def binary(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(all="ignore"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}[op](a, b)


def per_channel(c: np.ndarray, k: int, drop: np.ndarray) -> np.ndarray | None:
    """The values of constant `c` (broadcast against the region) at the dropped channels, when
    it holds one value per channel (or one value in all); k is its channel axis (< 0: it has none)."""
    if c.size == 1:
        return np.full(drop.size, float(c.ravel()[0]))
    if k < 0 or c.shape[k] != c.size:
        return None  # varies over other axes too: not a per-channel constant
    return c.ravel()[drop].astype(np.float64)


def conv_bias(view, node, w: np.ndarray, drop: np.ndarray, lost: np.ndarray | None):
    """New bias for a group-1 Conv that loses input channels `drop` whose constant values were
    `lost`, or None when nothing needs to change."""
    if lost is None or not np.any(lost):
        return None
    delta = np.einsum("oc,c->o", w[:, drop].reshape(w.shape[0], drop.size, -1).sum(-1).astype(np.float64), lost)
    b = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], w.dtype)
    if b is None or b.shape != (w.shape[0],):
        return None
    return (b + delta).astype(w.dtype)


def gemm_bias(view, node, w: np.ndarray, in_axis: int, drop: np.ndarray, lost: np.ndarray | None):
    """New C for a Gemm that loses inputs `drop` (C = delta / beta when it had none), or None."""
    if lost is None or not np.any(lost) or node.op_type != "Gemm":
        return None  # MatMul has no bias to fold into
    rows = np.take(w, drop, axis=in_axis).astype(np.float64)
    delta = lost @ rows if in_axis == 0 else rows @ lost
    n = delta.size
    beta = _attr(node, "beta", 1.0)
    if beta == 0:
        return None
    c = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(n, w.dtype)
    if c is None or c.size not in (1, n) or c.ndim > 2:
        return None
    base = np.full(n, float(c.ravel()[0])) if c.size == 1 else c.reshape(n).astype(np.float64)
    return (base + delta / beta).astype(w.dtype)


def matmul_bias(view, node, w: np.ndarray, drop: np.ndarray, lost: np.ndarray | None):
    """MatMul has no bias of its own; when its only reader is Add(out, constant bias over the last
    axis), fold into that constant: returns (the Add, input index, new value), else None."""
    if lost is None or not np.any(lost) or node.output[0] in view.outputs:
        return None
    readers = view.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    add = readers[0]
    k = 1 - list(add.input).index(node.output[0])
    c = view.const(add.input[k]) if len(add.input) == 2 else None
    n = w.shape[1]
    if c is None or c.size not in (1, n) or (c.size == n and c.shape[-1] != n):
        return None
    delta = lost @ w[drop].astype(np.float64)
    base = np.full(n, float(c.ravel()[0])) if c.size == 1 else c.reshape(n).astype(np.float64)
    return add, k, (base + delta).astype(c.dtype).reshape((n,) if c.size == 1 else c.shape)
