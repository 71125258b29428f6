"""graphopt's own fused ops (domain ai.graphopt), produced by `graphopt compile --target graphopt`.

Each replaces a chain of standard ops with one NumPy pass over the data; semantics are the chain's:
    Gelu(X; approximate)            0.5*x*(1+erf(x/sqrt2)), or the tanh form
    BiasGelu(X, B; approximate)     Gelu(X + B)
    QuickGelu(X; alpha=1.702)       X * sigmoid(alpha * X), as ORT's (alpha 1: SiLU / Swish)
    LayerNormalization(X, S, B?)    as ONNX LayerNormalization-17 (axis, epsilon; float32 statistics)
    SkipLayerNormalization(X, R, S, B?, Bias?; epsilon)   LayerNormalization(X + R + Bias) over the last
                                                   axis (Bias: a vector, 5th input); a 4th output (2nd and
                                                   3rd empty) is the sum X + R + Bias, as ORT's
    RMSNormalization(X, S; axis, epsilon)          x / sqrt(mean(x^2) + eps) * S
    Attention(Q, K, V, M?; num_heads, scale)       softmax(Q K^T * scale + M) V per head, Q/K/V (B, S, H*D)
    FusedConv(X, W, B?, Z?; Conv attrs, activation, activation_params)   act(Conv(X, W, B) + Z), as ORT's
    FusedGemm(A, B, C?; Gemm attrs, activation, activation_alpha/beta)   act(Gemm(A, B, C)), as ORT's
Conv and Gemm reuse the standard kernels and their build-time weight layout (kernels/cpu/prepared.py).
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import kernel, prepare
from ._util import ONE, clip_ufunc, erf, row_sums, sigmoid_in_place, tiled
from .attention import attention as std_attention
from .linalg import gemm as gemm_kernel
from .nn import conv_kernel
from .prepared import prepare_conv, prepare_gemm

DOMAIN = "ai.graphopt"
SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)


# Phi(x) = P(N(0, 1) <= x) = 0.5 * erfc(-x / sqrt2) on a signed grid (erf_interp's step, in x): GELU is
# x * Phi(x), one table interpolation and one multiply, without erf_interp's abs/copysign round trip or
# the 1 + erf step (which cancels for x << 0). Interpolation error 1.5e-8 absolute (h^2/8 * max|Phi''|).
# The ends are exact 0 and 1, so GELU(-inf) = -inf * 0 = NaN and GELU(inf) = inf, as the formula gives.
_PHI_STEP = math.sqrt(2.0) / 2048
_PHI_HALF = 6 * 2048  # the grid covers |x| <= 6 sqrt2, where Phi is within 1e-17 of 0 or 1
_PHI_TABLE = np.array([0.5 * math.erfc(-(j - _PHI_HALF) / 2048) for j in range(2 * _PHI_HALF + 1)])
_PHI_TABLE[0], _PHI_TABLE[-1] = 0.0, 1.0
_PHI_SLOPE = np.append(np.diff(_PHI_TABLE), 0.0)  # flat beyond the last entry
_PHI_SCALE = 1.0 / _PHI_STEP


# the constants as 0-d float64 arrays (a Python scalar operand costs a ufunc ~1 us of conversion)
_PHI_CONSTANTS = tuple(np.full((), v) for v in (_PHI_SCALE, float(_PHI_HALF), 0.0, 2.0 * _PHI_HALF))


@np.errstate(invalid="ignore")  # a NaN's grid index is a junk integer (take clips it), its Phi NaN
def _phi(x: np.ndarray) -> np.ndarray:
    """Phi(x) in float64 by linear interpolation (NaN for NaN: the caller's x * Phi is NaN either way)."""
    scale, half, lo, hi = _PHI_CONSTANTS
    u = x.astype(np.float64)  # grid position, in float64 (a cast then an in-place multiply: a
    np.multiply(u, scale, u)  # mixed float32 * float64 ufunc call is slower than both)
    np.add(u, half, u)
    clip_ufunc(u, lo, hi, u)  # +-inf land on the grid's ends
    f = np.floor(u)
    i = f.astype(np.intp)
    np.subtract(u, f, u)  # a float - float subtract: half the time of float - int
    p = _PHI_SLOPE.take(i, mode="clip")  # "clip": in range already, except a NaN's index
    p *= u
    p += _PHI_TABLE.take(i, mode="clip")
    return p


_TABLE_GELU = (np.dtype(np.float16), np.dtype(np.float32))  # dtype objects: `in` compares them directly


def _gelu(x: np.ndarray, approximate: str, fresh: bool = False) -> np.ndarray:
    """GELU of x; `fresh`: x is this kernel's own temporary and may hold the result."""
    if x.dtype not in _TABLE_GELU:
        x64 = x.astype(np.float64)  # float64 models get the exact series
        inner = (SQRT_2_OVER_PI * (x64 + 0.044715 * x64 ** 3)) if approximate == "tanh" else None
        y = 0.5 * x64 * (1.0 + (np.tanh(inner) if inner is not None else erf(x64 / np.sqrt(2.0))))
        return y.astype(x.dtype, copy=False)
    if approximate == "tanh":  # all in float64 (a mixed float32 * float64 call is slower)
        x64 = x.astype(np.float64)
        y = x64 * x64
        y *= 0.044715 * SQRT_2_OVER_PI
        y += SQRT_2_OVER_PI
        y *= x64
        np.tanh(y, out=y)
        y += 1.0
        y *= x64
        y *= 0.5
        return y.astype(x.dtype)
    # x * Phi(x) in float64, rounded once into x's dtype: one mixed-type call where a float64
    # copy of x, a multiply and a cast back would be three
    return np.multiply(x, _phi(x), out=x if fresh else np.empty_like(x), casting="same_kind")


@kernel("Gelu", 1, domain=DOMAIN)
def gelu(ins, at):
    return (_gelu(ins[0], at.get("approximate") or "none"),)


@kernel("BiasGelu", 1, domain=DOMAIN)
def bias_gelu(ins, at):
    x, b = ins[0], ins[1]
    s = x + b  # a fresh array (NumPy's promotion when the dtypes differ, as the unfused Add has it)
    return (_gelu(s, at.get("approximate") or "none", fresh=True),)


@prepare("BiasGelu", 1, domain=DOMAIN)
def prepare_bias_gelu(at, consts, generic):
    """A constant bias vector tiled to x's shape: a same-shape add costs half a broadcast one."""
    b = consts[1]
    if not isinstance(b, np.ndarray) or b.dtype not in _FLOATS or b.ndim != 1:
        return None
    approximate = at.get("approximate") or "none"
    tiles = {}

    def run(args, at):
        x = args[0]
        if type(x) is not np.ndarray or x.dtype != b.dtype or x.shape[-1:] != b.shape:
            return generic(args, at)
        return (_gelu(np.add(x, tiled(tiles, b, x.shape)), approximate, fresh=True),)
    return run


@kernel("QuickGelu", 1, domain=DOMAIN)
def quick_gelu(ins, at):
    """x * sigmoid(alpha * x) (ORT's QuickGelu; alpha 1 is SiLU/Swish): one step for Sigmoid + Mul."""
    x = ins[0]
    alpha = at.get("alpha", 1.702)
    if x.dtype == np.float16:  # exp(-x) overflows float16 from x < -11 on, where the result is still representable
        return (quick_gelu([x.astype(np.float32)], at)[0].astype(np.float16),)
    return (_x_sigmoid(x, -alpha if alpha != 1.0 else None),)


# exp(-alpha x) = inf for alpha x << 0: x / inf is the 0 it should be; x = -inf gives -inf / inf =
# NaN, as x * sigmoid(x) = -inf * 0 does
@np.errstate(over="ignore", invalid="ignore")
def _x_sigmoid(x: np.ndarray, neg_alpha) -> np.ndarray:
    """x / (1 + exp(-alpha x)) = x * sigmoid(alpha x) in four passes over a fresh array (the
    product form takes six: a copy for the gate, four for the sigmoid, the multiply), with one
    rounding less (no reciprocal)."""
    gate = np.negative(x) if neg_alpha is None else np.multiply(x, x.dtype.type(neg_alpha))
    np.exp(gate, gate)
    np.add(gate, ONE.get(gate.dtype, 1), gate)
    return np.divide(x, gate, gate)


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


def _layer_norm(s, fresh, scale, bias, axis, eps, dtype):
    if s.size == 0:
        return np.empty(s.shape, dtype)
    xs, own = _rows(s, axis)
    y = _normalize_rows(xs, fresh or own, eps, center=True).reshape(s.shape)
    return _affine(y, scale, bias).astype(dtype, copy=False)


@kernel("LayerNormalization", 1, domain=DOMAIN)
def layer_norm(ins, at):
    x = ins[0]
    bias = ins[2] if len(ins) > 2 else None
    return (_layer_norm(x, False, ins[1], bias, at.get("axis", -1), at.get("epsilon", 1e-5), x.dtype),)


@kernel("SkipLayerNormalization", 1, domain=DOMAIN)
def skip_layer_norm(ins, at):
    x = ins[0] + ins[1]
    skip_bias = ins[4] if len(ins) > 4 else None  # ORT's 5th input, added before the norm (and in the sum)
    if skip_bias is not None:
        x = _add_in_place(x, skip_bias)
    keep_sum = at.get("__n_outputs__", 1) >= 4  # the sum is an output: normalize a copy
    bias = ins[3] if len(ins) > 3 else None
    y = _layer_norm(x, not keep_sum, ins[2], bias, -1, at.get("epsilon", 1e-5), ins[0].dtype)
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


@kernel("RMSNormalization", 1, domain=DOMAIN)
def rms_norm(ins, at):
    x, scale = ins
    if x.size == 0:
        return (np.empty(x.shape, x.dtype),)
    xs, own = _rows(x, at.get("axis", -1))
    y = _normalize_rows(xs, own, at.get("epsilon", 1e-5), center=False).reshape(x.shape)
    return (_affine(y, scale, None).astype(x.dtype, copy=False),)


@kernel("Attention", 1, domain=DOMAIN)
def attention(ins, at):
    q, k, v = ins[0], ins[1], ins[2]
    mask = ins[3] if len(ins) > 3 else None
    heads = int(at["num_heads"])
    b, s, _ = q.shape
    t = k.shape[1]
    calc = _FLOATS[1] if q.dtype == _FLOATS[1] else _FLOATS[0]  # float64 stays, all else in float32
    if q.dtype != calc or k.dtype != calc or v.dtype != calc:
        q, k, v = q.astype(calc), k.astype(calc), v.astype(calc)
    kv = int(at.get("kv_num_heads", heads))  # grouped-query attention: each K/V head serves heads / kv queries
    if len(ins) > 5 and ins[4] is not None:  # KV cache: the standard Attention-23 kernel (present = past + new)
        std = {"q_num_heads": heads, "kv_num_heads": kv, "scale": float(at["scale"])}
        return std_attention(list(ins[:6]), std)[:3]
    qh = q.reshape(b, s, heads, -1).transpose(0, 2, 1, 3)
    kh = k.reshape(b, t, kv, -1).transpose(0, 2, 3, 1)
    vh = v.reshape(b, t, kv, -1).transpose(0, 2, 1, 3)
    if kv != heads:
        kh, vh = np.repeat(kh, heads // kv, axis=1), np.repeat(vh, heads // kv, axis=1)
    scores = np.matmul(qh, kh)
    scores *= calc.type(at["scale"])
    if mask is not None:
        scores += mask if mask.dtype == calc else mask.astype(calc)
    guarded = at.get("nan_probs_to_zero")  # the export's Where(IsNaN(p), 0, p): a fully masked row gives 0
    with np.errstate(**({"invalid": "ignore"} if guarded else {})):
        scores -= np.maximum.reduce(scores, axis=3, keepdims=True)  # = .max(): without the method's wrapper
        np.exp(scores, out=scores)
        scores /= row_sums(scores)[..., None]  # matmul's fresh result: contiguous rows, summed by a GEMV
    if guarded:
        scores[np.isnan(scores)] = 0
    # the context written by matmul straight into (B, S, H, D) order: the final reshape is a view,
    # not the copy a transpose of matmul's (B, H, S, D) result made (dividing the context there
    # instead of the scores was slower: a strided divide)
    out = np.empty((b, s, heads, vh.shape[3]), calc)
    np.matmul(scores, vh, out=out.transpose(0, 2, 1, 3))
    return (out.reshape(b, s, -1).astype(ins[0].dtype, copy=False),)


# ---------------------------------------------------------------- Conv / Gemm + activation

CONV_DEFAULTS = {"group": 1, "strides": None, "dilations": None, "pads": None, "auto_pad": "NOTSET",
                 "kernel_shape": None}
GEMM_DEFAULTS = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}


def _conv_attrs(at):
    return {k: at.get(k, d) if at.get(k) is not None else d for k, d in CONV_DEFAULTS.items()}


def _gemm_attrs(at):
    return {k: at.get(k, d) if at.get(k) is not None else d for k, d in GEMM_DEFAULTS.items()}


def _conv_params(at):
    return at.get("activation") or "Identity", at.get("activation_params") or []


def _gemm_params(at):
    return at.get("activation") or "Identity", [at.get("activation_alpha", 0.01), at.get("activation_beta", 0.5)]


def _activate(y: np.ndarray, name: str, params, c: tuple) -> np.ndarray:
    """ORT's fused activations, computed in y itself (a fresh conv/gemm result), without full-size
    temporaries where possible (HardSwish keeps its gate, LeakyRelu one product). Clamps go through
    the clip ufunc with both bounds, which NumPy 2.4 vectorizes (_util.clip_ufunc): measured on a 64x112x112
    float32 conv output (random values, medians of 25 runs), Relu as np.clip(y, 0, inf) 244 us vs
    np.maximum(y, 0) 631 us; LeakyRelu as max(y, alpha*y)
    766 us vs np.where 4.8 ms. Both exact (a selection); NaN propagates as in ORT. `c`: the constants
    of _constants(name, params, y.dtype)."""
    if name == "Relu" or name == "Clip":
        return clip_ufunc(y, c[0], c[1], y)
    if name == "Sigmoid":
        return sigmoid_in_place(y)
    if name == "LeakyRelu" and 0 <= params[0] <= 1:  # then alpha*y >= y exactly where y < 0
        return np.maximum(y, y * c[0], out=y)
    if name == "HardSigmoid":
        y *= c[0]
        y += c[1]
        return clip_ufunc(y, c[2], c[3], y)
    if name == "HardSwish":
        gate = y * c[0]
        gate += c[1]
        y *= clip_ufunc(gate, c[2], c[3], gate)
        return y
    if name == "Tanh":
        return np.tanh(y, y)
    if name == "LeakyRelu":  # alpha outside [0, 1]: max(y, alpha*y) would pick the wrong side
        return np.where(y < 0, y * c[0], y).astype(y.dtype, copy=False)
    raise ValueError(f"unknown fused activation {name!r}")


def _constants(name: str, params, dtype) -> tuple:
    """An activation's constants as 0-d arrays of the output's dtype: a Python or NumPy scalar operand
    costs a ufunc ~0.5-1.3 us of conversion per call, which is most of the clamp of a small output."""
    values = {"Relu": (0.0, math.inf), "Clip": tuple(params[:2]), "LeakyRelu": tuple(params[:1]),
              "HardSigmoid": (*params[:2], 0.0, 1.0), "HardSwish": (1 / 6, 0.5, 0.0, 1.0)}.get(name, ())
    return tuple(np.full((), v, dtype) for v in values)


class _Activation:
    """A fused node's activation, its constants made once per output dtype."""

    def __init__(self, name: str, params):
        self.name, self.params, self._constants = name, list(params), {}

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.name == "Identity":
            return y
        c = self._constants.get(y.dtype)
        if c is None:
            c = self._constants[y.dtype] = _constants(self.name, self.params, y.dtype)
        return _activate(y, self.name, self.params, c)

    def in_place(self, dtype):
        """fn(y) -> the activation computed in y, its constants bound for `dtype`: a prepared kernel's
        per-call path without the constants lookup (the Relu/Clip clamp called directly); None for
        Identity."""
        if self.name == "Identity":
            return None
        name, params, c = self.name, self.params, _constants(self.name, self.params, dtype)
        if name in ("Relu", "Clip"):
            lo, hi = c
            return lambda y: clip_ufunc(y, lo, hi, y)
        return lambda y: _activate(y, name, params, c)


def _finish(y, z, act: _Activation, dtype):
    """Z and the activation on a conv/gemm result, in place: every conv and gemm path returns a
    fresh array (GEMM output or a new crop), so only a read-only or wrong-dtype result is copied."""
    y = np.array(y, dtype=dtype, copy=True) if not y.flags.writeable or y.dtype != dtype else y
    if z is not None:
        y += z
    return act(y)


@kernel("FusedConv", 1, domain=DOMAIN)
def fused_conv(ins, at):
    z = ins[3] if len(ins) > 3 else None
    y = conv_kernel(ins[:3], _conv_attrs(at))[0]
    return (_finish(y, z, _Activation(*_conv_params(at)), ins[0].dtype),)


@prepare("FusedConv", 1, domain=DOMAIN)
def prepare_fused_conv(at, consts, generic):
    """The standard Conv's prepared kernel (weights laid out once), then Z and the activation."""
    conv_at = _conv_attrs(at)
    inner = prepare_conv(conv_at, consts[:3], conv_kernel)
    if inner is None:
        return None
    act = _Activation(*_conv_params(at))
    dt = consts[1].dtype
    fast = act.in_place(dt)

    def run(args, attrs):
        if len(args) > 3:
            return (_finish(inner(args[:3], conv_at)[0], args[3], act, args[0].dtype),)
        y = inner(args, conv_at)[0]
        if y.dtype is dt and args[0].dtype is dt and y.flags.writeable:  # _finish's checks, passed
            return (y if fast is None else fast(y),)
        return (_finish(y, None, act, args[0].dtype),)
    return run


@kernel("FusedGemm", 1, domain=DOMAIN)
def fused_gemm(ins, at):
    y = gemm_kernel(ins, _gemm_attrs(at))[0]
    return (_finish(y, None, _Activation(*_gemm_params(at)), ins[0].dtype),)


@prepare("FusedGemm", 1, domain=DOMAIN)
def prepare_fused_gemm(at, consts, generic):
    gemm_at = _gemm_attrs(at)
    inner = prepare_gemm(gemm_at, consts, gemm_kernel)
    if inner is None:
        return None
    act = _Activation(*_gemm_params(at))
    dt = consts[1].dtype
    fast = act.in_place(dt)

    def run(args, attrs):
        y = inner(args, gemm_at)[0]
        if y.dtype is dt and args[0].dtype is dt and y.flags.writeable:  # _finish's checks, passed
            return (y if fast is None else fast(y),)
        return (_finish(y, None, act, args[0].dtype),)
    return run
