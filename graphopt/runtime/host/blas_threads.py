"""Cap the BLAS thread pool for Session runs (`Session(threads=N)`).

NumPy's matmul runs in its BLAS library (OpenBLAS in the NumPy wheels); elementwise NumPy is
single-threaded whatever we do. We look for OpenBLAS's own get/set entry points in the libraries
NumPy loaded (the names differ between the wheel's scipy-openblas build and a system OpenBLAS):
a get is cheap, so the count is set only when it differs. Without OpenBLAS, threadpoolctl (if
installed) sets it for any BLAS. If neither works, `thread_limiter` returns None and the session
runs with the BLAS default (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else one thread per core);
Session.threads_applied is False.
"""
from __future__ import annotations

import ctypes
import glob
import os

_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")
_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_openblas = None  # (get, set) once found, False when looked for and absent


def _find_openblas():
    global _openblas
    if _openblas is not None:
        return _openblas or None
    import numpy as np
    base = os.path.dirname(np.__file__)
    candidates = glob.glob(os.path.join(base + ".libs", "*openblas*")) + \
        glob.glob(os.path.join(base, ".dylibs", "*openblas*"))
    _openblas = False
    for path in [None] + candidates:  # None: symbols already global in the process
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        if get is not None and put is not None:
            get.restype = ctypes.c_int
            put.argtypes = [ctypes.c_int]
            _openblas = (get, put)
            break
    return _openblas or None


def thread_limiter(threads: int | None):
    """A callable that caps BLAS threads at `threads` (call it before each run), or None when that
    is impossible or not asked for. The cap is not undone after the run: resizing OpenBLAS's pool
    twice per run was measured at milliseconds per run on a loaded machine, more than small models
    take. So after a Session(threads=N) run, NumPy's BLAS stays at N threads in this process."""
    if not threads:
        return None
    found = _find_openblas()
    if found is not None:
        get, put = found

        def apply():
            if get() != threads:  # a ctypes call; setting only on change keeps the pool warm
                put(threads)
        return apply
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return lambda: threadpool_limits(limits=threads)  # not used as a context: the limit stays
