"""GPU data-movement, shape and reduction ops: views where CuPy gives them for free (Reshape,
Squeeze, Slice), the custom transpose / gather / scatter / quantize kernels, CuPy for the rest.

Shape-like inputs (Reshape's shape, Slice's starts, axes, pads, repeats) arrive as host arrays when
the plan could resolve them without the device (the usual case: constants or Shape arithmetic).
"""
from __future__ import annotations

import math

import numpy as np

import cupy as cp

from graphopt.errors import Unsupported

from ..registry import kernel
from . import cupy_runtime as rt

H = rt.host  # shape-like parameters


def _ints(x) -> list[int]:
    return [int(v) for v in H(x).reshape(-1)]


def _axes(axes, ndim) -> list[int]:
    return [a + ndim if a < 0 else a for a in axes]


@kernel("Reshape", 5, device="gpu")
def reshape(ins, at):
    x = rt.device(ins[0])
    shape = _ints(ins[1])
    if not at.get("allowzero"):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return (rt.c_contig(x).reshape(shape),)


@kernel("Flatten", 1, device="gpu")
def flatten(ins, at):
    x = rt.device(ins[0])
    axis = at.get("axis", 1) % (x.ndim + 1) if x.ndim else 0
    return (rt.c_contig(x).reshape(math.prod(x.shape[:axis]), -1),)


@kernel("Squeeze", 1, device="gpu")
@kernel("Squeeze", 13, device="gpu")
def squeeze(ins, at):  # axes: an input from opset 13, an attribute before
    x = rt.device(ins[0])
    given = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else at.get("axes")
    axes = _axes(list(given), x.ndim) if given else [i for i, d in enumerate(x.shape) if d == 1]
    return (x.reshape([d for i, d in enumerate(x.shape) if i not in axes]),)


@kernel("Unsqueeze", 1, device="gpu")
@kernel("Unsqueeze", 13, device="gpu")
def unsqueeze(ins, at):
    x = rt.device(ins[0])
    given = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(at.get("axes") or [])
    axes = sorted(_axes(given, x.ndim + len(given)))
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return (x.reshape(shape),)


@kernel("Transpose", 1, device="gpu")
def transpose(ins, at):
    x = rt.c_contig(rt.device(ins[0]))
    perm = list(at.get("perm") or reversed(range(x.ndim)))
    return (permute(x, perm),)


_PERM: dict = {}


def permute(x, perm):
    """Merge axes that stay adjacent, then: a copy-free case, the tiled (B, R, C) -> (B, C, R) kernel,
    or the general permutation kernel."""
    shape = list(x.shape)
    groups = []  # runs of input axes that stay together, in output order
    for a in perm:
        if groups and groups[-1][-1] + 1 == a and shape[a] != 0:
            groups[-1].append(a)
        else:
            groups.append([a])
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])  # group index in input order
    dims_in = [math.prod(shape[a] for a in groups[g]) for g in order]
    gperm = [order.index(g) for g in range(len(groups))]
    out_shape = [shape[a] for a in perm]
    y = cp.empty(out_shape, dtype=x.dtype)
    if x.size == 0 or gperm == sorted(gperm):
        return x.reshape(out_shape).copy()
    w = rt.width(x.dtype)
    if len(gperm) in (2, 3) and gperm[-2:] == [len(gperm) - 1, len(gperm) - 2] and \
            (len(gperm) == 2 or (gperm[0] == 0 and dims_in[0] <= 65535)):  # batch rides grid.z
        b = dims_in[0] if len(gperm) == 3 else 1
        r, c = dims_in[-2], dims_in[-1]
        fn = rt.function("transpose", "go_transpose2d_" + w)
        fn(((c + 31) // 32, (r + 31) // 32, b), (32, 8), (x, y, np.int64(r), np.int64(c)))
        return y
    params = _PERM.get((tuple(dims_in), tuple(gperm)))
    if params is None:  # output dims, then the input stride of each output axis; once per layout
        in_strides = [math.prod(dims_in[i + 1:]) for i in range(len(dims_in))]
        params = _PERM[(tuple(dims_in), tuple(gperm))] = cp.asarray(
            np.array([dims_in[g] for g in gperm] + [in_strides[g] for g in gperm], np.int64))
    rt.launch(rt.function("transpose", "go_permute_" + w), y.size,
              (x, y, np.int64(y.size), np.int32(len(gperm)), params))
    return y


@kernel("Concat", 4, device="gpu")
def concat(ins, at):
    arrs = [rt.device(x) for x in ins if x is not None]
    return (cp.concatenate(arrs, axis=at["axis"]),)


@kernel("Split", 2, device="gpu")
@kernel("Split", 13, device="gpu")
def split(ins, at):  # split sizes: an input from opset 13, an attribute before
    x = rt.device(ins[0])
    axis = at.get("axis", 0) % x.ndim
    n = at["__n_outputs__"]
    if len(ins) > 1 and ins[1] is not None or at.get("split"):
        sizes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(at["split"])
    else:
        parts = at.get("num_outputs") or n
        step = -(-x.shape[axis] // parts)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(n)]
    bounds = np.cumsum([0] + sizes)
    sl = [slice(None)] * x.ndim
    outs = []
    for i in range(n):
        sl[axis] = slice(int(bounds[i]), int(bounds[i + 1]))
        outs.append(cp.ascontiguousarray(x[tuple(sl)]))
    return outs


@kernel("Slice", 10, device="gpu")
def slice_(ins, at):
    x = rt.device(ins[0])
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _axes(_ints(ins[3]), x.ndim) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        n = x.shape[a]
        lo, hi, step = slice(max(min(s, 2**62), -2**62), max(min(e, 2**62), -2**62), st).indices(n)
        sl[a] = slice(lo, hi if hi >= 0 else None, step)  # indices() gives -1 for "before index 0"
    return (cp.ascontiguousarray(x[tuple(sl)]),)


@kernel("Expand", 8, device="gpu")
def expand(ins, at):
    x = rt.device(ins[0])
    shape = tuple(np.broadcast_shapes(x.shape, tuple(_ints(ins[1]))))
    return (cp.ascontiguousarray(cp.broadcast_to(x, shape)),)


@kernel("Tile", 6, device="gpu")
def tile(ins, at):
    return (cp.tile(rt.device(ins[0]), _ints(ins[1])),)


@kernel("Pad", 11, device="gpu")
def pad(ins, at):
    x = rt.device(ins[0])
    pads = _ints(ins[1])
    value = H(ins[2]).reshape(-1)[0] if len(ins) > 2 and ins[2] is not None and H(ins[2]).size else 0
    axes = _axes(_ints(ins[3]), x.ndim) if len(ins) > 3 and ins[3] is not None else list(range(x.ndim))
    if min(pads) < 0:
        raise Unsupported("Pad on the GPU: negative pads are not supported")
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + len(axes)])
    mode = at.get("mode") or "constant"
    if mode == "constant":
        return (cp.pad(x, width, mode="constant", constant_values=value),)
    return (cp.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]),)


