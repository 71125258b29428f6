"""The layer normalizations of transformers, all in one place: the standard LayerNormalization-17
and RMSNormalization-23, graphopt's own ai.graphopt LayerNormalization, SkipLayerNormalization,
RMSNormalization and SkipSimplifiedLayerNormalization (compile --target graphopt), their build-time
specializations for constant scale/bias, and ONNX Runtime's com.microsoft (and default-domain) spellings.

    LayerNormalization(X, S, B?)    as ONNX LayerNormalization-17 (axis, epsilon; float32 statistics)
    SkipLayerNormalization(X, R, S, B?, Bias?; epsilon)   LayerNormalization(X + R + Bias) over the last
                                    axis (Bias: a vector, 5th input); a 4th output (2nd and 3rd empty)
                                    is the sum X + R + Bias, as ORT's
    RMSNormalization(X, S; axis, epsilon)          x / sqrt(mean(x^2) + eps) * S
    SkipSimplifiedLayerNormalization(X, skip, gamma, bias?; epsilon=1e-12)   RMS norm of X + skip (+ bias);
                                    outputs (y, -, -, sum), as ORT's op of that name
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import contrib_alias, kernel, prepare
from .norm import stash_dtype
from ._util import tiled

DOMAIN = "ai.graphopt"


def _mean(x, axes):
    """x.mean(axis=axes, keepdims=True): for float32/64 np.mean's own steps (add.reduce, then an
    in-place division by an intp count) without its Python wrapper, which on a small tensor costs
    several times the arithmetic."""
    if x.dtype != np.float32 and x.dtype != np.float64:
        return x.mean(axis=axes, keepdims=True)
    s = np.add.reduce(x, axis=axes, keepdims=True)
    return np.true_divide(s, np.intp(math.prod(x.shape[a] for a in axes)), out=s, casting="unsafe")


@kernel("LayerNormalization", 17)
def onnx_layer_norm(ins, at):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = at["axis"] % x.ndim
    axes = tuple(range(axis, x.ndim))
    xs = stash_dtype(x, at)
    m = _mean(xs, axes)
    d = xs - m
    if d.dtype == np.float32 or d.dtype == np.float64:
        # the centered sum of squares as one np.vecdot over the flattened normalized axes (d is
        # fresh, so the reshape is a view): no d * d temporary, one NumPy call less
        n = math.prod(d.shape[axis:])  # not -1: a reshape cannot infer it when a leading dim is 0
        rows = d.reshape(d.shape[:axis] + (n,))
        inv = np.vecdot(rows, rows, keepdims=True).reshape(m.shape)
        np.true_divide(inv, np.intp(n), out=inv, casting="unsafe")  # as _mean divides
    else:
        inv = _mean(d * d, axes)
    inv += at["epsilon"]
    np.sqrt(inv, out=inv)
    np.divide(1.0, inv, out=inv)
    if scale.dtype == d.dtype and (bias is None or bias.dtype == d.dtype):  # same values, fewer arrays
        y = d
        y *= inv
        y *= scale
        if bias is not None:
            y += bias
    else:
        y = d * inv * scale
        if bias is not None:
            y = y + bias
    return (y.astype(x.dtype, copy=False), m, inv)


@kernel("RMSNormalization", 23)
def onnx_rms_norm(ins, at):
    x, scale = ins[0], ins[1]
    axis = at["axis"] % x.ndim
    xs = stash_dtype(x, at)
    ms = np.mean(xs * xs, axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xs / np.sqrt(ms + at["epsilon"]) * scale
    return (y.astype(x.dtype, copy=False),)


# ---------------------------------------------------------------- normalizations
# On a transformer's small tensors (rows of 64..1024 values) each NumPy call costs more than its
# arithmetic. The row mean stays np.add.reduce (pairwise summation: a GEMV against a column of 1/n
# was one call less but doubled the error on rows with a large offset, e.g. 1000 + 0.01 * noise);
# the centered sum of squares is one np.vecdot(d, d) instead of d * d and a reduce (never
# E[x^2] - E[x]^2, which cancels); d is divided by the standard deviation and scaled in place:
# 10 calls per LayerNorm instead of 14, and no full-size temporary but d.

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _normalize_rows(s: np.ndarray, fresh: bool, eps: float, center: bool) -> np.ndarray:
    """(s - mean) / sqrt(var + eps) over the last axis of a float32/64 s (var centered), or
    s / sqrt(mean(s^2) + eps) without `center`; written into s when `fresh` (s is the caller's own)."""
    n = s.shape[-1]
    if center:
        m = np.add.reduce(s, axis=-1, keepdims=True)
        m /= n
        d = np.subtract(s, m, out=s) if fresh else s - m
    else:
        d = s
    v = np.vecdot(d, d, keepdims=True)
    v /= n
    v += s.dtype.type(eps)
    np.sqrt(v, out=v)
    return np.divide(d, v, out=d if (center or fresh) else None)


def _rows(x: np.ndarray, axis: int) -> tuple:
    """x as float32/64 rows over the axes from `axis` on, and whether that array is a fresh copy."""
    a = axis % x.ndim
    xs, fresh = (x, False) if x.dtype in _FLOATS else (x.astype(np.float32), True)
    if a != x.ndim - 1:
        xs = xs.reshape(x.shape[:a] + (math.prod(x.shape[a:]),))
    return xs, fresh


def _affine(y: np.ndarray, scale: np.ndarray, bias) -> np.ndarray:
    """y * scale + bias, in y itself when the dtypes and shapes allow (y is always fresh here)."""
    if (scale.dtype == y.dtype and scale.shape == y.shape[y.ndim - scale.ndim:]
            and (bias is None or (bias.dtype == y.dtype and bias.shape == y.shape[y.ndim - bias.ndim:]))):
        y *= scale
        if bias is not None:
            y += bias
        return y
    y = y * scale
    return y if bias is None else y + bias


def layer_norm_rows(s, fresh, scale, bias, axis, eps, dtype):
    if s.size == 0:
        return np.empty(s.shape, dtype)
    xs, own = _rows(s, axis)
    y = _normalize_rows(xs, fresh or own, eps, center=True).reshape(s.shape)
    return _affine(y, scale, bias).astype(dtype, copy=False)


@kernel("LayerNormalization", 1, domain=DOMAIN, shape_from_shapes=True)
def layer_norm(ins, at):
    x = ins[0]
    bias = ins[2] if len(ins) > 2 else None
    return (layer_norm_rows(x, False, ins[1], bias, at.get("axis", -1), at.get("epsilon", 1e-5), x.dtype),)


@kernel("SkipLayerNormalization", 1, domain=DOMAIN, shape_from_shapes=True)
def skip_layer_norm(ins, at):
    x = ins[0] + ins[1]
    skip_bias = ins[4] if len(ins) > 4 else None  # ORT's 5th input, added before the norm (and in the sum)
    if skip_bias is not None:
        x = _add_in_place(x, skip_bias)
    keep_sum = at.get("__n_outputs__", 1) >= 4  # the sum is an output: normalize a copy
    bias = ins[3] if len(ins) > 3 else None
    y = layer_norm_rows(x, not keep_sum, ins[2], bias, -1, at.get("epsilon", 1e-5), ins[0].dtype)
    return (y, None, None, x) if keep_sum else (y,)  # ORT's output order: mean and inv_std_var not written


def _add_in_place(s: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s + b, written into s (a fresh sum) when b neither widens s's dtype nor its shape."""
    if b.dtype == s.dtype and b.ndim <= s.ndim and b.shape == s.shape[s.ndim - b.ndim:]:
        s += b
        return s
    return s + b


def _constant_affine(scale, bias):
    """(scale, bias) when they are constant float32/64 vectors of one length and dtype, else None."""
    if not isinstance(scale, np.ndarray) or scale.dtype not in _FLOATS or scale.ndim != 1 or scale.size == 0:
        return None
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.dtype != scale.dtype
                             or bias.shape != scale.shape):
        return None
    return scale, bias


def _prepared_norm(scale, bias, eps, skip: bool, keep_sum: bool, generic, skip_bias=None):
    """LayerNorm over the last axis (of x + r (+ skip_bias) when `skip`) with constant scale/bias
    (and skip_bias: a constant vector like scale), checked once at build: per call only x's (and r's)
    dtype and shape are checked, anything else goes to the generic kernel.

    Fewer and cheaper NumPy calls than _layer_norm, for the small token batches of inference: on
    rows of n values the mean is one GEMV with a column of 1/n (0.65 us on 14 x 64 against 2.5 for
    add.reduce and a divide), the variance's 1/n is folded into the scale (x - m) / sqrt(S/n + eps)
    = (x - m) * sqrt(n) / sqrt(S + n*eps), S the sum of squares, and scale and bias are tiled to
    the rows' shape (a same-shape multiply is half the cost of one broadcast along rows). The
    result differs from the generic kernel's by float rounding only."""
    dtype, n = scale.dtype, scale.shape[0]
    mean_col = np.full((n, 1), 1.0 / n, dtype)
    e = np.full((), n * eps, dtype)  # 0-d: cheaper ufunc operands than scalars
    scale_n = (scale.astype(np.float64) * math.sqrt(n)).astype(dtype)
    in_place = skip and not keep_sum
    tiles = {"scale": {}, "bias": {}, "skip": {}}

    def run(args, at):
        x = args[0]
        if type(x) is not np.ndarray or x.dtype != dtype or x.shape[-1:] != (n,):
            return generic(args, at)
        if skip:
            r = args[1]
            if type(r) is not np.ndarray or r.dtype != dtype or r.shape != x.shape:
                return generic(args, at)
            s = x + r
            rows = s.reshape(-1, n)
            if skip_bias is not None:
                rows += tiled(tiles["skip"], skip_bias, rows.shape)
        else:
            s = x
            rows = s.reshape(-1, n)
        m = rows.dot(mean_col)
        d = np.subtract(rows, m, out=rows) if in_place else rows - m  # never into x, nor into a returned sum
        v = np.vecdot(d, d, keepdims=True)
        v += e
        np.sqrt(v, out=v)
        np.divide(d, v, out=d)
        d *= tiled(tiles["scale"], scale_n, d.shape)
        if bias is not None:
            d += tiled(tiles["bias"], bias, d.shape)
        y = d.reshape(x.shape)
        return (y, None, None, s) if keep_sum else (y,)
    return run


@prepare("LayerNormalization", 1, domain=DOMAIN)
def prepare_layer_norm(at, consts, generic):
    affine = _constant_affine(consts[1], consts[2] if len(consts) > 2 else None)
    if affine is None or at.get("axis", -1) != -1:
        return None
    return _prepared_norm(*affine, at.get("epsilon", 1e-5), False, False, generic)


@prepare("LayerNormalization", 17)
def prepare_onnx_layer_norm(at, consts, generic):
    """The standard op (as exported, and as the `onnx` target leaves it) takes the same prepared path
    when only Y is an output and it normalizes the last axis (float32/64: stash_type changes nothing)."""
    affine = _constant_affine(consts[1], consts[2] if len(consts) > 2 else None)
    if affine is None or at.get("axis", -1) != -1 or at.get("__n_outputs__", 1) != 1:
        return None
    return _prepared_norm(*affine, at.get("epsilon", 1e-5), False, False, generic)


@prepare("SkipLayerNormalization", 1, domain=DOMAIN)
def prepare_skip_layer_norm(at, consts, generic):
    affine = _constant_affine(consts[2], consts[3] if len(consts) > 3 else None)
    skip_bias = consts[4] if len(consts) > 4 else None
    if affine is None or (skip_bias is not None and _constant_affine(affine[0], skip_bias) is None):
        return None  # a skip bias that is not a constant vector like the scale: the generic kernel
    return _prepared_norm(*affine, at.get("epsilon", 1e-5), True, at.get("__n_outputs__", 1) >= 4, generic,
                          skip_bias)


@kernel("RMSNormalization", 1, domain=DOMAIN, shape_from_shapes=True)
def rms_norm(ins, at):
    x, scale = ins
    if x.size == 0:
        return (np.empty(x.shape, x.dtype),)
    xs, own = _rows(x, at.get("axis", -1))
    y = _normalize_rows(xs, own, at.get("epsilon", 1e-5), center=False).reshape(x.shape)
    return (_affine(y, scale, None).astype(x.dtype, copy=False),)


@kernel("SkipSimplifiedLayerNormalization", 1, domain=DOMAIN)
def skip_simplified_layer_norm(ins, at):
    s = ins[0] + ins[1]
    if len(ins) > 3 and ins[3] is not None:
        s = s + ins[3]
    y = rms_norm([s, ins[2]], {"epsilon": at.get("epsilon", 1e-12)})[0]
    return (y, None, None, s) if at.get("__n_outputs__", 1) >= 4 else (y,)


# ---------------------------------------------------------------- ONNX Runtime's com.microsoft spellings

contrib_alias("SkipLayerNormalization", skip_layer_norm, prepare_skip_layer_norm, {"epsilon": 1e-12})
contrib_alias("SkipSimplifiedLayerNormalization", skip_simplified_layer_norm, defaults={"epsilon": 1e-12})


# ORT also registers two normalizations in the default domain from opset 1 on, and its transformer
# optimizer writes them into models of any opset (LayerNormalization is standard only from 17):
# below 17 they would otherwise have no kernel here
contrib_alias("LayerNormalization", onnx_layer_norm, defaults={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
              domain="")
contrib_alias("SimplifiedLayerNormalization", lambda ins, at: rms_norm(ins[:2], at),
              defaults={"axis": -1, "epsilon": 1e-5}, domain="")
