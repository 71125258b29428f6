"""Keep freed memory in the process heap instead of handing it back to the OS.

A run allocates the same large intermediates every time. glibc malloc serves blocks of 128 KiB and
up (a threshold that then adapts) with fresh mmap pages and trims the heap top after frees, so
each run pays the page faults of touching its activations again: measured here at ~25 ms for one
6 MiB array on a loaded VM, 40x the cost of writing memory already mapped. ONNX Runtime avoids
this with its own arena. We get the same effect from malloc itself: a high mmap threshold (its
maximum, 32 MiB on 64-bit) and no trimming, so freed blocks are reused by the next run. This is
process-wide and only done once, on glibc; elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc as above; True if it took effect (now or earlier)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _done
