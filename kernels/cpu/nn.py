"""Convolution and pooling. Conv is im2col (a strided view, copied once) + one batched GEMM per
call; a 1x1 stride-1 conv is a plain GEMM; ConvTranspose is GEMM + col2im by kernel offsets."""
from __future__ import annotations

import itertools

import numpy as np

from ..registry import DYNAMIC, kernel, prepare
from ._util import strided_view


def conv_pads(in_shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode=False):
    """(begin pads, end pads, output spatial shape) for conv/pool with ONNX's auto_pad rules."""
    n = len(in_shape)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(in_shape, strides)]
        total = [max((o - 1) * s + e - i, 0) for o, s, e, i in zip(out, strides, eff, in_shape)]
        small = [t // 2 for t in total]
        begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
        end = [t - b for t, b in zip(total, begin)]
        return begin, end, out
    if auto_pad == "VALID":
        begin = end = [0] * n
    else:
        pads = pads or [0] * (2 * n)
        begin, end = list(pads[:n]), list(pads[n:])
    out = []
    for i, b, e, k, s in zip(in_shape, begin, end, eff, strides):
        span = i + b + e - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= i + b:  # the last window must start inside the input or left pad
            o -= 1
        out.append(max(o, 0))
    return begin, end, out


def windows(x, kernel_shape, strides, dilations, out_shape):
    """A strided view (N, C, *kernel, *out) over an already padded x."""
    sp_strides = x.strides[2:]
    shape = x.shape[:2] + tuple(kernel_shape) + tuple(out_shape)
    st = x.strides[:2] + tuple(s * d for s, d in zip(sp_strides, dilations)) + \
        tuple(s * t for s, t in zip(sp_strides, strides))
    return strided_view(x, shape, st)


def window_slices(kernel_shape, strides, dilations, out_shape):
    """For each kernel offset: (offset tuple, the slice of the padded input it reads for every output)."""
    for koff in itertools.product(*[range(k) for k in kernel_shape]):
        yield koff, (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(koff, dilations, strides, out_shape))


def im2col(xp, kernel_shape, strides, dilations, out_shape):
    """(N, C, K, *out) columns, filled one kernel offset at a time (each a strided block copy)."""
    kk = int(np.prod(kernel_shape))
    cols = np.empty(xp.shape[:2] + (kk,) + tuple(out_shape), dtype=xp.dtype)
    for i, (_, sl) in enumerate(window_slices(kernel_shape, strides, dilations, out_shape)):
        cols[:, :, i] = xp[sl]
    return cols


def pad_spatial(x, begin, end, value=0):
    if not any(begin) and not any(end):
        return x
    shape = x.shape[:2] + tuple(i + max(b, 0) + max(e, 0) for i, b, e in zip(x.shape[2:], begin, end))
    y = np.full(shape, value, dtype=x.dtype)  # np.full + one copy: np.pad costs twice as much here
    y[(slice(None), slice(None)) + tuple(slice(max(b, 0), max(b, 0) + i) for b, i in zip(begin, x.shape[2:]))] = x
    if any(b < 0 for b in begin) or any(e < 0 for e in end):
        crop = (slice(None), slice(None)) + tuple(
            slice(max(-b, 0), y.shape[2 + i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begin, end)))
        y = y[crop]
    return y


def conv(x, w, b=None, group=1, strides=None, dilations=None, pads=None, auto_pad="NOTSET",
         kernel_shape=None, acc_dtype=None):
    n, c = x.shape[:2]
    m = w.shape[0]
    nsp = x.ndim - 2
    kernel_shape = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    begin, end, out = conv_pads(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad)
    # half-precision inputs accumulate in float32 (NumPy has no fast half GEMM anyway)
    dtype = acc_dtype or (np.dtype(np.float32) if x.dtype.itemsize < 4 and x.dtype.kind not in "iub" else x.dtype)
    if group == 1 and all(k == 1 for k in kernel_shape) and all(s == 1 for s in strides) \
            and not any(begin) and not any(end):
        y = np.matmul(w.reshape(m, c).astype(dtype, copy=False), x.reshape(n, c, -1).astype(dtype, copy=False))
    elif group == c and m == c and w.shape[1] == 1:
        # depthwise: a multiply-add per kernel offset beats tiny per-channel GEMMs
        xp = pad_spatial(x, begin, end).astype(dtype, copy=False)
        wk = w.reshape(c, -1).astype(dtype, copy=False)
        y = None
        for i, (_, sl) in enumerate(window_slices(kernel_shape, strides, dilations, out)):
            term = xp[sl] * wk[:, i].reshape((1, c) + (1,) * nsp)
            y = term if y is None else np.add(y, term, out=y)
        y = y.reshape(n, m, -1)
    else:
        xp = pad_spatial(x, begin, end).astype(dtype, copy=False)
        cols = im2col(xp, kernel_shape, strides, dilations, out)  # (N, C, K, *out)
        kk, pp = int(np.prod(kernel_shape)), int(np.prod(out))
        cg, mg = c // group, m // group
        cols = cols.reshape(n, group, cg * kk, pp)
        wg = w.reshape(group, mg, cg * kk).astype(dtype, copy=False)
        y = np.matmul(wg[None], cols).reshape(n, m, pp)
    if b is not None:
        y = y + b.reshape(1, m, 1).astype(dtype, copy=False)
    return y.reshape((n, m) + tuple(out))


@kernel("Conv", 1)
def conv_kernel(ins, at):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    y = conv(x, w, b, at["group"], at["strides"], at["dilations"], at["pads"], at["auto_pad"],
             at["kernel_shape"])
    return (y.astype(x.dtype, copy=False),)


@kernel("ConvInteger", 10)
def conv_integer(ins, at):
    x, w = ins[0].astype(np.int32), ins[1].astype(np.int32)
    if len(ins) > 2 and ins[2] is not None:
        x = x - ins[2].astype(np.int32)
    if len(ins) > 3 and ins[3] is not None:
        zw = ins[3].astype(np.int32)
        x_w = zw.reshape((-1,) + (1,) * (w.ndim - 1)) if zw.size > 1 else zw
        w = w - x_w
    # integer GEMM through float64 is exact while |sums| < 2**53
    y = conv(x.astype(np.float64), w.astype(np.float64), None, at["group"], at["strides"], at["dilations"],
             at["pads"], at["auto_pad"], at["kernel_shape"])
    return (np.rint(y).astype(np.int32),)


@kernel("ConvTranspose", 1)
def conv_transpose(ins, at):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n, c = x.shape[:2]
    group = at["group"]
    nsp = x.ndim - 2
    kshape = list(at["kernel_shape"] or w.shape[2:])
    strides = list(at["strides"] or [1] * nsp)
    dil = list(at["dilations"] or [1] * nsp)
    opad = list(at["output_padding"] or [0] * nsp)
    in_sp = x.shape[2:]
    full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in zip(strides, in_sp, opad, kshape, dil)]
    out_shape = at.get("output_shape")
    auto_pad = at["auto_pad"]
    if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-nsp:] if out_shape else [i * s for i, s in zip(in_sp, strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - bg for t, bg in zip(total, begin)]
    elif auto_pad == "VALID":
        begin = end = [0] * nsp
    else:
        pads = at["pads"] or [0] * (2 * nsp)
        begin, end = pads[:nsp], pads[nsp:]
    cg = c // group
    mg = w.shape[1]
    kk = int(np.prod(kshape))
    xg = x.reshape(n, group, cg, -1)
    wg = w.reshape(group, cg, mg * kk).transpose(0, 2, 1)
    cols = np.matmul(wg[None], xg).reshape((n, group * mg) + tuple(kshape) + tuple(in_sp))
    y = np.zeros((n, group * mg) + tuple(full), dtype=x.dtype)
    for koff in itertools.product(*[range(k) for k in kshape]):
        dst = (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + s * (i - 1) + 1, s) for o, d, s, i in zip(koff, dil, strides, in_sp))
        y[dst] += cols[(slice(None), slice(None)) + koff]
    y = pad_spatial(y, [-v for v in begin], [-v for v in end])  # negative pads extend the output
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return (np.ascontiguousarray(y).astype(x.dtype, copy=False),)


