"""Score post-transforms shared by the ai.onnx.ml classifiers and regressors (trees, linear, SVM).

They follow ONNX Runtime's formulas, the reference graphopt is tested against, including its
approximations: PROBIT is sqrt(2) * erfinv(2p - 1) with Winitzki's closed-form erfinv
(a = 0.147, pi written 3.14159), not the exact inverse; SOFTMAX_ZERO leaves scores that are
zero (|s| <= 1e-7) out of the sum and scales them by exp(-max) instead of exponentiating them.
"""
from __future__ import annotations

import numpy as np

from ._util import clip_ufunc


def probit(p: np.ndarray) -> np.ndarray:
    """In float32, operation by operation as ORT's ErfInv: near p = 0.5 the formula cancels, and
    float64 there differs from ORT by 1e-5."""
    f = np.float32
    x = (f(2) * np.asarray(p, f) - f(1)).astype(f)
    sign = np.where(x < 0, f(-1), f(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        # log in float64 rounded once to float32: the correctly rounded logf of C libraries (NumPy's
        # float32 log may be 1 ulp off, which this formula amplifies near p = 0.5)
        log = np.log(((f(1) - x) * (f(1) + x)).astype(np.float64)).astype(f)
        a = f(2) / (f(3.14159) * f(0.147)) + f(0.5) * log
        b = f(1) / f(0.147) * log
        return f(1.41421356) * (sign * np.sqrt(-a + np.sqrt(a * a - b)))


def logistic(s: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-s)), the exponent clipped to +-88 (finite in float32; the result there is
    within 1e-38 of ORT's exact 0 or 1), which spares an errstate block (~1 us a call)."""
    v = clip_ufunc(s, -88, 88)
    np.negative(v, out=v)
    np.exp(v, out=v)
    v += 1
    return np.reciprocal(v, out=v)


def row_sum(x: np.ndarray) -> np.ndarray:
    """x.sum(axis=-1, keepdims=True) through a GEMV: NumPy's reduction over a short last axis
    costs ~30 us for 1000 rows of 3, the product with a ones vector ~1.5 us."""
    return (x @ np.ones(x.shape[-1], x.dtype))[..., None]


def row_max(x: np.ndarray) -> np.ndarray:
    """x.max(axis=-1, keepdims=True), column by column for short rows (77 us -> 5 us for 1000 x 3)."""
    if x.shape[-1] > 32:
        return x.max(axis=-1, keepdims=True)
    top = x[..., 0].copy()
    for j in range(1, x.shape[-1]):
        np.maximum(top, x[..., j], out=top)
    return top[..., None]


def _max_of_rows(t: np.ndarray) -> np.ndarray:
    """Per column, the largest of t's rows (t is scores laid out class by class)."""
    top = t[0].copy()
    for row in t[1:]:
        np.maximum(top, row, out=top)
    return top


def _softmax_t(t: np.ndarray) -> np.ndarray:
    t -= _max_of_rows(t)
    np.exp(t, out=t)
    t /= t.sum(axis=0)
    return t


def _softmax_zero_t(t: np.ndarray) -> np.ndarray:
    top = _max_of_rows(t)
    nonzero = np.abs(t) > 1e-7
    e = np.where(nonzero, np.exp(t - top), t * np.exp(-top))
    with np.errstate(divide="ignore", invalid="ignore"):
        e /= np.where(nonzero, e, 0).sum(axis=0)
    return e


def argmax_of_rows(t: np.ndarray) -> np.ndarray:
    """Per column, the first row holding the largest value, as ORT's loops pick it (a NaN never
    wins, where np.argmax would pick it)."""
    if len(t) == 2:  # NaN compares false: class 0 stays, as in ORT's loop
        return np.greater(t[1], t[0]).view(np.int8)
    best, index = t[0].copy(), np.zeros(t.shape[1], np.intp)
    for j in range(1, len(t)):
        better = t[j] > best
        index[better] = j
        np.maximum(best, t[j], out=best, where=better)
    return index


def apply_post_transform(scores: np.ndarray, post: str) -> np.ndarray:
    """scores (n, k) -> transformed, for the string attribute values NONE ... PROBIT."""
    if post == "SOFTMAX" and len(scores) <= 16:  # a few rows: the fewest NumPy calls
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e
    if post in ("SOFTMAX", "SOFTMAX_ZERO"):
        # computed class by class on a (k, n) copy: NumPy's reductions and broadcasts over a short
        # last axis cost 10-30x more than the same work along rows (1000 x 3: 45 us -> 8 us)
        return np.ascontiguousarray(apply_post_transform_t(np.array(scores.T), post).T)
    return apply_post_transform_t(scores, post)


def argmax_of_columns(s: np.ndarray) -> np.ndarray:
    """argmax_of_rows for scores laid out (n, k): np.argmax where no score is NaN (it would pick a
    NaN, ORT's loops never do)."""
    index = s.argmax(axis=1)
    if np.isnan(s[np.arange(len(s)), index]).any():
        return argmax_of_rows(s.T)
    return index


def apply_post_transform_t(t: np.ndarray, post: str) -> np.ndarray:
    """The same on scores laid out class by class, (k, n); may overwrite t."""
    if post == "NONE":
        return t
    if post == "LOGISTIC":
        return logistic(t)
    if post == "SOFTMAX":
        return _softmax_t(t)
    if post == "SOFTMAX_ZERO":
        return _softmax_zero_t(t)
    if post == "PROBIT":
        return probit(t)
    from graphopt.errors import Unsupported
    raise Unsupported(f"unknown post_transform {post!r}")
