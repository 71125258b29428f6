"""Score post-transforms shared by the ai.onnx.ml classifiers and regressors (trees, linear, SVM).

They follow ONNX Runtime's formulas, the reference graphopt is tested against, including its
approximations: PROBIT is sqrt(2) * erfinv(2p - 1) with Winitzki's closed-form erfinv
(a = 0.147, pi written 3.14159), not the exact inverse; SOFTMAX_ZERO leaves scores that are
zero (|s| <= 1e-7) out of the sum and scales them by exp(-max) instead of exponentiating them.
"""
from __future__ import annotations

import numpy as np


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
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-s))


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_zero(s: np.ndarray) -> np.ndarray:
    top = s.max(axis=1, keepdims=True)
    nonzero = np.abs(s) > 1e-7
    e = np.where(nonzero, np.exp(s - top), s * np.exp(-top))
    with np.errstate(divide="ignore", invalid="ignore"):
        return e / np.where(nonzero, e, 0.0).sum(axis=1, keepdims=True)


def apply_post_transform(scores: np.ndarray, post: str) -> np.ndarray:
    """scores (n, k) float64 -> transformed, for the string attribute values NONE ... PROBIT."""
    if post == "NONE":
        return scores
    if post == "LOGISTIC":
        return logistic(scores)
    if post == "SOFTMAX":
        return softmax(scores)
    if post == "SOFTMAX_ZERO":
        return softmax_zero(scores)
    if post == "PROBIT":
        return probit(scores)
    from graphopt.errors import Unsupported
    raise Unsupported(f"unknown post_transform {post!r}")