# --- pooling ------------------------------------------------------------------------------------
def pool_geometry(x, at):
    nsp = x.ndim - 2
    kshape = list(at["kernel_shape"])
    strides = list(at.get("strides") or [1] * nsp)
    dil = list(at.get("dilations") or [1] * nsp)
    begin, end, out = conv_pads(x.shape[2:], kshape, strides, dil, at.get("pads"), at.get("auto_pad", "NOTSET"),
                                bool(at.get("ceil_mode")))
    # extra end padding so that every (ceil-mode) window lies inside the padded array
    extra = [max((o - 1) * s + (k - 1) * d + 1 - (i + b + e), 0)
             for o, s, k, d, i, b, e in zip(out, strides, kshape, dil, x.shape[2:], begin, end)]
    return kshape, strides, dil, begin, end, extra, out


def _along(y, axis, sl):
    idx = [slice(None)] * y.ndim
    idx[axis] = sl
    return y[tuple(idx)]


def pool_window(xp, kshape, strides, dil, out, f):
    """Reduce every window with the binary ufunc f (max or add: both reduce a box one axis at a
    time), axis by axis: k1 + k2 strided passes instead of k1 * k2."""
    y = xp
    for d, (k, s, dl, o) in enumerate(zip(kshape, strides, dil, out)):
        taps = [_along(y, 2 + d, slice(off * dl, off * dl + s * (o - 1) + 1, s)) for off in range(k)]
        acc = taps[0] if k == 1 else f(taps[0], taps[1])
        for tap in taps[2:]:
            f(acc, tap, out=acc)
        y = acc
    return y.copy() if all(k == 1 for k in kshape) else y  # a 1x1 window: never a view of the input


