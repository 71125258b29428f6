"""Quantization: exact integer semantics (round half to even, saturate to the target range). Below the
generic kernels, QLinearConv/QLinearMatMul prepared for constant weights."""
from __future__ import annotations

import numpy as np

from ..registry import kernel, prepare
from ._util import clip_ufunc, np_dtype
from .nn import conv, conv_kernel
from .prepared import PreparedConv
from .shape import cast_to


def int_range(dtype):
    name = np.dtype(dtype).name
    if name == "int4":
        return -8, 7
    if name == "uint4":
        return 0, 15
    if name == "int2":
        return -2, 1
    if name == "uint2":
        return 0, 3
    info = np.iinfo(dtype)
    return info.min, info.max


def _broadcast_param(p, x, axis, block_size):
    """Scale / zero point shaped to broadcast against x: scalar, per-axis (1-D) or blocked."""
    if p.ndim == 0 or p.size == 1 and not block_size:
        return p.reshape(())
    axis = axis % x.ndim
    if block_size:
        p = np.repeat(p, block_size, axis=axis)
        return np.take(p, np.arange(x.shape[axis]), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x, scale, zero_point, out_dtype, saturate=True):
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind == "f" or out_dtype.name.startswith("float"):  # float8 / float4 targets
        y = x.astype(np.float32) / scale.astype(np.float32)
        if zero_point is not None:
            y = y + zero_point.astype(np.float32)
        return cast_to(y.astype(np.float32), out_dtype, saturate)
    y = np.rint(x.astype(np.float32) / scale.astype(np.float32))
    if zero_point is not None:
        y = y + zero_point.astype(np.float32)
    lo, hi = int_range(out_dtype)
    return np.clip(y, lo, hi).astype(out_dtype)


def _out_dtype(zero_point, at, default=np.uint8):
    if zero_point is not None:
        return zero_point.dtype
    if at.get("output_dtype"):
        return np_dtype(at["output_dtype"])
    return np.dtype(default)


@kernel("QuantizeLinear", 10)
def quantize_linear(ins, at):
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis, block = at.get("axis", 1) or 0, at.get("block_size") or 0
    if at.get("axis") is None:
        axis = 1
    s = _broadcast_param(scale, x, axis, block)
    z = _broadcast_param(zp, x, axis, block) if zp is not None else None
    return (quantize(x, s, z, _out_dtype(zp, at), at.get("saturate", 1)),)


def dequantize(x, scale, zero_point):
    if x.dtype.kind in "iu" or x.dtype.name in ("int4", "uint4", "int2", "uint2"):
        xi = x.astype(np.int32)
        if zero_point is not None:
            xi = xi - zero_point.astype(np.int32)
        return xi.astype(np.float32) * scale.astype(np.float32)
    xf = x.astype(np.float32)
    if zero_point is not None:
        xf = xf - zero_point.astype(np.float32)
    return xf * scale.astype(np.float32)


@kernel("DequantizeLinear", 10)
def dequantize_linear(ins, at):
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis = 1 if at.get("axis") is None else at["axis"]
    block = at.get("block_size") or 0
    s = _broadcast_param(scale, x, axis, block)
    z = _broadcast_param(zp, x, axis, block) if zp is not None else None
    out = np_dtype(at["output_dtype"]) if at.get("output_dtype") else scale.dtype
    return (dequantize(x, s, z).astype(out),)


def dynamic_uint8(x: np.ndarray):
    """(x quantized to uint8, its scale, its zero point) over x's own range widened to include 0:
    DynamicQuantizeLinear's formula, and ORT's on-the-fly quantization of a GEMM's float operand.
    The scale is 0 for an all-zero x (the values are then quantized with scale 1: all zero points)."""
    x = x.astype(np.float32)
    lo = min(float(x.min(initial=0.0)), 0.0)
    hi = max(float(x.max(initial=0.0)), 0.0)
    # in float32, as the spec's formula on a float32 input (ORT too): a float64 difference rounded
    # once to float32 can differ by an ulp, and move a value across a rounding boundary
    scale = (np.float32(hi) - np.float32(lo)) / np.float32(255)
    zp = np.clip(np.rint(np.float32(0) - np.float32(lo) / scale), 0, 255) if scale else np.float32(0)
    y = quantize(x, np.array(scale if scale else 1.0, np.float32), np.array(zp, np.uint8), np.uint8)
    return y, np.float32(scale), np.uint8(zp)


@kernel("DynamicQuantizeLinear", 11)
def dynamic_quantize_linear(ins, at):
    y, scale, zp = dynamic_uint8(ins[0])
    return (y, np.array(scale, np.float32), np.array(zp, np.uint8))


