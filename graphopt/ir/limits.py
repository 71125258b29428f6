"""Resource limits for models from strangers, and the CLI option group that sets them.

Every limit is checked before the thing it bounds is allocated or run: declared and inferred
tensor sizes on load, external data ranges before reading, folded bytes before evaluating, wall
time between passes. Defaults are generous for real models (a 4-billion-element tensor, a million
nodes) and far below what would exhaust a machine.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

from graphopt.errors import LimitExceeded, UsageError


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 1_000_000          # nodes in all graphs together (subgraphs and functions included)
    max_elements: int = 1 << 32         # elements of any one tensor: declared, stored or inferred
    max_rank: int = 64                  # NumPy's own cap; ONNX sets none
    max_depth: int = 32                 # If/Loop/Scan subgraphs inside subgraphs (and function calls)
    fold_bytes: int = 64 << 20          # largest tensor constant folding may create
    fold_total_bytes: int = 1 << 30     # all tensors constant folding may create in one compile
    time_limit: float | None = None     # seconds of compile wall time (None: no limit)
    allow_hardlinks: bool = False       # accept external data files with more than one hard link

    def with_(self, **changes) -> "Limits":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULT = Limits()


class Deadline:
    """Wall-clock budget for one compile; `check(where)` raises LimitExceeded once it is spent."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def check(self, where: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise LimitExceeded(f"compile time limit of {self.seconds:g} s reached ({where}); "
                                f"raise it with --time-limit")


def check_count(what: str, value: int, limit: int, option: str) -> None:
    if value > limit:
        raise LimitExceeded(f"{what}: {value:,} is over the limit of {limit:,} (raise it with {option})")


# ---------------------------------------------------------------- command line

def _positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: '{text}'")
    return value


def _bytes(text: str) -> int:
    """Bytes, or with a k/M/G suffix (64M, 1G)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: '{text}' (use bytes or e.g. 64M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: '{text}'")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: '{text}'")
    return value


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The `limits` option group of `graphopt compile` (defaults from Limits)."""
    g = parser.add_argument_group("limits", "refuse models that would exhaust time or memory (LimitExceeded, exit 1)")
    g.add_argument("--max-nodes", type=_positive_int, metavar="N", help=f"nodes in all graphs (default {DEFAULT.max_nodes:,})")
    g.add_argument("--max-elements", type=_positive_int, metavar="N",
                   help=f"elements of any tensor, declared or inferred (default {DEFAULT.max_elements:,})")
    g.add_argument("--max-rank", type=_positive_int, metavar="N", help=f"rank of any tensor (default {DEFAULT.max_rank})")
    g.add_argument("--max-depth", type=_positive_int, metavar="N", help=f"subgraph nesting depth (default {DEFAULT.max_depth})")
    g.add_argument("--fold-total", type=_bytes, metavar="BYTES",
                   help=f"bytes constant folding may create in all (default {DEFAULT.fold_total_bytes >> 20} MiB)")
    g.add_argument("--time-limit", type=_seconds, metavar="SECONDS", help="compile wall-time limit (default none)")
    g.add_argument("--allow-hardlinks", action="store_true", default=None,
                   help="accept external data files that have other hard links (by default refused: "
                        "the other names may lie outside the model's folder)")


def limits_from_args(args: argparse.Namespace) -> Limits:
    fold = getattr(args, "fold_limit", None)
    if fold is not None and fold <= 0:
        raise UsageError("--fold-limit must be positive")
    return DEFAULT.with_(max_nodes=args.max_nodes, max_elements=args.max_elements, max_rank=args.max_rank,
                         max_depth=args.max_depth, fold_total_bytes=args.fold_total, time_limit=args.time_limit,
                         allow_hardlinks=args.allow_hardlinks, fold_bytes=fold)