@kernel("MaxPool", 1)
def max_pool(ins, at):
    x = ins[0]
    nsp = x.ndim - 2
    kshape, strides, dil, begin, end, extra, out = pool_geometry(x, at)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = pad_spatial(x, begin, [e + x_ for e, x_ in zip(end, extra)], low)
    y = pool_window(xp, kshape, strides, dil, out, np.maximum)
    if at["__n_outputs__"] < 2:
        return (y,)
    v = windows(np.ascontiguousarray(xp), kshape, strides, dil, out)
    # indices: argmax over the window, mapped back to a flat index into the unpadded input
    kk = int(np.prod(kshape))
    flat = v.reshape(x.shape[:2] + (kk,) + tuple(out))
    arg = np.argmax(flat, axis=2)
    koff = np.unravel_index(arg, kshape)
    grids = np.indices(out, sparse=True)
    coords = [g * s + k * d - bg for g, s, k, d, bg in zip(grids, strides, koff, dil, begin)]
    sp = x.shape[2:]
    if at.get("storage_order"):
        idx = np.zeros_like(arg)
        mult = 1
        for i in range(nsp):
            idx = idx + coords[i] * mult
            mult *= sp[i]
    else:
        idx = np.zeros_like(arg)
        for i in range(nsp):
            idx = idx * sp[i] + coords[i]
    nc = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * nsp))
    idx = idx + nc * int(np.prod(sp))
    return (y, idx.astype(np.int64))


def _avg_or_lp(x, at, p=None):
    nsp = x.ndim - 2
    kshape, strides, dil, begin, end, extra, out = pool_geometry(x, at)
    xx = np.abs(x) ** p if p is not None else x
    xp = pad_spatial(xx, begin, [e + x_ for e, x_ in zip(end, extra)], 0)
    s = pool_window(xp, kshape, strides, dil, out, np.add)
    if p is not None:
        return s ** (1.0 / p)
    ones = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    if at.get("count_include_pad"):
        mask = pad_spatial(ones, begin, end, 1)
        mask = pad_spatial(mask, [0] * nsp, extra, 0)
    else:
        mask = pad_spatial(ones, begin, [e + x_ for e, x_ in zip(end, extra)], 0)
    counts = pool_window(mask, kshape, strides, dil, out, np.add)
    return s / counts


@kernel("AveragePool", 1)
def average_pool(ins, at):
    x = ins[0]
    return (_avg_or_lp(x, at).astype(x.dtype, copy=False),)


@kernel("LpPool", 1)
def lp_pool(ins, at):
    x = ins[0]
    return (_avg_or_lp(x, at, p=at.get("p", 2)).astype(x.dtype, copy=False),)


@kernel("GlobalAveragePool")
def global_average_pool(ins, at):
    x = ins[0]
    return (np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype, copy=False),)


@kernel("GlobalMaxPool")
def global_max_pool(ins, at):
    x = ins[0]
    return (np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True),)


