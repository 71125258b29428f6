"""Quantization: exact integer semantics (round half to even, saturate to the target range)."""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import np_dtype
from .nn import conv
from .shape import cast_to


def _int_range(dtype):
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
    lo, hi = _int_range(out_dtype)
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


def _requantize(acc, scale, y_scale, y_zp):
    y = np.rint(acc.astype(np.float64) * (scale.astype(np.float64) / y_scale.astype(np.float64)))
    if y_zp is not None:
        y = y + y_zp.astype(np.float64)
    out = y_zp.dtype if y_zp is not None else np.uint8
    lo, hi = _int_range(out)
    return np.clip(y, lo, hi).astype(out)


@kernel("QLinearMatMul", 10)
def qlinear_matmul(ins, at):
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = ins
    ai = a.astype(np.int64) - (a_zp.astype(np.int64).reshape(-1, 1) if a_zp.ndim == 1 and a_zp.size > 1
                               else a_zp.astype(np.int64))
    bi = b.astype(np.int64) - b_zp.astype(np.int64)
    acc = np.matmul(ai.astype(np.float64), bi.astype(np.float64))
    a_s = a_s.reshape(-1, 1) if a_s.ndim == 1 and a_s.size > 1 else a_s
    return (_requantize(acc, a_s * b_s, y_s, y_zp),)


@kernel("QLinearConv", 10)
def qlinear_conv(ins, at):
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = ins[:8]
    bias = ins[8] if len(ins) > 8 else None
    xi = x.astype(np.float64) - x_zp.astype(np.float64)
    acc = conv(xi, centered_conv_weight(w, w_zp), None, at["group"], at["strides"], at["dilations"], at["pads"],
               at["auto_pad"], at["kernel_shape"])
    if bias is not None:
        acc = acc + bias.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    return (_requantize(acc, conv_output_scale(x_s, w_s, x.ndim), y_s, y_zp),)


def centered_conv_weight(w, w_zp) -> np.ndarray:
    """QLinearConv's w - w_zp in float64, the zero point per output channel or one for all."""
    wz = w_zp.astype(np.float64)
    return w.astype(np.float64) - (wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz)


def conv_output_scale(x_s, w_s, ndim: int) -> np.ndarray:
    """x_s * w_s, per output channel (shaped to broadcast over an ndim-D output) or one for all."""
    if w_s.size > 1:
        return (x_s.astype(np.float64) * w_s.astype(np.float64)).reshape((1, -1) + (1,) * (ndim - 2))
    return np.asarray(x_s * w_s)
