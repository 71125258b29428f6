"""GPU GEMM-shaped ops: MatMul / Gemm / Einsum through cupy.matmul (cuBLAS, batched when the operands
have batch dims), Conv as im2col + GEMM with a direct depthwise kernel, BatchNormalization.

TF32 and fp16 are session options (see `compute_types`): the kernels themselves just call cuBLAS.
"""
from __future__ import annotations

import contextlib

import numpy as np

import cupy as cp
import cupy._core._routines_linalg as _linalg

from graphopt.errors import Unsupported

from ..registry import kernel
from . import cupy_runtime as rt


@contextlib.contextmanager
def compute_types(tf32: bool):
    """cuBLAS compute types for a run: float32 GEMMs on TF32 tensor cores when asked; float16 GEMMs
    always accumulate in float32 (half accumulation loses too much for deep models)."""
    saved = {dt: _linalg.get_compute_type(dt) for dt in (np.float32, np.float16)}
    _linalg.set_compute_type(np.float32, _linalg.COMPUTE_TYPE_TF32 if tf32 else _linalg.COMPUTE_TYPE_FP32)
    _linalg.set_compute_type(np.float16, _linalg.COMPUTE_TYPE_FP32)
    try:
        yield
    finally:
        for dt, ct in saved.items():
            _linalg.set_compute_type(dt, ct)


@kernel("MatMul", 1, device="gpu")
def matmul(ins, at):
    return (cp.matmul(rt.device(ins[0]), rt.device(ins[1])),)


@kernel("Gemm", 1, device="gpu")
def gemm(ins, at):
    a, b = rt.device(ins[0]), rt.device(ins[1])
    c = rt.device(ins[2]) if len(ins) > 2 else None
    a = a.T if at.get("transA") else a
    b = b.T if at.get("transB") else b
    y = cp.matmul(a, b)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None and beta != 0.0:
        y += (c if beta == 1.0 else c * c.dtype.type(beta)).astype(y.dtype, copy=False)
    return (y,)


@kernel("Einsum", 12, device="gpu")
def einsum(ins, at):
    return (cp.einsum(at["equation"], *[rt.device(x) for x in ins]),)


def _conv_geometry(x_shape, w_shape, at):
    spatial = len(x_shape) - 2
    k = list(w_shape[2:])
    strides = at.get("strides") or [1] * spatial
    dil = at.get("dilations") or [1] * spatial
    pads = list(at.get("pads") or [0] * (2 * spatial))
    auto = at.get("auto_pad") or "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * spatial)
        for i in range(spatial):
            out = -(-x_shape[2 + i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - x_shape[2 + i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + spatial] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * spatial)
    out = [(x_shape[2 + i] + pads[i] + pads[i + spatial] - dil[i] * (k[i] - 1) - 1) // strides[i] + 1
           for i in range(spatial)]
    return k, strides, dil, pads, out


@kernel("Conv", 1, device="gpu")
def conv(ins, at):
    x, w = rt.c_contig(rt.device(ins[0])), rt.c_contig(rt.device(ins[1]))
    bias = rt.device(ins[2]) if len(ins) > 2 else None
    if x.ndim == 3:  # 1-D convolution: a 2-D one over a unit height
        at = {**at, **{k: ([1] + list(v) if k != "pads" else [0, v[0], 0, v[1]])
                       for k, v in at.items() if k in ("strides", "dilations", "pads", "kernel_shape") and v}}
        y, = conv([x[:, :, None, :], w[:, :, None, :], bias], at)
        return (y[:, :, 0, :],)
    if x.ndim != 4:
        raise Unsupported(f"Conv on the GPU supports 1-D and 2-D convolutions, got input rank {x.ndim}")
    n, c, h, wd = x.shape
    co, ci_g, kh, kw = w.shape
    g = at.get("group") or 1
    k, (sh, sw), (dh, dw), pads, (oh, ow) = _conv_geometry(x.shape, w.shape, at)
    ph, pw = pads[0], pads[1]
    if pads[0] != pads[2] or pads[1] != pads[3]:  # asymmetric: pad explicitly, then convolve unpadded
        x = cp.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        n, c, h, wd = x.shape
        ph = pw = 0
    geo = (np.int32(h), np.int32(wd), np.int32(kh), np.int32(kw), np.int32(oh), np.int32(ow), np.int32(sh),
           np.int32(sw), np.int32(ph), np.int32(pw), np.int32(dh), np.int32(dw))
    if g == c and ci_g == 1 and co % c == 0 and x.dtype in (np.float32, np.float16):  # depthwise
        y = cp.empty((n, co, oh, ow), dtype=x.dtype)
        b = rt.c_contig(bias.astype(x.dtype, copy=False)) if bias is not None else None
        rt.launch(rt.function("conv", "go_depthwise_" + rt.suffix(x.dtype)), y.size,
                  (x, w, b if b is not None else np.uint64(0), y, np.int64(y.size), np.int32(c), np.int32(co)) + geo)
        return (y,)
    if x.dtype.itemsize not in (2, 4):
        raise Unsupported(f"Conv on the GPU: element type {x.dtype} has no im2col kernel")
    col = cp.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    rt.launch(rt.function("conv", "go_im2col_" + rt.width(x.dtype)), col.size,
              (x, col, np.int64(col.size), np.int32(c)) + geo)
    # (G, Co/G, Ci/G*kh*kw) @ (N, G, Ci/G*kh*kw, oh*ow) -> (N, G, Co/G, oh*ow): one batched GEMM
    y = cp.matmul(w.reshape(g, co // g, -1), col.reshape(n, g, ci_g * kh * kw, oh * ow))
    y = y.reshape(n, co, oh, ow)
    if bias is not None:
        y += bias.reshape(1, co, 1, 1).astype(y.dtype, copy=False)
    return (y,)


@kernel("BatchNormalization", 9, device="gpu")
def batch_norm(ins, at):
    x, scale, b, mean, var = (rt.device(v) for v in ins[:5])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / cp.sqrt(var + at.get("epsilon", 1e-5))
    y = (x - mean.reshape(shape)) * inv.reshape(shape) + b.reshape(shape)
    return (y.astype(x.dtype, copy=False),)
