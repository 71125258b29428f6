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


def reusable(args: list, i: int) -> bool:
    """True when args[i] is an ndarray no one else can observe, so it may be overwritten.
    A view qualifies when it spans all of its base and is the base's only holder (a kernel's
    result is often a reshaped view of the array it computed). Call this before binding args[i]
    to a local name (a local adds a reference)."""
    a = args[i]
    if type(a) is not np.ndarray or not a.flags.writeable:
        return False
    base = a.base
    del a
    if base is not None:
        if type(base) is not np.ndarray or base.base is not None or base.nbytes != args[i].nbytes \
                or not base.flags.writeable:
            return False
        del base
        if sys.getrefcount(args[i].base) > _BASE_BASELINE:
            return False
    return sys.getrefcount(args[i]) <= _BASELINE
