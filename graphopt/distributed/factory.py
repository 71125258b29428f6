"""make_executor: the executor a job gets from --workers N / --ray auto|ADDRESS / $GRAPHOPT_RAY_ADDRESS."""
from __future__ import annotations

import os

from graphopt.distributed.executor import Executor, InProcessExecutor, PoolExecutor
from graphopt.errors import UsageError

RAY_ENV = "GRAPHOPT_RAY_ADDRESS"


def make_executor(workers: int | None = None, ray: str | None = None, tasks: int | None = None) -> Executor:
    """--workers N / --ray auto|ADDRESS (or $GRAPHOPT_RAY_ADDRESS) -> an executor.

    Ray when asked for; otherwise a process pool when there are several cores (or `workers` > 1) and
    several tasks, and this process for one worker or one task."""
    ray = ray or os.environ.get(RAY_ENV) or None
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if ray:
        from graphopt.distributed.ray_executor import RayExecutor
        return RayExecutor(ray, workers)
    n = workers or os.cpu_count() or 1
    if tasks is not None:
        n = min(n, max(tasks, 1))
    return PoolExecutor(n) if n > 1 else InProcessExecutor()
