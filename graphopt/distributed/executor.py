"""Executors: run independent tasks in-process, in a local process pool, or on Ray (ray_executor.py).

Every executor has the same contract: map(tasks) returns one Outcome per task, in task order, after
every task finished or ran out of attempts. A task that raises is retried up to `retries` more times
(an error graphopt raises on purpose, a GraphoptError such as bad data, is the same on every try and
is not retried); a task that still fails is reported by its name while the others finish. A worker
process that dies (killed, out of memory, a crash in native code) costs the task it ran one attempt:
the pool is rebuilt and the tasks it held are rerun one at a time, so only the task that really
kills its worker is charged.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

from graphopt.distributed.progress import ProgressLine
from graphopt.errors import GraphoptError, UsageError

DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class Task:
    """fn(*args) -> a picklable result; fn is a module-level function (it travels by name)."""
    name: str        # what a failure report names: the model, the shard, the candidate
    fn: Callable
    args: tuple = ()


@dataclass
class Outcome:
    name: str
    value: object = None
    error: str | None = None   # "ExceptionType: first line of the message" after the last attempt
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class JobFailed(GraphoptError):
    """Some tasks of a job failed on every attempt; the message names them."""


def run_task(fn: Callable, args: tuple):
    return fn(*args)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def retryable(exc: BaseException) -> bool:
    """A GraphoptError is the user's data or options: the same on every attempt."""
    return not isinstance(exc, GraphoptError)


class Executor:
    kind = "executor"
    workers = 1

    def map(self, tasks: list[Task], retries: int = DEFAULT_RETRIES, progress: Callable[[str], None] | None = None,
            label: str = "tasks", on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """on_done(index, outcome) runs here, in this process, as each task settles (a resumable job
        writes its results as they come, not at the end)."""
        raise NotImplementedError

    def run(self, tasks: list[Task], retries: int = DEFAULT_RETRIES, progress=None, label: str = "tasks") -> list:
        """The tasks' values in order; JobFailed naming every failed task when any failed."""
        outcomes = self.map(tasks, retries, progress, label)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            first = "; ".join(f"{o.name}: {o.error}" for o in failed[:3])
            more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
            raise JobFailed(f"{len(failed)} of {len(tasks)} {label} failed after retries: {first}{more}")
        return [o.value for o in outcomes]

    def describe(self) -> str:
        return f"{self.kind}, {self.workers} worker(s)"

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InProcessExecutor(Executor):
    """Runs tasks one after the other in this process (the default for one small job)."""
    kind = "in-process"

    def map(self, tasks, retries=DEFAULT_RETRIES, progress=None, label="tasks", on_done=None):
        line = ProgressLine(label, len(tasks), progress)
        outcomes = []
        for index, task in enumerate(tasks):
            out = Outcome(task.name)
            while True:
                out.attempts += 1
                try:
                    out.value = run_task(task.fn, task.args)
                    line.update(done=1)
                    break
                except Exception as e:  # noqa: BLE001 (a task's failure is reported, not raised)
                    if retryable(e) and out.attempts <= retries:
                        line.update(retried=1)
                        continue
                    out.error = describe(e)
                    line.update(failed=1)
                    break
            outcomes.append(out)
            if on_done:
                on_done(index, out)
        return outcomes


class PoolExecutor(Executor):
    """A local pool of `workers` processes (spawned, not forked: ONNX Runtime's threads do not survive
    a fork). The pool lives until close(), so a search that maps several times starts it once."""
    kind = "process pool"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _fresh_pool(self) -> ProcessPoolExecutor:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def map(self, tasks, retries=DEFAULT_RETRIES, progress=None, label="tasks", on_done=None):
        line = ProgressLine(label, len(tasks), progress)
        outcomes = [Outcome(t.name) for t in tasks]
        pending, suspects = deque(range(len(tasks))), deque()
        running: dict = {}
        pool = self._pool or self._fresh_pool()

        def settle(i: int, exc: BaseException | None, value=None, cause: str | None = None) -> None:
            out = outcomes[i]
            out.attempts += 1
            if exc is None:
                out.value = value
                line.update(done=1)
            elif (exc is BrokenProcessPool or retryable(exc)) and out.attempts <= retries:
                pending.append(i)
                line.update(retried=1)
                return
            else:
                out.error = cause or describe(exc)
                line.update(failed=1)
            if on_done:
                on_done(i, out)

        def submit(i: int, queue: deque) -> bool:
            try:
                running[pool.submit(run_task, tasks[i].fn, tasks[i].args)] = i
                return True
            except BrokenProcessPool:  # a worker died since the last wait: try again after the rebuild
                queue.appendleft(i)
                return False

        while pending or suspects or running:
            ok = True
            if suspects:  # after a worker died: rerun the tasks it may have held, one at a time
                if not running:
                    ok = submit(suspects.popleft(), suspects)
            else:
                while ok and pending and len(running) < self.workers:
                    ok = submit(pending.popleft(), pending)
            broken = not ok
            done = wait(running, return_when=FIRST_COMPLETED)[0] if ok else ()
            for f in done:
                try:
                    value = f.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                except Exception as e:  # noqa: BLE001
                    settle(running.pop(f), e)
                else:
                    settle(running.pop(f), None, value)
            if broken:
                lost = list(running.values())
                running.clear()
                pool = self._fresh_pool()
                if len(lost) == 1:  # it ran alone: it killed its worker
                    settle(lost[0], BrokenProcessPool, cause="the worker process died (killed or crashed)")
                else:
                    suspects.extend(lost)
        return outcomes

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
