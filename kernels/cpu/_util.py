"""Helpers shared by the CPU kernels."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


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
    """erf in float64: Taylor series near 0 (keeps relative accuracy), Numerical Recipes' erfc
    Chebyshev fit (fractional error < 1.2e-7) elsewhere."""
    x64 = np.asarray(x, dtype=np.float64)
    z = np.abs(x64)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(z)
    for c in _ERF_P[::-1]:
        poly = poly * t + c
    erfc = t * np.exp(-z * z - 1.26551223 + t * poly)
    out = np.where(x64 >= 0, 1.0 - erfc, erfc - 1.0)
    small = z < 0.5
    if small.any():
        xs = x64[small]
        x2 = xs * xs
        term, acc = xs.copy(), xs.copy()
        for n in range(1, 12):
            term = term * (-x2) / n
            acc = acc + term / (2 * n + 1)
        out[small] = acc * (2.0 / np.sqrt(np.pi))
    return out


def result(x, dtype) -> np.ndarray:
    """x as an ndarray of dtype (NumPy scalars from 0-d arithmetic become arrays)."""
    return np.asarray(x, dtype=dtype)
