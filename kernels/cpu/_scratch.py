"""Scratch buffers that outlive a kernel call: im2col columns, padded inputs, Winograd tiles.

These are the biggest temporaries of a CNN (VGG's first im2col matrix is 115 MB), freed as soon
as the GEMM has read them. Allocating them afresh each call costs page faults for every page
(mmap'd memory), measured at tens of ms per call on a loaded machine; reusing one buffer per role
costs nothing after the first run. One buffer per role and thread, grown to the largest request
seen; callers get a view of the size they ask for and must not keep it past their call.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from ._util import remember

_local = threading.local()


def scratch(role: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialized C-contiguous array of `shape`, reusing this thread's buffer for `role`."""
    dtype = np.dtype(dtype)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    nbytes = math.prod(shape) * dtype.itemsize
    buf = pool.get(role)
    if buf is None or buf.nbytes < nbytes:
        buf = pool[role] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


# a padded input up to this size gets a buffer of its own per (role, geometry), its border zeroed
# once: on small layers zeroing the border and indexing its slices cost more than copying x in
SMALL_PADDED_BYTES = 256 * 1024
SMALL_PADDED_KEPT = 64  # geometries kept per thread (dynamic shapes would otherwise grow it)


def padded(x: np.ndarray, begin, end, role: str = "pad") -> np.ndarray:
    """x with zeros around its spatial dims, in a reused buffer (only the border is zeroed)."""
    if not any(begin) and not any(end):
        return x
    if x.nbytes <= SMALL_PADDED_BYTES:
        key = (role, x.shape, x.dtype, tuple(begin), tuple(end))
        small = getattr(_local, "small", None)
        if small is None:
            small = _local.small = {}
        hit = small.get(key)
        if hit is None:
            xp = _with_border(x, begin, end, np.empty)
            hit = remember(small, key, (xp, xp[_interior(begin, x.shape)]), SMALL_PADDED_KEPT)
        np.copyto(hit[1], x)
        return hit[0]
    xp = _with_border(x, begin, end, lambda shape, dtype: scratch(role, shape, dtype))
    xp[_interior(begin, x.shape)] = x
    return xp


def _interior(begin, shape) -> tuple:
    """The index of x's values inside its padded buffer."""
    return (slice(None), slice(None)) + tuple(slice(b, b + i) for b, i in zip(begin, shape[2:]))


def _with_border(x, begin, end, alloc) -> np.ndarray:
    """A buffer of x's padded shape from alloc(shape, dtype) with its border (not its interior) zeroed."""
    sp = x.shape[2:]
    shape = x.shape[:2] + tuple(i + b + e for i, b, e in zip(sp, begin, end))
    xp = alloc(shape, x.dtype)
    full = [slice(None)] * xp.ndim
    for d, (b, e, i) in enumerate(zip(begin, end, sp)):
        if b:
            xp[tuple(full[:2 + d] + [slice(0, b)])] = 0
        if e:
            xp[tuple(full[:2 + d] + [slice(b + i, None)])] = 0
    return xp
