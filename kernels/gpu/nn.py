"""GPU NN ops on the custom CUDA kernels: Softmax / LogSoftmax, LayerNormalization, RMSNormalization,
Attention (tiled online softmax), MaxPool / AveragePool / global pools, Resize."""
from __future__ import annotations

import math

import numpy as np

import cupy as cp

from graphopt.errors import Unsupported

from ..registry import kernel
from . import cupy_runtime as rt
from .cuda_attention import BM, head_dim_bucket


def _softmax(x, outer_axis_inner, log_mode):
    outer, n, inner = outer_axis_inner
    x = rt.c_contig(x)
    if x.dtype == np.float64:
        v = x.reshape(outer, n, inner)
        v = v - v.max(axis=1, keepdims=True)
        y = v - cp.log(cp.exp(v).sum(axis=1, keepdims=True)) if log_mode else cp.exp(v) / cp.exp(v).sum(
            axis=1, keepdims=True)
        return y.reshape(x.shape)
    y = cp.empty_like(x)
    if x.size:
        fn = rt.function("softmax", "go_softmax_" + rt.suffix(x.dtype))
        fn((outer * inner,), (rt.row_block(n),), (x, y, np.int64(n), np.int64(inner), np.int32(log_mode)))
    return y


def _split(shape, axis):
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def _softmax_kernel(log_mode, coerce_2d):
    def run(ins, at):
        x = rt.device(ins[0])
        axis = at.get("axis", 1 if coerce_2d else -1) % max(x.ndim, 1)
        if coerce_2d:  # opset < 13: the input is flattened to 2-D at `axis`
            layout = (math.prod(x.shape[:axis]), math.prod(x.shape[axis:]), 1)
        else:
            layout = _split(x.shape, axis)
        return (_softmax(x, layout, log_mode),)
    return run


kernel("Softmax", 13, device="gpu")(_softmax_kernel(0, False))
kernel("Softmax", 1, device="gpu")(_softmax_kernel(0, True))
kernel("LogSoftmax", 13, device="gpu")(_softmax_kernel(1, False))
kernel("LogSoftmax", 1, device="gpu")(_softmax_kernel(1, True))


def _norm(x, scale, bias, axis, eps, rms, n_outputs):
    x = rt.c_contig(x)
    axis %= x.ndim
    rows, n = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
    norm_shape = x.shape[axis:]
    scale = rt.c_contig(cp.broadcast_to(scale.astype(x.dtype, copy=False), norm_shape))
    bias = rt.c_contig(cp.broadcast_to(bias.astype(x.dtype, copy=False), norm_shape)) if bias is not None else None
    stat_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    mean = cp.empty(stat_shape, np.float32)
    rstd = cp.empty(stat_shape, np.float32)
    if x.dtype == np.float64:
        x2 = x.reshape(rows, n)
        mu = x2.mean(axis=1, keepdims=True) if not rms else cp.zeros((rows, 1))
        r = 1 / cp.sqrt(((x2 - mu) ** 2).mean(axis=1, keepdims=True) + eps)
        y = ((x2 - mu) * r).reshape(x.shape) * scale + (bias if bias is not None else 0)
        mean[...], rstd[...] = mu.reshape(stat_shape), r.reshape(stat_shape)
    else:
        y = cp.empty_like(x)
        if x.size:
            fn = rt.function("norm", "go_norm_" + rt.suffix(x.dtype))
            fn((rows,), (rt.row_block(n),), (x, scale, bias if bias is not None else np.uint64(0), y, mean, rstd,
                                             np.int64(n), np.float32(eps), np.int32(rms)))
    return [y, mean, rstd][:max(1, n_outputs)]


