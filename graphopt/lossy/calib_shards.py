"""Calibration on several workers: the data is cut into shards, each shard's statistics are computed
by a task (graphopt/distributed executors), and the shards merge exactly (TensorStats.merge: min/max,
counts, and histograms on a common power-of-two binning), so the ranges equal calibrate()'s bit for bit.

A shard names its data rather than carrying it where it can: files of a folder, or a sample range
of one stacked .npz (paths in shared storage); feeds given as Python objects travel with the task.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from graphopt.distributed.executor import Executor, Task
from graphopt.errors import UsageError
from graphopt.lossy.calibrate import (METHODS, CalibrationError, TensorStats, check_feed, input_specs, iter_feeds,
                                      tensor_runner)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, as even as possible, none empty."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def shard_specs(data, shards: int) -> list[tuple[str, tuple]]:
    """(name, spec) per shard. spec: ("files", [paths]) | ("npz", path, start, stop) | ("feeds", start, [feeds])."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            files = sorted(str(f) for f in path.glob("*.npz"))
            if not files:
                raise CalibrationError(f"calibration data '{path}' holds no .npz files")
            return [(f"{path} files {a}..{b - 1}", ("files", files[a:b])) for a, b in _split(len(files), shards)]
        if not path.is_file():
            raise UsageError(f"calibration data '{path}' does not exist")
        with np.load(path, allow_pickle=False) as z:
            count = len(z[z.files[0]]) if z.files and z[z.files[0]].ndim else 0
        if count == 0:
            raise CalibrationError("calibration data is empty (no feeds)")
        return [(f"{path} samples {a}..{b - 1}", ("npz", str(path), a, b)) for a, b in _split(count, shards)]
    feeds = list(data)
    if not feeds:
        raise CalibrationError("calibration data is empty (no feeds)")
    return [(f"calibration feeds {a}..{b - 1}", ("feeds", a, feeds[a:b])) for a, b in _split(len(feeds), shards)]


def shard_feeds(spec: tuple, model: onnx.ModelProto):
    """The checked feeds of one shard, with the same names in errors as calibrate() gives them."""
    kind = spec[0]
    if kind == "npz":
        _, path, start, stop = spec
        yield from islice(iter_feeds(path, model), start, stop)
        return
    specs = input_specs(model)
    if kind == "files":
        for f in spec[1]:
            yield check_feed(specs, dict(np.load(f, allow_pickle=False)), f)
    else:
        _, start, feeds = spec
        for i, feed in enumerate(feeds):
            yield check_feed(specs, feed, f"calibration feed {start + i}")


def shard_stats(model_bytes: bytes, tensors: list[str], spec: tuple, with_hist: bool, runner: str):
    """The task: one shard's TensorStats per tensor, and its batch and sample counts."""
    model = onnx.load_from_string(model_bytes)
    run = tensor_runner(model, tensors, runner)
    stats = {t: TensorStats(with_hist) for t in tensors}
    batches = samples = 0
    for feed in shard_feeds(spec, model):
        for t, v in zip(tensors, run(feed)):
            if v is not None and np.asarray(v).dtype.kind == "f":
                stats[t].update(np.asarray(v, np.float32).ravel())
        batches += 1
        first = next(iter(feed.values())) if feed else None
        samples += len(first) if first is not None and np.ndim(first) else 1
    return stats, batches, samples


def calibrate_sharded(model: onnx.ModelProto, tensors: list[str], data, method: str, percentile: float,
                      executor: Executor, progress: Callable[[str], None] | None = None, runner: str = "ort",
                      shards: int | None = None) -> dict[str, tuple[float, float]]:
    """calibrate() on `executor`: one task per shard (default: one shard per worker), merged in order."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}' (choose {', '.join(METHODS)})")
    if not 50.0 < percentile <= 100.0:
        raise UsageError(f"--percentile must be in (50, 100], got {percentile}")
    specs = shard_specs(data, shards or executor.workers)
    blob = model.SerializeToString()
    tasks = [Task(name, shard_stats, (blob, list(tensors), spec, method != "minmax", runner)) for name, spec in specs]
    outcomes = executor.map(tasks, progress=progress, label=f"calibrating on {executor.describe()}")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise CalibrationError(f"calibration shard '{failed[0].name}' failed: {failed[0].error}")
    merged = {t: TensorStats(method != "minmax") for t in tensors}
    batches = samples = 0
    for o in outcomes:
        stats, b, s = o.value
        for t in tensors:
            merged[t].merge(stats[t])
        batches, samples = batches + b, samples + s
    if progress:
        progress(f"calibrated {len(tensors)} tensors on {batches} batches ({samples} samples, {method}, "
                 f"{len(specs)} shards)")
    return {t: s.range(method, percentile) for t, s in merged.items()}
