"""When may a kernel write its result into one of its inputs?

The plan drops a value from its slots before the kernel that uses it last runs, so at that point
the kernel's argument list holds the only reference to it, unless something else still does:
a constant of the plan (the plan's template), a feed (the caller's dict), a later consumer
(another slot), or a view of it (views keep their base alive). All of those show up in the
reference count, so "sole owner" is: a writeable ndarray (or a full view of one) whose reference
count is the one an otherwise unreferenced array has at this point. The baseline is measured once,
through the same function, so it does not depend on the interpreter's counting details.
"""
from __future__ import annotations

import sys

import numpy as np


def _probe(args, i):
    return sys.getrefcount(args[i])


def _probe_base(args, i):
    return sys.getrefcount(args[i].base)


# counted exactly as reusable() counts (a call on args[i] from a function frame holding no other
# reference), so the baselines do not depend on the interpreter's counting details
_BASELINE = _probe([np.empty(1)], 0)
_BASE_BASELINE = _probe_base([np.empty(4).reshape(2, 2)], 0)
_refcount = sys.getrefcount  # a module global: one lookup instead of two (sys, then the attribute)


def reusable(args: list, i: int) -> bool:
    """True when args[i] is an ndarray no one else can observe, so it may be overwritten.
    A view qualifies when it spans all of its base and is the base's only holder (a kernel's
    result is often a reshaped view of the array it computed). Call this before binding args[i]
    to a local name (a local adds a reference)."""
    # the reference count first: it is the cheapest test and the one most inputs fail (a value
    # still used later, a constant, a feed), so a kernel pays ~0.1 us for "no" (checked here
    # before any local is bound: the count is the one the final test of a view's count used to see)
    if _refcount(args[i]) > _BASELINE:
        return False
    a = args[i]
    if type(a) is not np.ndarray or not a.flags.writeable:
        return False
    base = a.base
    del a
    if base is None:
        return True
    if type(base) is not np.ndarray or base.base is not None or base.nbytes != args[i].nbytes \
            or not base.flags.writeable:
        return False
    del base
    return _refcount(args[i].base) <= _BASE_BASELINE


# Below this many elements a kernel does not try to write into a dying input: the check above costs
# ~0.3 us a call, and NumPy hands out small buffers from its cache about as fast (measured: negative
# of 64..1024 float32 values, in place vs a new array, the same time within noise; from ~16k values
# on, in place is faster, 64k: 61 vs 116 us, the new array's pages being faulted in).
INPLACE_MIN_SIZE = 1024