@kernel("LayerNormalization", 17, device="gpu")
def layer_norm(ins, at):
    x = rt.device(ins[0])
    bias = rt.device(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    return _norm(x, rt.device(ins[1]), bias, at.get("axis", -1), at.get("epsilon", 1e-5), 0,
                 at.get("__n_outputs__", 1))


@kernel("RMSNormalization", 23, device="gpu")
def rms_norm(ins, at):
    x = rt.device(ins[0])
    return _norm(x, rt.device(ins[1]), None, at.get("axis", -1), at.get("epsilon", 1e-5), 1, 1)


def _mask_strides(mask, b, h, sq, sk):
    """Element strides of a mask broadcast to (B, H, Sq, Sk), 0 on broadcast axes."""
    m4 = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    m4 = rt.c_contig(m4)
    target = (b, h, sq, sk)
    strides = []
    for dim, want, st in zip(m4.shape, target, m4.strides):
        strides.append(0 if dim == 1 and want != 1 else st // m4.itemsize)
    return m4, strides


@kernel("Attention", 23, device="gpu")
def attention(ins, at):
    """ONNX Attention (opset 23): the tiled kernel for float16/32 with head dim <= 128, batched GEMMs
    otherwise; softcap, windows, nonpad lengths and the qk output are refused with the reason."""
    get = lambda i: rt.device(ins[i]) if len(ins) > i and ins[i] is not None else None  # noqa: E731
    q, k, v, mask, past_k, past_v = get(0), get(1), get(2), get(3), get(4), get(5)
    if get(6) is not None or at.get("softcap") or (at.get("__n_outputs__", 1) > 3) or at.get("softmax_precision"):
        raise Unsupported("Attention on the GPU: nonpad_kv_seqlen, softcap, softmax_precision and the qk output "
                          "are not supported")
    left, right = at.get("left_window_size"), at.get("right_window_size")
    if (left is not None and left >= 0) or (right is not None and right >= 0):
        raise Unsupported("Attention on the GPU: sliding windows are not supported")
    three_d = q.ndim == 3
    if three_d:
        def heads(x, n):
            bb, s, _ = x.shape
            return x.reshape(bb, s, n, -1).transpose(0, 2, 1, 3)
        q, k, v = heads(q, at["q_num_heads"]), heads(k, at["kv_num_heads"]), heads(v, at["kv_num_heads"])
    if past_k is not None:
        k, v = cp.concatenate([past_k, k], axis=2), cp.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    b, h, sq, d = q.shape
    kvh, sk = k.shape[1], k.shape[2]
    dv = v.shape[-1]
    bucket = head_dim_bucket(max(d, dv))
    scale = at.get("scale") or 1.0 / math.sqrt(d)
    past_len = past_k.shape[2] if past_k is not None else 0
    if h % kvh:
        raise Unsupported(f"Attention on the GPU: {h} query heads do not divide into {kvh} kv heads")
    if bucket is None or d != dv or q.dtype not in (np.float32, np.float16) or b * h > 65535:
        out = _attention_matmul(q, k, v, mask, scale, at.get("is_causal"), past_len)
        if three_d:
            out = out.transpose(0, 2, 1, 3).reshape(b, sq, h * dv)
        return (out, present_k, present_v)
    q, k, v = rt.c_contig(q), rt.c_contig(k), rt.c_contig(v)
    mask_kind, mask_ptr, ms = 0, np.uint64(0), [0, 0, 0, 0]
    if mask is not None:
        if mask.shape[-1] < sk:  # a shorter mask covers the first keys; the rest are masked out
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, sk - mask.shape[-1])]
            mask = cp.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else -np.inf)
        if mask.dtype == np.bool_:
            mask_ptr, ms = _mask_strides(mask.view(cp.uint8), b, h, sq, sk)
            mask_kind = 2
        else:
            mask_ptr, ms = _mask_strides(mask.astype(np.float32), b, h, sq, sk)
            mask_kind = 1
    out = cp.empty((b, h, sq, d), dtype=q.dtype)
    fn = rt.function("attention", f"go_attention_{rt.suffix(q.dtype)}_d{bucket}")
    fn(((sq + BM - 1) // BM, b * h), (BM,),
       (q, k, v, out, mask_ptr, np.int32(mask_kind), *(np.int64(s) for s in ms), np.int32(h), np.int32(kvh),
        np.int32(sq), np.int32(sk), np.int32(d), np.float32(scale), np.int32(1 if at.get("is_causal") else 0),
        np.int32(past_len)))
    if three_d:
        out = out.transpose(0, 2, 1, 3).reshape(b, sq, h * d)
    return (out, present_k, present_v)


def _attention_matmul(q, k, v, mask, scale, causal, past_len):
    """Attention as batched GEMMs + softmax in float32 (head dims the tiled kernel has no bucket
    for, float64, or a head count beyond its grid): O(Sq * Sk) memory."""
    h, kvh, sq, sk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if h != kvh:
        k, v = cp.repeat(k, h // kvh, axis=1), cp.repeat(v, h // kvh, axis=1)
    calc = np.float64 if q.dtype == np.float64 else np.float32
    s = cp.matmul(q.astype(calc), cp.swapaxes(k.astype(calc), -1, -2)) * calc(scale)
    keep = cp.ones((1, 1, sq, sk), dtype=cp.bool_)
    if causal:
        keep = keep & (cp.arange(sk)[None, :] <= cp.arange(sq)[:, None] + past_len)
    if mask is not None:
        if mask.shape[-1] < sk:
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, sk - mask.shape[-1])]
            mask = cp.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else -np.inf)
        if mask.dtype == np.bool_:
            keep = keep & mask
        else:
            s = s + mask.astype(calc)
    s = cp.where(keep, s, -cp.inf)
    m = s.max(axis=-1, keepdims=True)
    e = cp.exp(s - cp.where(cp.isfinite(m), m, 0))
    total = e.sum(axis=-1, keepdims=True)
    p = cp.where(total > 0, e / cp.where(total > 0, total, 1), 0)  # fully masked rows give 0
    return cp.matmul(p, v.astype(calc)).astype(q.dtype)


