"""Build-time specialization of Split with constant sizes (or none: equal parts).

The generic kernel converts the sizes tensor to Python ints, takes a cumulative sum and calls
np.split (which swaps axes twice per part): ~25 us for three parts of a (2, 5, 96) tensor, more
than the GEMM that produced it. `compile --target graphopt` packs a transformer's Q/K/V projections
into one MatMul + Add + Split, so this cost would eat what the packing saves. Here the generic
kernel runs once per input shape; the slices of its parts are remembered and later calls index x
directly (~1 us). The parts are the same views of x that np.split returns.
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, prepare
from ._util import remember



@prepare("Split", 1)
def prepare_split(at, consts, generic):
    if len(consts) > 1 and consts[1] is DYNAMIC:
        return None  # sizes computed at run time: the generic kernel reads them every call
    per_shape: dict = {}

    def split(args, at):
        x = args[0]
        if type(x) is not np.ndarray:
            return generic(args, at)
        index = per_shape.get(x.shape)
        if index is not None:
            return tuple(x[i] for i in index)
        parts = generic(args, at)  # its size rules and errors; the slices are read off its parts
        axis = at["axis"] % x.ndim if x.ndim else 0
        lead, start, index = (slice(None),) * axis, 0, []
        for part in parts:
            stop = start + part.shape[axis]
            index.append(lead + (slice(start, stop),))
            start = stop
        remember(per_shape, x.shape, tuple(index))
        return parts
    return split
