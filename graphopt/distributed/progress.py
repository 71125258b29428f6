"""One progress line for a whole job: tasks done / total, failures, retries, ETA."""
from __future__ import annotations

import time
from typing import Callable


class ProgressLine:
    """Calls `say(line)` when the counts change, at most every `every` seconds (and always at the end),
    so a 10 000-task job prints a few lines, not 10 000."""

    def __init__(self, label: str, total: int, say: Callable[[str], None] | None, every: float = 2.0):
        self.label, self.total, self.say, self.every = label, total, say, every
        self.done = self.failed = self.retried = 0
        self.start = time.monotonic()
        self._last = -float("inf")

    def update(self, done: int = 0, failed: int = 0, retried: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.retried += retried
        now = time.monotonic()
        if self.say and (now - self._last >= self.every or self.done + self.failed == self.total):
            self._last = now
            self.say(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        finished = self.done + self.failed
        eta = elapsed / finished * (self.total - finished) if finished else None
        return (f"{self.label}: {finished}/{self.total} tasks ({self.failed} failed, {self.retried} retried), "
                f"elapsed {_clock(elapsed)}, ETA {'?' if eta is None else _clock(eta)}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