def _pool(ins, at, mode):
    x = rt.c_contig(rt.device(ins[0]))
    spatial = x.ndim - 2
    if spatial < 1 or spatial > 3 or x.dtype not in (np.float32, np.float16):
        raise Unsupported(f"{'MaxPool' if mode == 0 else 'AveragePool'} on the GPU: rank {x.ndim} {x.dtype}")
    if mode == 0 and at.get("__n_outputs__", 1) > 1:
        raise Unsupported("MaxPool on the GPU: the Indices output is not supported")
    kshape = list(at["kernel_shape"])
    strides = list(at.get("strides") or [1] * spatial)
    dil = list(at.get("dilations") or [1] * spatial)
    pads = list(at.get("pads") or [0] * (2 * spatial))
    auto = at.get("auto_pad") or "NOTSET"
    ins_ = list(x.shape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(spatial):
            out = -(-ins_[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kshape[i] - 1) * dil[i] + 1 - ins_[i])
            lo, hi = total // 2, total - total // 2
            pads[i], pads[i + spatial] = (lo, hi) if auto == "SAME_UPPER" else (hi, lo)
    elif auto == "VALID":
        pads = [0] * (2 * spatial)
    outs = []
    for i in range(spatial):
        span = ins_[i] + pads[i] + pads[i + spatial] - dil[i] * (kshape[i] - 1) - 1
        o = (-(-span // strides[i]) if at.get("ceil_mode") else span // strides[i]) + 1
        if at.get("ceil_mode") and (o - 1) * strides[i] >= ins_[i] + pads[i]:
            o -= 1  # the last window must start inside the input or its begin padding
        outs.append(o)
    fill = 3 - spatial  # leading unit dims: every pool runs as 3-D
    dims = lambda v, one: [one] * fill + list(v)  # noqa: E731
    y = cp.empty(x.shape[:2] + tuple(outs), dtype=x.dtype)
    if mode == 1 and not at.get("count_include_pad"):
        mode = 2
    args = dims(ins_, 1) + dims(outs, 1) + dims(kshape, 1) + dims(strides, 1) + dims(pads[:spatial], 0) + \
        dims(pads[spatial:], 0) + dims(dil, 1)
    rt.launch(rt.function("pool", "go_pool_" + rt.suffix(x.dtype)), y.size,
              (x, y, np.int64(y.size), *(np.int32(a) for a in args), np.int32(mode)))
    return (y,)


kernel("MaxPool", 1, device="gpu")(lambda ins, at: _pool(ins, at, 0))
kernel("AveragePool", 1, device="gpu")(lambda ins, at: _pool(ins, at, 1))


@kernel("GlobalAveragePool", 1, device="gpu")
def global_average_pool(ins, at):
    x = rt.device(ins[0])
    acc = np.float32 if x.dtype == np.float16 else None  # half sums accumulate in float
    return (x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=acc).astype(x.dtype),)


@kernel("GlobalMaxPool", 1, device="gpu")
def global_max_pool(ins, at):
    x = rt.device(ins[0])
    return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


_TAPS: dict = {}


def resize_taps(n_out, n_in, scale, at):
    """Tap tables (indices, weights) of one resized axis, the NumPy runtime's (kernels/cpu/resize.py),
    built on the host once per (sizes, scale, mode) and kept on the device (a bounded cache)."""
    from graphopt.kernels.cpu._util import remember
    from graphopt.kernels.cpu.resize import resize_taps as host_taps
    key = (n_out, n_in, scale, at["mode"], at["coordinate_transformation_mode"], at["nearest_mode"],
           at.get("cubic_coeff_a"), at.get("exclude_outside"), at.get("antialias"))
    hit = _TAPS.get(key)
    if hit is None:
        idx, coeff, _ = host_taps(n_out, n_in, scale, at, (0.0, 1.0))
        wt = np.ones(idx.shape, np.float32) if coeff is None else coeff.astype(np.float32)
        hit = remember(_TAPS, key, (cp.asarray(idx.astype(np.int64)), cp.asarray(wt), idx.shape[1]))
    return hit


@kernel("Resize", 11, device="gpu")
def resize(ins, at):
    from graphopt.kernels.cpu._util import ints
    x = rt.c_contig(rt.device(ins[0]))
    roi = rt.host(ins[1]) if len(ins) > 1 else None
    scales = rt.host(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    sizes = rt.host(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    if at["coordinate_transformation_mode"] == "tf_crop_and_resize" or at.get("axes") or \
            (at.get("keep_aspect_ratio_policy") or "stretch") != "stretch" or x.dtype not in (np.float32, np.float16):
        raise Unsupported("Resize on the GPU: tf_crop_and_resize, axes, keep_aspect_ratio_policy and non-float "
                          "inputs are not supported")
    if sizes is not None and np.size(sizes):
        out_shape = ints(sizes)
        full = [o / i for o, i in zip(out_shape, x.shape)]
    else:
        full = [float(s) for s in np.asarray(scales).reshape(-1)]
        out_shape = [int(math.floor(i * s)) for i, s in zip(x.shape, full)]
    del roi
    y = x
    for a in reversed(range(x.ndim)):
        if out_shape[a] == x.shape[a] and full[a] == 1.0:
            continue
        idx, wt, taps = resize_taps(out_shape[a], x.shape[a], full[a], at)
        shape = list(y.shape)
        shape[a] = out_shape[a]
        z = cp.empty(shape, dtype=x.dtype)
        inner = math.prod(shape[a + 1:])
        rt.launch(rt.function("resize", "go_resize_axis_" + rt.suffix(x.dtype)), z.size,
                  (y, z, idx, wt, np.int32(taps), np.int64(z.size), np.int64(y.shape[a]), np.int64(out_shape[a]),
                   np.int64(inner)))
        y = z
    return (y,)
