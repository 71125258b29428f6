"""Helpers shared by the CPU kernels."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

# The clip ufunc itself: np.clip is a Python wrapper around it that costs ~5 us per call (argument
# checks, then ndarray.clip, then _methods._clip), more than the clamp of a small tensor; the ufunc
# takes 1-2 us and is just as vectorized on large ones (float32 64x112x112: 147 us vs np.clip's 170).
# Same semantics (NaN propagates; bounds broadcast). Kept private in NumPy 2.x, hence the fallback.
try:
    from numpy._core.umath import clip as clip_ufunc
except ImportError:  # pragma: no cover - a NumPy that moved it
    clip_ufunc = np.clip


def strided_view(x: np.ndarray, shape, strides) -> np.ndarray:
    """as_strided(x, shape, strides) for reading: the ndarray constructor over x's buffer (~1 us)
    where x is C-contiguous and the view stays inside it, else as_strided itself (~7 us: it goes
    through __array_interface__), read-only."""
    if x.flags.c_contiguous:
        try:
            view = np.ndarray(shape, x.dtype, x, 0, strides)
        except (TypeError, ValueError):  # reaches outside x's buffer (a caller's deliberate overhang)
            pass
        else:
            view.flags.writeable = False  # its windows overlap: a write would land in many places
            return view
    return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)


# dtype -> constant as a 0-d array, for ufunc operands: a Python scalar operand costs a ufunc ~1.3 us
# of conversion per call, a 0-d array of the same dtype nothing, with the same result (NEP 50)
_FLOATS = [np.dtype(t) for t in (np.float16, np.float32, np.float64)]
ZERO = {dt: np.zeros((), dt) for dt in _FLOATS}
ONE = {dt: np.ones((), dt) for dt in _FLOATS}
INF = {dt: np.full((), np.inf, dt) for dt in _FLOATS}
INF_NEG = {dt: np.full((), -np.inf, dt) for dt in _FLOATS}


# np.errstate as a decorator (~0.9 us a call) rather than a `with` block (~2.2 us: it builds a new
# errstate object each time), which is a measurable part of a small tensor's Sigmoid
@np.errstate(over="ignore")  # exp(y) = inf for y >> 0: the result is 0, as it should be
def sigmoid_of_negated(y: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(y)), i.e. sigmoid(-y), computed in y (a float array the caller owns)."""
    np.exp(y, y)  # out positionally: no keyword parsing
    np.add(y, ONE.get(y.dtype, 1), y)
    return np.reciprocal(y, y)


# the largest y whose exp is finite, less a margin: 1 / (1 + exp(y)) there is below 1e-38 (float32)
# or 1e-307 (float64), where the exact result is smaller still (ORT's float32 Sigmoid clamps its
# input at -18 and gives 1.5e-8 from there down)
_EXP_LIMIT = {np.dtype(np.float32): np.full((), 88.0, np.float32), np.dtype(np.float64): np.full((), 708.0)}


def sigmoid_of_negated_clipped(y: np.ndarray) -> np.ndarray:
    """sigmoid_of_negated for float32/64 without the errstate call (0.9 us, a third of a small
    tensor's Sigmoid): y is clipped where exp would overflow, one ufunc call (0.4 us) that on a
    big tensor costs more than the errstate does."""
    clip_ufunc(y, INF_NEG[y.dtype], _EXP_LIMIT[y.dtype], y)
    np.exp(y, y)
    np.add(y, ONE[y.dtype], y)
    return np.reciprocal(y, y)


SMALL_SIGMOID = 1024  # below this many values the clip costs less than the errstate call


def sigmoid_in_place(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) computed in x (a float array the caller owns)."""
    if x.size < SMALL_SIGMOID and x.dtype in _EXP_LIMIT:
        return sigmoid_of_negated_clipped(np.negative(x, x))
    return sigmoid_of_negated(np.negative(x, x))


CACHE_LIMIT = 64  # entries a per-node cache keeps (dynamic shapes would otherwise grow it without bound)


def remember(cache: dict, key, value, limit: int = CACHE_LIMIT):
    """cache[key] = value, the cache emptied first when full; returns value."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


