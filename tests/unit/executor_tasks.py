"""Task functions for the executor tests: module-level, so they travel by name to pool and Ray workers.
Each failure is real: a marker file makes "fail the first time" hold across processes."""
from __future__ import annotations

import os
from pathlib import Path

from graphopt.errors import UsageError


def square(x: int) -> int:
    return x * x


def raise_once(marker: str, x: int) -> int:
    if not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError(f"transient failure of task {x}")
    return x * x


def always_raise(x: int) -> int:
    raise ValueError(f"model_{x}.onnx is broken")


def user_error(marker: str) -> int:
    Path(marker).open("a").write("x")  # one character per attempt
    raise UsageError("bad option (not worth a retry)")


def die_once(marker: str, x: int) -> int:
    if not Path(marker).exists():
        Path(marker).write_text("died once")
        os._exit(3)  # the worker process vanishes, as when the OOM killer takes it
    return x * x


def always_die(x: int) -> int:
    os._exit(3)


def length(blob: bytes, x: int) -> int:
    assert isinstance(blob, bytes), type(blob)
    return len(blob) + x


def pid(_: int) -> int:
    return os.getpid()
