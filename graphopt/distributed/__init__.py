"""Scale-out: run many independent tasks in-process, in a local process pool, or on a Ray cluster.

executor.py      Task / Outcome, the in-process and process-pool executors
factory.py       make_executor(workers, ray): which executor a job gets
ray_executor.py  the Ray executor (optional dependency: pip install "graphopt[ray]")
progress.py      one progress line for a whole job (done/total, failures, retries, ETA)

A task is a module-level function and its arguments (model bytes or a path in shared storage, a data
shard) -> a picklable result, so the same task runs unchanged on every executor, and results come back
in task order: what a job computes does not depend on where it ran."""
from graphopt.distributed.executor import Executor, InProcessExecutor, JobFailed, Outcome, PoolExecutor, Task
from graphopt.distributed.factory import RAY_ENV, make_executor

__all__ = ["Executor", "InProcessExecutor", "JobFailed", "Outcome", "PoolExecutor", "RAY_ENV", "Task", "make_executor"]