@kernel("Gather", 1, device="gpu")
def gather(ins, at):
    x = rt.c_contig(rt.device(ins[0]))
    ind = rt.device(ins[1])
    axis = at.get("axis", 0) % x.ndim
    outer, n, inner = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])
    flat = rt.c_contig(ind.astype(np.int64, copy=False).reshape(-1))
    y = cp.empty(x.shape[:axis] + ind.shape + x.shape[axis + 1:], dtype=x.dtype)
    bad = cp.zeros(1, np.int32)
    rt.launch(rt.function("gather", "go_gather_" + rt.width(x.dtype)), y.size,
              (x, flat, y, np.int64(y.size), np.int64(n), np.int64(flat.size), np.int64(inner), bad))
    del outer  # y's leading dims carry it
    return (y,)


@kernel("GatherElements", 11, device="gpu")
def gather_elements(ins, at):
    x, ind = rt.device(ins[0]), rt.device(ins[1]).astype(np.int64)
    axis = at.get("axis", 0) % x.ndim
    ind = cp.where(ind < 0, ind + x.shape[axis], ind)
    return (cp.take_along_axis(x, ind, axis=axis),)


@kernel("ScatterND", 11, device="gpu")
def scatter_nd(ins, at):
    data, ind, upd = rt.c_contig(rt.device(ins[0])), rt.device(ins[1]), rt.c_contig(rt.device(ins[2]))
    if (at.get("reduction") or "none") != "none":
        raise Unsupported("ScatterND on the GPU: only reduction='none' is supported")
    k = ind.shape[-1]
    y = data.copy()
    rows = math.prod(ind.shape[:-1])
    slice_ = math.prod(data.shape[k:])
    dims = cp.asarray(np.array(data.shape[:k], np.int64))
    strides = cp.asarray(np.array([math.prod(data.shape[a + 1:]) for a in range(k)], np.int64))
    bad = cp.zeros(1, np.int32)
    rt.launch(rt.function("scatter", "go_scatter_nd_" + rt.width(data.dtype)), rows * slice_,
              (y, rt.c_contig(ind.astype(np.int64)), upd, dims, strides, np.int32(k), np.int64(rows),
               np.int64(slice_), bad))
    return (y,)


