"""ONNX Runtime's com.microsoft quantized ops of the QOperator format.

`onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QOperator)` (and the int8
models of the ONNX model zoo) keep tensors in uint8/int8 between ops: besides the standard
QLinearConv / QLinearMatMul they use these contrib ops. Each one is its float op between a
dequantize and a quantize (round half to even, saturate), the way ORT defines them:

    QLinearAdd / QLinearMul (A, a_scale, a_zp?, B, b_scale, b_zp?, c_scale, c_zp?)
    QLinearSigmoid / QLinearLeakyRelu (X, x_scale, x_zp?, y_scale, y_zp?)   one 256-entry lookup table
    QLinearConcat (y_scale, y_zp, then X, x_scale, x_zp per input; axis)
    QLinearGlobalAveragePool / QLinearAveragePool (X, x_scale, x_zp, y_scale, y_zp; channels_last)
    QLinearSoftmax (X, x_scale, x_zp?, y_scale, y_zp; axis=-1, opset: before 13, the axes from `axis` on as one)
    QGemm (A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?; alpha, transA, transB)
        int32 C is the bias at scale a_scale * b_scale; without y_scale the output is float

    MatMulNBits (A, B packed 2/4/8-bit, scales, zero_points?, g_idx?, bias?; K, N, bits, block_size)
        A @ dequantized B^T in float32 (ORT's accuracy_level 4 quantizes A to int8 instead: results
        then differ from ORT's by that quantization); act-order g_idx is refused at build

ORT computes some of them with other float roundings (its QLinearAdd scales each input by
a_scale/c_scale first): an output may differ from ORT's by one quantization step.
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, kernel, prepare
from ._util import remember
from .nn import average_pool
from .quant import int_range, requantize, dequantize, quantize

DOMAIN = "com.microsoft"


def _given(ins, i):
    return ins[i] if len(ins) > i and ins[i] is not None else None


def _zp_or_zero(zp, like):
    """A missing zero point is 0 of the tensor's type (ORT's default)."""
    return zp if zp is not None else np.zeros((), like.dtype)


def _binary(fn):
    def run(ins, at):
        a, b = ins[0], ins[3]
        a_zp, b_zp, c_zp = _zp_or_zero(_given(ins, 2), a), _zp_or_zero(_given(ins, 5), b), _zp_or_zero(_given(ins, 7), a)
        y = fn(dequantize(a, ins[1], a_zp), dequantize(b, ins[4], b_zp))
        return (quantize(y, ins[6], c_zp, c_zp.dtype),)
    return run


kernel("QLinearAdd", 1, domain=DOMAIN)(_binary(np.add))
kernel("QLinearMul", 1, domain=DOMAIN)(_binary(np.multiply))


_TABLES: dict = {}  # (op, alpha, dtype, scales, zero points) -> lookup table: built once, not per run
_TABLES_KEPT = 1024  # 256-entry tables: a quantized model has one per distinct (scale, zero point)


def _lookup(fn):
    """y = quantize(fn(dequantize(x))) through a table over every value of x's 8-bit type."""
    def run(ins, at):
        x = ins[0]
        x_zp, y_zp = _zp_or_zero(_given(ins, 2), x), _zp_or_zero(_given(ins, 4), x)
        if x.dtype.itemsize != 1:
            raise ValueError(f"8-bit input expected, got {x.dtype}")
        lo, hi = int_range(x.dtype)
        key = (fn, at.get("alpha"), x.dtype, ins[1].tobytes(), x_zp.tobytes(), ins[3].tobytes(), y_zp.tobytes(),
               y_zp.dtype)
        table = _TABLES.get(key)
        if table is None:
            values = np.arange(lo, hi + 1).astype(x.dtype)
            with np.errstate(over="ignore"):
                table = quantize(fn(dequantize(values, ins[1], x_zp), at), ins[3], y_zp, y_zp.dtype)
            remember(_TABLES, key, table, _TABLES_KEPT)
        return (table[x.astype(np.int16) - lo],)
    return run


def _sigmoid(v, at):
    return (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32)