# A constant operand broadcast over a result is added (multiplied, ...) about twice as fast when it
# is tiled to the result's shape first: NumPy runs a broadcasting ufunc row by row (measured,
# float32: (4, 64) += (64,) 1.21 us vs 0.53 with a (4, 64) operand; (128, 768) 20.6 vs 11.4 us).
# Tiles up to this many values are kept, a few shapes per node (memory stays bounded).
TILE_MAX = 1 << 16
TILES_KEPT = 4


def tiled(cache: dict, value: np.ndarray, shape: tuple) -> np.ndarray:
    """`value` broadcast to `shape` as a contiguous array of its own, made once per shape and kept in
    `cache`; `value` itself when the tile would pass TILE_MAX values."""
    tile = cache.get(shape)
    if tile is None:
        size = 1
        for d in shape:
            size *= d
        tile = np.ascontiguousarray(np.broadcast_to(value, shape)) if size <= TILE_MAX else value
        remember(cache, shape, tile, TILES_KEPT)
    return tile


# Sums along the last axis of a C-contiguous float array as a matrix-vector product with a vector
# of ones: BLAS's GEMV runs 4-7x faster than np.add.reduce, whose inner loop restarts per row
# (measured, float32, one thread: 1024 rows of 49 values 4.8 vs 32 us, 960x80 5.4 vs 37 us,
# 14x64 0.6 vs 1.8 us, 64x6400 26 vs 87 us). Rounding differs (another summation order).
ROW_SUM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ONES: dict = {}


def row_sums_fit(x: np.ndarray) -> bool:
    """Whether row_sums takes x: a non-empty C-contiguous float32/float64 ndarray with an axis."""
    return type(x) is np.ndarray and x.dtype in ROW_SUM_DTYPES and x.ndim > 0 and x.size > 0 \
        and x.flags.c_contiguous


def row_sums(x: np.ndarray) -> np.ndarray:
    """x summed along its last axis (shape x.shape[:-1]); x must pass row_sums_fit."""
    n = x.shape[-1]
    ones = _ONES.get((n, x.dtype))
    if ones is None:
        ones = remember(_ONES, (n, x.dtype), np.ones(n, x.dtype))
    return x.reshape(-1, n).dot(ones).reshape(x.shape[:-1])


def np_dtype(elem_type: int) -> np.dtype:
    if elem_type == onnx.TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def axes_of(axes, ndim: int) -> tuple[int, ...]:
    return tuple(int(a) + ndim if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1))


def ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


_ERF_P = np.array([1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                   -1.13520398, 1.48851587, -0.82215223, 0.17087277])


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64: Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7) for
    |x| >= 0.5, the Taylor series (8 terms, error < 1e-9 there) below, where the fit would lose
    relative accuracy. Both are computed for every element with in-place ufuncs and merged by a
    mask: cheaper than gathering the small elements (GELU puts about half of them there)."""
    x64 = np.asarray(x, dtype=np.float64)
    z = np.abs(x64)
    t = z * 0.5
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * _ERF_P[-1]
    poly += _ERF_P[-2]
    for c in _ERF_P[-3::-1]:
        poly *= t
        poly += c
    poly *= t
    z2 = np.square(z)
    poly -= z2
    poly -= 1.26551223
    np.exp(poly, out=poly)
    poly *= t  # erfc(|x|)
    np.subtract(1.0, poly, out=poly)  # erf(|x|)
    small = z < 0.5
    if small.any():
        s = np.full_like(z2, _TAYLOR[-1])
        for c in _TAYLOR[-2::-1]:
            s *= z2
            s += c
        s *= z
        np.copyto(poly, s, where=small)
    return np.copysign(poly, x64, out=poly)


# erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), as coefficients of x * (x^2)^n
_TAYLOR = [2.0 / np.sqrt(np.pi) * (-1) ** n / (float(np.prod(np.arange(1, n + 1))) * (2 * n + 1)) for n in range(8)]


def result(x, dtype) -> np.ndarray:
    """x as an ndarray of dtype (NumPy scalars from 0-d arithmetic become arrays)."""
    return np.asarray(x, dtype=dtype)
