"""GELU and its kin: graphopt's own ai.graphopt ops (produced by `graphopt compile --target graphopt`)
and ONNX Runtime's com.microsoft ops of the same semantics, on one implementation.

    Gelu(X; approximate)            0.5*x*(1+erf(x/sqrt2)), or the tanh form
    BiasGelu(X, B; approximate)     Gelu(X + B)
    QuickGelu(X; alpha=1.702)       X * sigmoid(alpha * X), as ORT's (alpha 1: SiLU / Swish)
    SiluMul(G, U)                   G * sigmoid(G) * U, the SiLU-gated MLP's gate (passes/fusion/gated_mlp.py),
                                    G and U of one shape
    com.microsoft: Gelu (erf), FastGelu(X, bias?) (tanh form of X + bias), BiasGelu (erf), QuickGelu
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import contrib_alias, kernel, prepare
from ._util import ONE, clip_ufunc, erf, tiled

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


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
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


@kernel("Gelu", 1, domain=DOMAIN, shape_from_shapes=True)
def gelu(ins, at):
    return (_gelu(ins[0], at.get("approximate") or "none"),)


@kernel("BiasGelu", 1, domain=DOMAIN, shape_from_shapes=True)
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


@kernel("SiluMul", 1, domain=DOMAIN, shape_from_shapes=True)
def silu_mul(ins, at):
    g, u = ins
    y = quick_gelu([g], {"alpha": 1.0})[0]  # a fresh array: the product is written into it
    np.multiply(y, u, out=y)
    return (y,)


# ---------------------------------------------------------------- ONNX Runtime's com.microsoft spellings

def _fast_gelu(ins, at):
    bias = ins[1] if len(ins) > 1 and ins[1] is not None else None
    if bias is None:
        return gelu(ins[:1], {"approximate": "tanh"})
    return bias_gelu([ins[0], bias], {"approximate": "tanh"})


contrib_alias("Gelu", lambda ins, at: gelu(ins, {"approximate": "none"}))
contrib_alias("FastGelu", _fast_gelu)
contrib_alias("BiasGelu", lambda ins, at: bias_gelu(ins, {"approximate": "none"}))
contrib_alias("QuickGelu", quick_gelu, defaults={"alpha": 1.702})
