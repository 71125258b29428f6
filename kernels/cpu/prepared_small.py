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
from ._util import ints, np_dtype
from .shape import slice_index

# dtypes whose Cast is a plain astype in the generic kernel (shape.cast_to's last line)
_PLAIN = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                np.uint32, np.uint64, np.float16, np.float32, np.float64)}
_EXACT_MEAN = (np.dtype(np.float32), np.dtype(np.float64))  # np.mean = add.reduce / count for these
_CACHE_LIMIT = 64  # geometries kept per node (dynamic shapes would otherwise grow it without bound)


def _const_ints(consts, i):
    """The constant integer input i as Python ints, None when absent, DYNAMIC when computed at run time."""
    v = consts[i] if len(consts) > i else None
    if v is None or v is DYNAMIC:
        return v
    if not isinstance(v, np.ndarray) or v.dtype.kind not in "iu":
        return DYNAMIC
    return ints(v)


def _remember(cache, key, value):
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


@prepare("Cast", 6)
def prepare_cast(at, consts, generic):
    to = np_dtype(at["to"])
    if to not in _PLAIN:
        return None

    def cast(args, at):
        x = args[0]
        if type(x) is np.ndarray and x.dtype in _PLAIN:
            return (x.astype(to, copy=False),)
        return generic(args, at)
    return cast


def _unsqueeze(axes, generic):
    per_rank = {}

    def unsqueeze(args, at):
        x = args[0]
        if type(x) is not np.ndarray:
            return generic(args, at)
        pos = per_rank.get(x.ndim)
        if pos is None:
            rank = x.ndim + len(axes)
            pos = sorted(a % rank for a in axes)
            if any(not -rank <= a < rank for a in axes) or len(set(pos)) != len(pos):
                return generic(args, at)  # raises the generic kernel's error
            pos = _remember(per_rank, x.ndim, pos)
        shape = list(x.shape)
        for p in pos:
            shape.insert(p, 1)
        return (x.reshape(shape),)
    return unsqueeze


@prepare("Unsqueeze", 1)
def prepare_unsqueeze_v1(at, consts, generic):
    return _unsqueeze(list(at["axes"]), generic) if at.get("axes") else None


@prepare("Unsqueeze", 13)
def prepare_unsqueeze(at, consts, generic):
    axes = _const_ints(consts, 1)
    return None if axes is None or axes is DYNAMIC or not axes else _unsqueeze(axes, generic)


@prepare("Gather", 1)
def prepare_gather(at, consts, generic):
    idx = consts[1]
    if not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu" or consts[0] is not DYNAMIC:
        return None
    idx = idx.astype(np.int64)
    negative = bool((idx < 0).any())
    axis = at["axis"]

    def gather(args, at):
        x = args[0]
        if type(x) is not np.ndarray or x.ndim == 0:
            return generic(args, at)
        ax = axis % x.ndim
        i = np.where(idx < 0, idx + x.shape[ax], idx) if negative else idx
        return (np.take(x, i, axis=ax),)
    return gather


def _reduce(mean):
    def prep(at, consts, generic):
        axes = _const_ints(consts, 1) if len(consts) > 1 else None
        if axes is DYNAMIC:
            return None
        axes = axes or list(at.get("axes") or [])
        if not axes and at.get("noop_with_empty_axes"):
            return None
        keep = bool(at.get("keepdims", 1))
        per_shape = {}

        def reduce(args, at):
            x = args[0]
            if type(x) is not np.ndarray or x.dtype not in _EXACT_MEAN or x.size == 0:
                return generic(args, at)
            geo = per_shape.get(x.shape)
            if geo is None:
                nd = x.ndim
                ax = tuple(a % nd for a in axes) if axes else tuple(range(nd))
                if any(not -nd <= a < nd for a in axes) or len(set(ax)) != len(ax):
                    return generic(args, at)  # raises NumPy's axis error
                count = np.intp(int(np.prod([x.shape[a] for a in ax])))  # np.mean's divisor, as np.mean has it
                geo = _remember(per_shape, x.shape, (ax, count))
            y = np.add.reduce(x, axis=geo[0], keepdims=keep)
            if mean:  # np.mean's own division (an intp divisor, in place, unsafe casting)
                if type(y) is np.ndarray:
                    np.true_divide(y, geo[1], out=y, casting="unsafe")
                else:
                    y = y.dtype.type(y / geo[1])
            return (np.asarray(y),)
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
                out = _remember(per_shape, x.shape, np.broadcast_shapes(x.shape, shape))
            except ValueError:
                return generic(args, at)
        y = np.empty(out, x.dtype)
        np.copyto(y, x)
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
            index = _remember(per_shape, x.shape, slice_index(x.shape, *parts))
            return (y,)
        return (x[index],)
    return slice_


@prepare("MatMul", 1)
def prepare_matmul(at, consts, generic):
    """A stacked input times a constant matrix as one GEMM over all rows: NumPy's matmul would run
    one GEMM per stacked matrix (measured: (8, 128, 256) x (256, 256) 1.08 -> 0.72 ms; below ~1k
    elements the reshapes cost more than they save)."""
    w = consts[1]
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype not in _EXACT_MEAN or consts[0] is not DYNAMIC:
        return None
    k, n = w.shape

    def matmul(args, at):
        a = args[0]
        if type(a) is np.ndarray and a.ndim >= 3 and a.dtype == w.dtype and a.shape[-1] == k \
                and a.size >= 1024 and a.flags.c_contiguous:
            return (np.matmul(a.reshape(-1, k), w).reshape(a.shape[:-1] + (n,)),)
        return generic(args, at)
    return matmul