def _leaky_relu(v, at):
    return np.where(v >= 0, v, v * np.float32(at.get("alpha", 0.01)))


kernel("QLinearSigmoid", 1, domain=DOMAIN)(_lookup(_sigmoid))
kernel("QLinearLeakyRelu", 1, domain=DOMAIN)(_lookup(_leaky_relu))


@kernel("QLinearConcat", 1, domain=DOMAIN)
def qlinear_concat(ins, at):
    y_scale, y_zp = ins[0], ins[1]
    parts = []
    for i in range(2, len(ins), 3):
        x, scale, zp = ins[i], ins[i + 1], ins[i + 2]
        same = scale.reshape(-1)[0] == y_scale.reshape(-1)[0] and zp.reshape(-1)[0] == y_zp.reshape(-1)[0]
        parts.append(x if same and x.dtype == y_zp.dtype else
                     quantize(dequantize(x, scale, zp), y_scale, y_zp, y_zp.dtype))
    return (np.concatenate(parts, axis=at.get("axis", 1)),)


def _pooled(x, at, pool):
    """pool() on dequantized x in NCHW order (channels_last: NHWC in and out)."""
    last = bool(at.get("channels_last"))
    xs = np.moveaxis(x, -1, 1) if last else x
    y = pool(xs)
    return np.moveaxis(y, 1, -1) if last else y


@kernel("QLinearGlobalAveragePool", 1, domain=DOMAIN)
def qlinear_global_average_pool(ins, at):
    x = ins[0]
    y_zp = _zp_or_zero(_given(ins, 4), x)
    xs = dequantize(x, ins[1], _zp_or_zero(_given(ins, 2), x))
    y = _pooled(xs, at, lambda v: v.mean(axis=tuple(range(2, v.ndim)), keepdims=True, dtype=np.float64))
    return (quantize(y.astype(np.float32), ins[3], y_zp, y_zp.dtype),)


@kernel("QLinearAveragePool", 1, domain=DOMAIN)
def qlinear_average_pool(ins, at):
    x = ins[0]
    y_zp = _zp_or_zero(_given(ins, 4), x)
    xs = dequantize(x, ins[1], _zp_or_zero(_given(ins, 2), x))
    pool_at = {k: at.get(k) for k in ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads",
                                      "strides", "dilations")}
    pool_at["auto_pad"] = pool_at["auto_pad"] or "NOTSET"
    y = _pooled(xs, at, lambda v: average_pool([v], pool_at)[0])
    return (quantize(y, ins[3], y_zp, y_zp.dtype),)


@kernel("QLinearSoftmax", 1, domain=DOMAIN)
def qlinear_softmax(ins, at):
    x = ins[0]
    y_zp = _zp_or_zero(_given(ins, 4), x)
    xs = dequantize(x, ins[1], _zp_or_zero(_given(ins, 2), x)).astype(np.float64)
    axis = at.get("axis", -1)  # ORT's default for this op, whatever `opset` says (Softmax-11's default was 1)
    if at.get("opset", 13) < 13:  # Softmax before 13: over all axes from `axis` on, as one
        flat = xs.reshape(int(np.prod(xs.shape[:axis % xs.ndim])), -1)
        y = _softmax(flat, 1).reshape(xs.shape)
    else:
        y = _softmax(xs, axis)
    return (quantize(y.astype(np.float32), ins[3], y_zp, y_zp.dtype),)


def _softmax(v, axis):
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _centered_b(b, b_zp, trans_b) -> np.ndarray:
    """QGemm's B minus its zero point, as float64 (K, N): per output channel parameters follow B's
    rows when it is transposed."""
    bz = b_zp.astype(np.float64)
    if trans_b:
        return (b.astype(np.float64) - (bz.reshape(-1, 1) if bz.size > 1 else bz)).T
    return b.astype(np.float64) - bz


