"""Build-time specializations of the small ops that dominate small models' run time (and of
MatMul by a constant matrix).

On a model whose tensors hold a few hundred numbers, a kernel's cost is its Python: resolving a
dtype code, converting a constant axes/indices tensor to Python ints, np.mean's and
np.expand_dims' argument handling. These hooks (registry.prepare) do that once, when the node's
axes/indices/shape/starts inputs are constants, and fall back to the generic kernel for anything
else (a non-ndarray input, dtypes with special cast rules, a shape the cached geometry does not
cover). Results are the generic kernels' (same NumPy operations, same order).
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, prepare
from ._util import ROW_SUM_DTYPES, ints, np_dtype, remember, row_sums
from .shape import slice_index

# dtypes whose Cast is a plain astype in the generic kernel (shape.cast_to's last line)
_PLAIN = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                np.uint32, np.uint64, np.float16, np.float32, np.float64)}
_EXACT_MEAN = (np.dtype(np.float32), np.dtype(np.float64))  # np.mean = add.reduce / count for these


def _const_ints(consts, i):
    """The constant integer input i as Python ints, None when absent, DYNAMIC when computed at run time."""
    v = consts[i] if len(consts) > i else None
    if v is None or v is DYNAMIC:
        return v
    if not isinstance(v, np.ndarray) or v.dtype.kind not in "iu":
        return DYNAMIC
    return ints(v)


@prepare("Cast", 6)
def prepare_cast(at, consts, generic):
    to = np_dtype(at["to"])
    if to not in _PLAIN:
        return None

    def cast(args, at):
        x = args[0]
        if type(x) is np.ndarray:
            if x.dtype is to:  # the generic kernel returns the input itself
                return (x,)
            if x.dtype in _PLAIN:
                return (x.astype(to, copy=False),)
        return generic(args, at)
    return cast


def _reshaping(output_shape, generic):
    """A kernel that is a reshape of its input to output_shape(input shape), found once per input
    shape (the generic kernels normalize the axes and call NumPy's function every time);
    output_shape returns None for axes the shape does not allow: the generic kernel raises."""
    per_shape = {}  # input shape -> output shape

    def reshaped(args, at):
        x = args[0]
        if type(x) is not np.ndarray:
            return generic(args, at)
        shape = per_shape.get(x.shape)
        if shape is None:
            shape = output_shape(x.shape)
            if shape is None:
                return generic(args, at)
            remember(per_shape, x.shape, shape)
        return (x.reshape(shape),)
    return reshaped


def _unsqueeze(axes, generic):
    def output_shape(in_shape):
        rank = len(in_shape) + len(axes)
        pos = sorted(a % rank for a in axes)
        if any(not -rank <= a < rank for a in axes) or len(set(pos)) != len(pos):
            return None
        shape = list(in_shape)
        for p in pos:
            shape.insert(p, 1)
        return tuple(shape)
    return _reshaping(output_shape, generic)


def _squeeze(axes, generic):
    def output_shape(in_shape):  # None for an axis out of range, repeated or not of size 1
        rank = len(in_shape)
        gone = {a % rank for a in axes if -rank <= a < rank}
        if len(gone) != len(axes) or any(in_shape[a] != 1 for a in gone):
            return None
        return tuple(d for i, d in enumerate(in_shape) if i not in gone)
    return _reshaping(output_shape, generic)


def _constant_axes_hooks(op, build):
    """Prepare hooks for `op` (Unsqueeze, Squeeze) when its axes are known at build: the axes
    attribute before opset 13, the constant axes input from 13 on. No axes (Squeeze of every
    size-1 dim), empty or computed at run time: the generic kernel."""
    @prepare(op, 1)
    def before_13(at, consts, generic):
        return build(list(at["axes"]), generic) if at.get("axes") else None

    @prepare(op, 13)
    def from_13(at, consts, generic):
        axes = _const_ints(consts, 1)
        return None if axes is None or axes is DYNAMIC or not axes else build(axes, generic)


_constant_axes_hooks("Unsqueeze", _unsqueeze)
_constant_axes_hooks("Squeeze", _squeeze)


@prepare("Gather", 1)
def prepare_gather(at, consts, generic):
    idx = consts[1]
    if not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu" or consts[0] is not DYNAMIC:
        return None
    axis = at["axis"]

    def gather(args, at):
        x = args[0]
        if type(x) is not np.ndarray or x.ndim == 0:
            return generic(args, at)
        return (x.take(idx, axis=axis % x.ndim),)  # negative indices count from the end (gather.gather)
    return gather


def _reduce(mean):
    """ReduceSum/ReduceMean over constant axes: np.add.reduce with the axes normalized once per
    input shape (an int when there is one: NumPy parses a tuple of axes at ~1 us a call). The mean
    divides by the count as a 0-d array of x's dtype: np.mean divides in float64 by an intp and
    casts back, which rounds the same (a float64 quotient of two float32 values rounds correctly
    to float32; counts below 2**24 are exact in float32), hence the limit on the count."""
    def prep(at, consts, generic):
        axes = _const_ints(consts, 1) if len(consts) > 1 else None
        if axes is DYNAMIC:
            return None
        axes = axes or list(at.get("axes") or [])
        if not axes and at.get("noop_with_empty_axes"):
            return None
        keep = bool(at.get("keepdims", 1))
        per_shape = {}
        add_reduce = np.add.reduce

        def geometry(x):
            nd = x.ndim
            ax = tuple(a % nd for a in axes) if axes else tuple(range(nd))
            if any(not -nd <= a < nd for a in axes) or len(set(ax)) != len(ax):
                return None
            count = int(np.prod([x.shape[a] for a in ax]))
            if mean and count >= 1 << 24:
                return None
            last = ax == (nd - 1,) and x.dtype in ROW_SUM_DTYPES  # contiguous rows: a GEMV (_util.row_sums)
            kept = x.shape[:-1] + (1,) if keep else x.shape[:-1]
            return remember(per_shape, (x.shape, x.dtype), (ax[0] if len(ax) == 1 else ax,
                                                            np.array(count, x.dtype), kept if last else None))

        def reduce(args, at):
            x = args[0]
            if type(x) is not np.ndarray or x.dtype not in _EXACT_MEAN:
                return generic(args, at)
            geo = per_shape.get((x.shape, x.dtype))
            if geo is None:
                geo = geometry(x) if x.size else None
                if geo is None:
                    return generic(args, at)  # an empty input; NumPy's axis error; a huge mean
            if geo[2] is not None and x.flags.c_contiguous:
                y = row_sums(x).reshape(geo[2])
            else:
                y = add_reduce(x, geo[0], None, None, keep)
            if type(y) is not np.ndarray:  # every axis reduced without keepdims: a NumPy scalar
                y = np.asarray(y)
            if mean:
                np.divide(y, geo[1], out=y)
            return (y,)
        return reduce
    return prep


prepare("ReduceSum", 1)(_reduce(mean=False))
prepare("ReduceMean", 1)(_reduce(mean=True))


@prepare("Expand", 8)
def prepare_expand(at, consts, generic):
    shape = _const_ints(consts, 1)
    if shape is None or shape is DYNAMIC:
        return None
    shape = tuple(shape)
    per_shape = {}

    def expand(args, at):
        x = args[0]
        if type(x) is not np.ndarray:
            return generic(args, at)
        out = per_shape.get(x.shape)
        if out is None:
            try:
                out = remember(per_shape, x.shape, np.broadcast_shapes(x.shape, shape))
            except ValueError:
                return generic(args, at)
        y = np.empty(out, x.dtype)
        y[...] = x  # np.copyto's semantics (same-kind casting is moot: one dtype) without its wrapper
        return (y,)
    return expand


@prepare("Slice", 10)
def prepare_slice(at, consts, generic):
    parts = [_const_ints(consts, i) for i in range(1, 5)]
    if any(p is DYNAMIC for p in parts) or parts[0] is None or parts[1] is None:
        return None
    per_shape = {}

    def slice_(args, at):
        x = args[0]
        if type(x) is not np.ndarray:
            return generic(args, at)
        index = per_shape.get(x.shape)
        if index is None:
            y = generic(args, at)[0]  # the generic kernel's clamping rules; its index is rebuilt here
            index = remember(per_shape, x.shape, slice_index(x.shape, *parts))
            return (y,)
        return (x[index],)
    return slice_


@prepare("MatMul", 1)
def prepare_matmul(at, consts, generic):
    """A stacked input times a constant matrix as one GEMM over all rows (ndarray.dot, see
    prepared.prepare_gemm): NumPy's matmul would run one GEMM per stacked matrix (measured:
    (8, 128, 256) x (256, 256) 1.08 -> 0.72 ms, (2, 7, 64) x (64, 192) 11.7 -> 7.7 us; never slower,
    down to (1, 4, 8) x (8, 8): 1.40 vs 1.37 us)."""
    w = consts[1]
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype not in _EXACT_MEAN or consts[0] is not DYNAMIC:
        return None
    k, n = w.shape
    dt = w.dtype

    def matmul(args, at):
        a = args[0]
        if type(a) is not np.ndarray or a.dtype is not dt and a.dtype != dt:
            return generic(args, at)
        if a.ndim >= 3 and a.shape[-1] == k and a.flags.c_contiguous:
            return (a.reshape(-1, k).dot(w).reshape(a.shape[:-1] + (n,)),)
        if a.ndim == 2:  # ndarray.dot: np.matmul's BLAS call for 2-D operands without the ufunc
            return (a.dot(w),)  # machinery (~0.6 us; bit-identical, see prepared.prepare_gemm)
        return generic(args, at)
    return matmul
