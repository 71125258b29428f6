"""QLinearConv and QLinearMatMul with constant weights and quantization parameters (the usual case).

The generic kernels (quant.py) convert the weights to float64 at every run and accumulate in
float64: exact, since every product and partial sum is an integer far below 2**53. Here the
weights are centered on their zero point once at build, and the accumulation runs in float32
wherever that is exact too: a float32 sum of integers is exact while every partial sum stays
below 2**24 in magnitude, whatever order the GEMM adds them in, and no partial sum can exceed
max|x - x_zp| * sum_k |w_k - w_zp| (the bound is taken per output channel from the actual weights,
max|x - x_zp| from x's integer type and zero point). Layers past the bound accumulate in float64,
as before. The convolution is the float Conv's prepared kernel (prepared._Conv: weights laid out
for GEMM, row-wide depthwise, ...) without Winograd, whose transforms round. The requantization is
the generic kernel's, the same float64 operations in the same order, done in place: the outputs
are the generic kernel's, bit for bit.

Measured (single thread, QOperator models from onnxruntime.quantization.quantize_static on the light
zoo): see the README's quantized-formats section.
"""
from __future__ import annotations

import numpy as np

from ..registry import prepare
from ._util import clip_ufunc
from .nn import conv_kernel
from .prepared import _Conv
from .quant import _int_range, centered_conv_weight, conv_output_scale

EXACT_FLOAT32 = 2 ** 24  # integers up to this magnitude (and every one below) are float32 values


def _constant(*values) -> bool:
    return all(isinstance(v, np.ndarray) for v in values)


def _accumulator(w_rows: np.ndarray, x_dtype, x_zp) -> np.dtype:
    """float32 when no partial sum of (x - x_zp) * w over a row of the centered weights `w_rows`
    (output channels x K, float64) can reach 2**24, else float64."""
    lo, hi = _int_range(x_dtype)
    zp = float(x_zp)
    span = max(zp - lo, hi - zp)
    bound = span * float(np.abs(w_rows).sum(axis=1).max(initial=0.0))
    return np.dtype(np.float32) if bound < EXACT_FLOAT32 else np.dtype(np.float64)


class _Requantize:
    """quant._requantize on a fresh accumulator, in place: acc (+ bias) times x_s*w_s/y_s, rounded
    half to even, plus y_zp, saturated to y_zp's type. Same float64 values as the generic kernel."""

    def __init__(self, scale, y_s, y_zp, bias=None):
        self.mult = np.asarray(scale).astype(np.float64) / y_s.astype(np.float64)
        self.bias = bias
        self.zp = y_zp.astype(np.float64)
        self.out = y_zp.dtype
        self.lo, self.hi = (np.full((), v, np.float64) for v in _int_range(y_zp.dtype))

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        acc = acc.astype(np.float64, copy=acc.dtype != np.float64)
        if self.bias is not None:
            acc += self.bias
        acc *= self.mult
        np.rint(acc, out=acc)
        acc += self.zp
        clip_ufunc(acc, self.lo, self.hi, acc)
        return acc.astype(self.out)


@prepare("QLinearConv", 10)
def prepare_qlinear_conv(at, consts, generic):
    x_s, x_zp, w, w_s, w_zp, y_s, y_zp = consts[1:8]
    bias = consts[8] if len(consts) > 8 else None
    if not _constant(x_s, x_zp, w, w_s, w_zp, y_s, y_zp) or (bias is not None and not _constant(bias)) \
            or x_zp.size != 1 or w.ndim < 3 or w.dtype.kind not in "iu" or x_zp.dtype.kind not in "iu":
        return None
    wi = centered_conv_weight(w, w_zp)
    calc = _accumulator(wi.reshape(wi.shape[0], -1), x_zp.dtype, x_zp.reshape(()))
    wc = wi.astype(calc)
    conv = _Conv(wc, None, at, lambda args, a: conv_kernel([args[0], wc], a), exact=True)
    requantize = _Requantize(conv_output_scale(x_s, w_s, w.ndim), y_s, y_zp,
                             None if bias is None else bias.astype(np.float64).reshape((1, -1) + (1,) * (w.ndim - 2)))
    x_dtype, zx = x_zp.dtype, np.full((), x_zp.reshape(())[()], calc)

    def qlinear_conv(args, at):
        x = args[0]
        if type(x) is not np.ndarray or x.dtype != x_dtype or x.ndim != w.ndim:
            return generic(args, at)
        return (requantize(conv([np.subtract(x, zx, dtype=calc)], at)[0]),)
    return qlinear_conv


@prepare("QLinearMatMul", 10)
def prepare_qlinear_matmul(at, consts, generic):
    a_s, a_zp, b, b_s, b_zp, y_s, y_zp = consts[1:8]
    if not _constant(a_s, a_zp, b, b_s, b_zp, y_s, y_zp) or a_s.size != 1 or a_zp.size != 1 \
            or b.ndim != 2 or b.dtype.kind not in "iu" or a_zp.dtype.kind not in "iu":
        return None
    bi = b.astype(np.int64) - b_zp.astype(np.int64)  # as the generic kernel: b_zp per column or one
    calc = _accumulator(bi.T.astype(np.float64), a_zp.dtype, a_zp.reshape(()))
    bc = bi.astype(calc)
    k, n = bc.shape
    requantize = _Requantize(a_s * b_s, y_s, y_zp)
    a_dtype, za = a_zp.dtype, np.full((), a_zp.reshape(())[()], calc)

    def qlinear_matmul(args, at):
        a = args[0]
        if type(a) is not np.ndarray or a.dtype != a_dtype or a.ndim < 2 or a.shape[-1] != k:
            return generic(args, at)
        ai = np.subtract(a, za, dtype=calc)
        acc = ai.reshape(-1, k).dot(bc).reshape(a.shape[:-1] + (n,))  # one GEMM over all stacked rows
        return (requantize(acc),)
    return qlinear_matmul