@kernel("ScatterElements", 11, device="gpu")
def scatter_elements(ins, at):
    data, ind, upd = rt.c_contig(rt.device(ins[0])), rt.device(ins[1]), rt.c_contig(rt.device(ins[2]))
    red = at.get("reduction") or "none"
    if red not in ("none", "add") or (red == "add" and data.dtype != np.float32):
        raise Unsupported(f"ScatterElements on the GPU: reduction {red!r} on {data.dtype} is not supported")
    axis = at.get("axis", 0) % data.ndim
    y = data.copy()
    udims = cp.asarray(np.array(upd.shape, np.int64))
    ystrides = cp.asarray(np.array([math.prod(data.shape[a + 1:]) for a in range(data.ndim)], np.int64))
    name = "go_scatter_elements_f32"  # with reduction none it only moves 32-bit words
    if red == "none" and data.dtype.itemsize != 4:
        raise Unsupported(f"ScatterElements on the GPU: element type {data.dtype}")
    bad = cp.zeros(1, np.int32)
    rt.launch(rt.function("scatter", name), upd.size,
              (y, rt.c_contig(ind.astype(np.int64)), upd, udims, ystrides, np.int32(data.ndim), np.int32(axis),
               np.int64(data.shape[axis]), np.int64(upd.size), np.int32(1 if red == "add" else 0), bad))
    return (y,)


def _reduce_axes(ins, at, ndim):
    if len(ins) > 1 and ins[1] is not None:
        axes = _ints(ins[1])
    else:
        axes = at.get("axes") or []
    if not axes:
        return None if at.get("noop_with_empty_axes") else tuple(range(ndim))
    return tuple(_axes(axes, ndim))


_REDUCE = {"ReduceSum": cp.sum, "ReduceMean": cp.mean, "ReduceMax": cp.max, "ReduceMin": cp.min,
           "ReduceProd": cp.prod, "ReduceL2": lambda x, axis, keepdims: cp.sqrt(cp.sum(x * x, axis, keepdims=keepdims)),
           "ReduceSumSquare": lambda x, axis, keepdims: cp.sum(x * x, axis, keepdims=keepdims)}


def _reducer(f):
    def run(ins, at):
        x = rt.device(ins[0])
        axes = _reduce_axes(ins, at, x.ndim)
        if axes is None:
            return (x,)
        return (f(x, axis=axes, keepdims=bool(at.get("keepdims", 1))).astype(x.dtype, copy=False),)
    return run


for _op, _f in _REDUCE.items():
    kernel(_op, 1, device="gpu")(_reducer(_f))


@kernel("ArgMax", 1, device="gpu")
def argmax(ins, at):
    x = rt.device(ins[0])
    axis = at.get("axis", 0) % x.ndim
    xs = cp.flip(x, axis) if at.get("select_last_index") else x
    y = cp.argmax(xs, axis=axis)
    if at.get("select_last_index"):
        y = x.shape[axis] - 1 - y
    return (cp.expand_dims(y, axis).astype(np.int64) if at.get("keepdims", 1) else y.astype(np.int64),)


@kernel("QuantizeLinear", 10, device="gpu")
def quantize(ins, at):
    x = rt.c_contig(rt.device(ins[0]))
    scale = rt.c_contig(rt.device(ins[1]).astype(np.float32).reshape(-1))
    zp = rt.device(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    qt = zp.dtype if zp is not None else np.dtype(np.uint8)
    if at.get("block_size") or qt not in (np.uint8, np.int8) or x.dtype not in (np.float32, np.float16):
        raise Unsupported(f"QuantizeLinear on the GPU: {x.dtype} -> {qt} (block size {at.get('block_size')})")
    channels, inner = _channels(x, scale, at)
    y = cp.empty(x.shape, dtype=qt)
    lo, hi = (0.0, 255.0) if qt == np.uint8 else (-128.0, 127.0)
    q = "u8" if qt == np.uint8 else "i8"
    rt.launch(rt.function("quant", f"go_quantize_{rt.suffix(x.dtype)}_{q}"), y.size,
              (x, scale, rt.c_contig(zp.reshape(-1)) if zp is not None else np.uint64(0), y, np.int64(y.size),
               np.int64(channels), np.int64(inner), np.float32(lo), np.float32(hi)))
    return (y,)


@kernel("DequantizeLinear", 10, device="gpu")
def dequantize(ins, at):
    x = rt.c_contig(rt.device(ins[0]))
    scale_in = rt.device(ins[1])
    scale = rt.c_contig(scale_in.astype(np.float32).reshape(-1))
    zp = rt.device(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    out_t = scale_in.dtype
    if at.get("block_size") or x.dtype not in (np.uint8, np.int8) or out_t not in (np.float32, np.float16):
        raise Unsupported(f"DequantizeLinear on the GPU: {x.dtype} -> {out_t}")
    channels, inner = _channels(x, scale, at)
    y = cp.empty(x.shape, dtype=out_t)
    q = "u8" if x.dtype == np.uint8 else "i8"
    rt.launch(rt.function("quant", f"go_dequantize_{q}_{rt.suffix(out_t)}"), y.size,
              (x, scale, rt.c_contig(zp.reshape(-1)) if zp is not None else np.uint64(0), y, np.int64(y.size),
               np.int64(channels), np.int64(inner)))
    return (y,)


def _channels(x, scale, at):
    """(channels, inner) of a per-axis parameter (1, 1 for per-tensor)."""
    if scale.size == 1:
        return 1, 1
    axis = at.get("axis", 1) % x.ndim
    return x.shape[axis], math.prod(x.shape[axis + 1:])