def _qgemm(ins, at, bi):
    a, a_scale, a_zp, b_scale = ins[0], ins[1], ins[2], ins[4]
    c, y_scale, y_zp = _given(ins, 6), _given(ins, 7), _given(ins, 8)
    ai = a.astype(np.float64) - a_zp.astype(np.float64)
    if at.get("transA"):
        ai = ai.T
    acc = ai @ bi  # exact: integer-valued float64 products and sums
    if c is not None:
        acc = acc + c.astype(np.float64)
    scale = np.float64(at.get("alpha", 1.0)) * a_scale.astype(np.float64) * b_scale.astype(np.float64).reshape(-1)
    if y_scale is None:
        return ((acc * scale).astype(np.float32),)
    return (requantize(acc, scale, y_scale, _zp_or_zero(y_zp, a)),)


@kernel("QGemm", 1, domain=DOMAIN)
def qgemm(ins, at):
    return _qgemm(ins, at, _centered_b(ins[3], ins[5], at.get("transB")))


@prepare("QGemm", 1, domain=DOMAIN)
def prepare_qgemm(at, consts, generic):
    """Constant B and zero point (the usual case): B centered once at build, not at every run."""
    b, b_zp = consts[3], consts[5]
    if not isinstance(b, np.ndarray) or not isinstance(b_zp, np.ndarray):
        return None
    bi = _centered_b(b, b_zp, at.get("transB"))
    return lambda args, at: _qgemm(args, at, bi)


# --- MatMulNBits: weight-only quantized MatMul (ORT's MatMulNBitsQuantizer, int4 LLMs) -------------
def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """(..., bytes) uint8 -> (..., count) values of `bits` bits each, the lowest bits first."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(packed.shape[:-1] + (-1,))[..., :count]


def dequantize_nbits(b, scales, zero_points, k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """MatMulNBits' weight as float32 (K, N): per column n and block j of `block_size` rows,
    (q - zero point) * scale; the zero point defaults to 2^(bits - 1)."""
    blocks = -(-k // block_size)
    q = _unpack_bits(b.reshape(n, blocks, -1), bits, block_size).astype(np.float32)  # (N, blocks, block)
    s = scales.reshape(n, blocks).astype(np.float32)
    if zero_points is None:
        zp = np.full((n, blocks), 1 << (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:  # packed like B, each column padded to whole bytes
        zp = _unpack_bits(zero_points.reshape(n, -1), bits, blocks).astype(np.float32)
    else:  # given in the scales' float type
        zp = zero_points.reshape(n, blocks).astype(np.float32)
    w = (q - zp[:, :, None]) * s[:, :, None]
    return np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)


@kernel("MatMulNBits", 1, domain=DOMAIN)
def matmul_nbits(ins, at):
    a, b, scales = ins[0], ins[1], ins[2]
    zero_points, bias = _given(ins, 3), _given(ins, 5)
    w = dequantize_nbits(b, scales, zero_points, at["K"], at["N"], at.get("bits", 4), at["block_size"])
    y = np.matmul(a.astype(np.float32), w)
    if bias is not None:
        y += bias.astype(np.float32)
    return (y.astype(a.dtype, copy=False),)


@prepare("MatMulNBits", 1, domain=DOMAIN)
def prepare_matmul_nbits(at, consts, generic):
    """Constant weights (the usual case): dequantized once at build, then one GEMM per run."""
    b, scales = consts[1], consts[2]
    zero_points = consts[3] if len(consts) > 3 else None
    if not isinstance(b, np.ndarray) or not isinstance(scales, np.ndarray) or zero_points is DYNAMIC:
        return None
    w = dequantize_nbits(b, scales, zero_points, at["K"], at["N"], at.get("bits", 4), at["block_size"])

    def run(args, at):
        a = args[0]
        bias = _given(args, 5)
        y = np.matmul(a if a.dtype == w.dtype else a.astype(np.float32), w)
        if bias is not None:
            y += bias.astype(np.float32)
        return (y.astype(a.dtype, copy=False),)
    return run


def _refuse_nbits(at, inputs, outputs):
    if len(inputs) > 4 and inputs[4]:
        return "g_idx (act-order)"
    if at.get("bits", 4) not in (2, 4, 8):
        return f"bits={at.get('bits')}"
    return None


matmul_nbits.refuse = _refuse_nbits