def requantize(acc, scale, y_scale, y_zp):
    y = np.rint(acc.astype(np.float64) * (scale.astype(np.float64) / y_scale.astype(np.float64)))
    if y_zp is not None:
        y = y + y_zp.astype(np.float64)
    out = y_zp.dtype if y_zp is not None else np.uint8
    lo, hi = int_range(out)
    return np.clip(y, lo, hi).astype(out)


@kernel("QLinearMatMul", 10)
def qlinear_matmul(ins, at):
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = ins
    ai = a.astype(np.int64) - (a_zp.astype(np.int64).reshape(-1, 1) if a_zp.ndim == 1 and a_zp.size > 1
                               else a_zp.astype(np.int64))
    bi = b.astype(np.int64) - b_zp.astype(np.int64)
    acc = np.matmul(ai.astype(np.float64), bi.astype(np.float64))
    a_s = a_s.reshape(-1, 1) if a_s.ndim == 1 and a_s.size > 1 else a_s
    return (requantize(acc, a_s * b_s, y_s, y_zp),)


@kernel("QLinearConv", 10)
def qlinear_conv(ins, at):
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = ins[:8]
    bias = ins[8] if len(ins) > 8 else None
    xi = x.astype(np.float64) - x_zp.astype(np.float64)
    acc = conv(xi, centered_conv_weight(w, w_zp), None, at["group"], at["strides"], at["dilations"], at["pads"],
               at["auto_pad"], at["kernel_shape"])
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    return (requantize(acc, conv_output_scale(x_s, w_s, x.ndim), y_s, y_zp),)


def centered_conv_weight(w, w_zp) -> np.ndarray:
    """QLinearConv's w - w_zp in float64, the zero point per output channel or one for all."""
    wz = w_zp.astype(np.float64)
    return w.astype(np.float64) - (wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz)


def conv_output_scale(x_s, w_s, ndim: int) -> np.ndarray:
    """x_s * w_s, per output channel (shaped to broadcast over an ndim-D output) or one for all."""
    if w_s.size > 1:
        return (x_s.astype(np.float64) * w_s.astype(np.float64)).reshape((1, -1) + (1,) * (ndim - 2))
    return np.asarray(x_s * w_s)


# ------------------------------------------------------------ QLinearConv and QLinearMatMul with constant weights and quantization parameters (the usual case).
#
# The generic kernels (above) convert the weights to float64 at every run and accumulate in
# float64: exact, since every product and partial sum is an integer far below 2**53. Here the
# weights are centered on their zero point once at build, and the accumulation runs in float32
# wherever that is exact too: a float32 sum of integers is exact while every partial sum stays
# below 2**24 in magnitude, whatever order the GEMM adds them in, and no partial sum can exceed
# max|x - x_zp| * sum_k |w_k - w_zp| (the bound is taken per output channel from the actual weights,
# max|x - x_zp| from x's integer type and zero point). Layers past the bound accumulate in float64,
# as before. The convolution is the float Conv's prepared kernel (prepared.PreparedConv: weights laid out
# for GEMM, row-wide depthwise, ...) without Winograd, whose transforms round. The requantization is
# the generic kernel's, the same float64 operations in the same order, done in place: the outputs
# are the generic kernel's, bit for bit.
#
# Measured (single thread, QOperator models from onnxruntime.quantization.quantize_static on the light
# zoo): see the README's quantized-formats section.

EXACT_FLOAT32 = 2 ** 24  # integers up to this magnitude (and every one below) are float32 values


def _constant(*values) -> bool:
    return all(isinstance(v, np.ndarray) for v in values)


def _accumulator(w_rows: np.ndarray, x_dtype, x_zp) -> np.dtype:
    """float32 when no partial sum of (x - x_zp) * w over a row of the centered weights `w_rows`
    (output channels x K, float64) can reach 2**24, else float64."""
    lo, hi = int_range(x_dtype)
    zp = float(x_zp)
    span = max(zp - lo, hi - zp)
    bound = span * float(np.abs(w_rows).sum(axis=1).max(initial=0.0))
    return np.dtype(np.float32) if bound < EXACT_FLOAT32 else np.dtype(np.float64)


class _Requantize:
    """quant.requantize on a fresh accumulator, in place: acc (+ bias) times x_s*w_s/y_s, rounded
    half to even, plus y_zp, saturated to y_zp's type. Same float64 values as the generic kernel."""

    def __init__(self, scale, y_s, y_zp, bias=None):
        self.mult = np.asarray(scale).astype(np.float64) / y_s.astype(np.float64)
        self.bias = bias
        self.zp = y_zp.astype(np.float64)
        self.out = y_zp.dtype
        self.lo, self.hi = (np.full((), v, np.float64) for v in int_range(y_zp.dtype))

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
    conv = PreparedConv(wc, None, at, lambda args, a: conv_kernel([args[0], wc], a), exact=True)
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