@kernel("GlobalLpPool", 2)
def global_lp_pool(ins, at):
    x, p = ins[0], at.get("p", 2)
    y = np.sum(np.abs(x) ** p, axis=tuple(range(2, x.ndim)), keepdims=True) ** (1.0 / p)
    return (y.astype(x.dtype, copy=False),)


@kernel("MaxUnpool", 9)
def max_unpool(ins, at):
    x, idx = ins[0], ins[1]
    nsp = x.ndim - 2
    if len(ins) > 2 and ins[2] is not None:
        out_shape = [int(v) for v in ins[2]]
    else:
        strides = at.get("strides") or [1] * nsp
        pads = at.get("pads") or [0] * (2 * nsp)
        sp = [(i - 1) * s + k - pads[j] - pads[j + nsp]
              for j, (i, s, k) in enumerate(zip(x.shape[2:], strides, at["kernel_shape"]))]
        out_shape = list(x.shape[:2]) + sp
    strides = at.get("strides") or [1] * nsp
    pads = at.get("pads") or [0] * (2 * nsp)
    natural = list(x.shape[:2]) + [(i - 1) * s + k - pads[j] - pads[j + nsp]
                                   for j, (i, s, k) in enumerate(zip(x.shape[2:], strides, at["kernel_shape"]))]
    # indices address the natural output shape; a given output_shape keeps those coordinates
    coords = np.unravel_index(idx.reshape(-1), natural)
    y = np.zeros(out_shape, dtype=x.dtype)
    y[coords] = x.reshape(-1)
    return (y,)


# ------------------------------------------------------------ ConvTranspose whose kernel equals its stride (the 2x2/stride-2 "deconv" upsampling of U-Nets and
# FPN heads), specialized at Session build (registry.prepare).
#
# The windows of such a ConvTranspose do not overlap: output pixel (i*s + a, j*s + b) is the GEMM
# result for input pixel (i, j) and kernel offset (a, b), nothing else. So the generic kernel's
# zeroed output, read-modify-write per offset and separate bias pass become one GEMM with the
# weights laid out once ((M*kh*kw, C)) and one write per offset that also adds the bias (measured,
# float32, in PP-OCR's text detector: 24->24 channels at 80x80 1.35 -> 0.90 ms, 24->1 at 160x160
# 0.33 -> 0.21 ms).

_FLOAT = (np.dtype(np.float32), np.dtype(np.float64))


@prepare("ConvTranspose", 1)
def prepare_conv_transpose(at, consts, generic):
    w = consts[1]
    b = consts[2] if len(consts) > 2 else None
    if not isinstance(w, np.ndarray) or w.dtype not in _FLOAT or w.ndim != 4 or b is DYNAMIC \
            or (b is not None and (not isinstance(b, np.ndarray) or b.shape != (w.shape[1],))):
        return None
    kernel = list(at.get("kernel_shape") or w.shape[2:])
    if at.get("group", 1) != 1 or kernel != list(w.shape[2:]) or list(at.get("strides") or [1, 1]) != kernel \
            or any(d != 1 for d in at.get("dilations") or []) or any(at.get("pads") or []) \
            or any(at.get("output_padding") or []) or at.get("output_shape") \
            or at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    c, m, kh, kw = w.shape
    w_mat = np.ascontiguousarray(w.reshape(c, m * kh * kw).T)  # (M*kh*kw, C)
    bias = None if b is None else b.astype(w.dtype).reshape(1, m, 1, 1)

    def run(args, attrs):
        x = args[0]
        if type(x) is not np.ndarray or x.dtype != w.dtype or x.ndim != 4 or x.shape[1] != c:
            return generic(args, attrs)
        n, _, h, wd = x.shape
        cols = np.matmul(w_mat, x.reshape(n, c, h * wd)).reshape(n, m, kh, kw, h, wd)
        y = np.empty((n, m, h, kh, wd, kw), w.dtype)
        for a in range(kh):
            for bb in range(kw):
                if bias is None:
                    np.copyto(y[:, :, :, a, :, bb], cols[:, :, a, bb])
                else:
                    np.add(cols[:, :, a, bb], bias, out=y[:, :, :, a, :, bb])
        return (y.reshape(n, m, h * kh, wd * kw),)
    return run
