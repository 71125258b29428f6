"""Per-node timings and peak activation memory of one Session.run(..., profile=True)."""
from __future__ import annotations

import time

import numpy as np

from graphopt.errors import GraphoptError, KernelFailed


def held_bytes(values, skip_ids) -> int:
    """Bytes of the distinct buffers behind `values` (views count once, via their base), leaving
    out constants and feeds (skip_ids)."""
    seen, total = set(), 0
    for v in values:
        while isinstance(v, np.ndarray) and isinstance(v.base, np.ndarray):
            v = v.base
        if isinstance(v, np.ndarray) and id(v) not in seen and id(v) not in skip_ids:
            seen.add(id(v))
            total += v.nbytes
    return total


class Profile:
    """Per-step wall time and the peak of bytes held by intermediates during one run."""

    def __init__(self):
        self.steps: list[tuple[str, str, float]] = []  # (op, node description, seconds)
        self.peak_activation_bytes = 0

    def add(self, op, desc, seconds, held):
        domain, op_type = op
        self.steps.append((f"{domain}::{op_type}" if domain else op_type, desc, seconds))
        self.peak_activation_bytes = max(self.peak_activation_bytes, held)

    @property
    def total_seconds(self) -> float:
        return sum(s for *_, s in self.steps)

    def by_op(self) -> list[tuple[str, int, float]]:
        """(op, node count, seconds), slowest first."""
        acc: dict[str, list] = {}
        for op, _, s in self.steps:
            a = acc.setdefault(op, [0, 0.0])
            a[0] += 1
            a[1] += s
        return sorted(((op, n, s) for op, (n, s) in acc.items()), key=lambda r: -r[2])

    def format(self, top: int = 12) -> str:
        total = self.total_seconds or 1e-12
        lines = [f"{'op':<28} {'nodes':>5} {'ms':>9} {'share':>6}"]
        for op, n, s in self.by_op()[:top]:
            lines.append(f"{op:<28} {n:>5} {s * 1e3:>9.3f} {100 * s / total:>5.1f}%")
        slow = sorted(self.steps, key=lambda r: -r[2])[:3]
        lines.append(f"total in kernels {total * 1e3:.3f} ms; slowest nodes: "
                     + ", ".join(f"{d} {s * 1e3:.2f} ms" for _, d, s in slow))
        lines.append(f"peak activation memory: {self.peak_activation_bytes / 2**20:.2f} MiB")
        return "\n".join(lines)


def run_profiled(plan, env, outer, profile: Profile, feed_ids) -> list:
    """The plan's steps in order (as Plan._loop) with a timer per step and a count of the bytes
    held by live intermediates; `env` is the plan's slot list with the feeds filled in."""
    for name, s in plan.outer_slots:
        env[s] = outer[name]
    skip = {id(env[s]) for s in plan.constant_slots} | feed_ids
    live: set[int] = set()
    clock = time.perf_counter
    for i, step in enumerate(plan.steps):
        fn, ins, outs, attrs, frees, desc = step
        args = [env[j] for j in ins]
        for s in frees:
            env[s] = None
            live.discard(s)
        t0 = clock()
        try:
            res = fn(args, attrs)
        except GraphoptError:
            raise
        except Exception as e:
            raise KernelFailed(f"{desc} failed: {type(e).__name__}: {e}") from e
        dt = clock() - t0
        for s, v in zip(outs, res):
            env[s] = v
            live.add(s)
        # during the call the dying inputs were still held: count them with the outputs
        held = held_bytes([env[s] for s in live] + args, skip)
        args = res = v = None
        profile.add(plan.ops[i], desc, dt, held)
    return [env[s] for s in plan.output_slots]
