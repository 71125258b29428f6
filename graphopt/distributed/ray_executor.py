"""The Ray executor: the same tasks as the local executors, scheduled on a Ray cluster.

--ray auto     connect to the Ray instance running on this machine (`ray start --head`), else start one
--ray ADDRESS  connect to that cluster (host:port of its head, or ray://host:port for Ray Client);
               an address that does not answer within GRAPHOPT_RAY_TIMEOUT seconds (default 15) is a
               one-line error, not a hang.
Ray is optional (pip install "graphopt[ray]"); without it --ray is a one-line error. Workers import
graphopt themselves, so every node needs graphopt installed (the same version) and, for tasks that
take paths, the same shared storage.
"""
from __future__ import annotations

import os
import socket
import threading

from graphopt.distributed.executor import DEFAULT_RETRIES, Executor, Outcome, describe, retryable
from graphopt.distributed.progress import ProgressLine
from graphopt.errors import GraphoptError, UsageError

TIMEOUT_ENV = "GRAPHOPT_RAY_TIMEOUT"
BIG_ARG = 64 << 10  # bytes arguments above this go to Ray's object store once per job, not once per task


class RayUnreachable(GraphoptError):
    """The Ray cluster named by --ray / GRAPHOPT_RAY_ADDRESS did not answer in time."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed: pip install \"graphopt[ray]\"") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--ray '{address}': expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "15")
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV}='{text}' is not a number of seconds") from None


def connect(address: str, workers: int | None) -> bool:
    """Initialise Ray for this process; returns True when this call started it (so close() stops it)."""
    ray = _import_ray()
    if address != "auto":
        host, port = _host_port(address)
        wait_s = _timeout()
        try:  # a quick TCP probe: a wrong host or a firewalled port fails here in seconds
            socket.create_connection((host, port), timeout=wait_s).close()
        except OSError as e:
            raise RayUnreachable(f"Ray cluster at {address} is unreachable: {e} (waited up to {wait_s:g} s)") from None
    if ray.is_initialized():  # a driver already connected (a notebook, the test suite): use its cluster
        return False
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False, logging_level="error")
        except (ConnectionError, RuntimeError):  # no Ray running here: start a local one
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="error")
        return True
    failure: list[BaseException] = []

    def init():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="error")
        except BaseException as e:  # noqa: BLE001 (re-raised below as one line)
            failure.append(e)

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(wait_s)
    if thread.is_alive():
        raise RayUnreachable(f"Ray cluster at {address} answered on the port but did not accept a driver "
                             f"within {wait_s:g} s")
    if failure:
        raise RayUnreachable(f"cannot connect to the Ray cluster at {address}: {describe(failure[0])}")
    return True


def call(fn, *args):
    """The remote function: arguments one by one, so Ray resolves the object refs among them."""
    return fn(*args)


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, address: str, workers: int | None = None):
        self.address = address
        self._owns = connect(address, workers)
        ray = _import_ray()
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1))
        self._remote = ray.remote(num_cpus=1, max_retries=0)(call)  # retries are ours: same rules as local

    def describe(self) -> str:
        return f"ray ({self.address}), {self.workers} worker(s)"

    def map(self, tasks, retries=DEFAULT_RETRIES, progress=None, label="tasks", on_done=None):
        ray = _import_ray()
        line = ProgressLine(label, len(tasks), progress)
        outcomes = [Outcome(t.name) for t in tasks]
        stored: dict[int, object] = {}  # id(bytes argument) -> its object ref, put once per job

        def arg(a):
            if isinstance(a, bytes) and len(a) > BIG_ARG:
                if id(a) not in stored:
                    stored[id(a)] = ray.put(a)
                return stored[id(a)]
            return a

        def submit(i):
            return self._remote.remote(tasks[i].fn, *(arg(a) for a in tasks[i].args))

        running = {}
        queue = list(range(len(tasks)))[::-1]
        while queue or running:
            while queue and len(running) < 2 * self.workers:  # a bounded window keeps the driver's memory flat
                i = queue.pop()
                running[submit(i)] = i
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i = running.pop(ref)
                out = outcomes[i]
                out.attempts += 1
                try:
                    out.value = ray.get(ref)
                    line.update(done=1)
                except Exception as e:  # noqa: BLE001 (RayTaskError wraps the task's own exception)
                    cause = getattr(e, "cause", None) or e
                    if retryable(cause) and out.attempts <= retries:
                        queue.append(i)
                        line.update(retried=1)
                        continue
                    out.error = describe(cause)
                    line.update(failed=1)
                if on_done:
                    on_done(i, out)
        return outcomes

    def close(self) -> None:
        if self._owns:
            _import_ray().shutdown()
            self._owns = False
