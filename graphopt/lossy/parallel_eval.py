"""Candidate evaluation of the accuracy-budget search on an executor: one task per candidate model x
evaluation-data shard, each returning its per-feed errors. The parent concatenates them in feed order
and takes the same mean budget.error() takes, so every candidate's error, and the search's choice, is
the one a single process computes (ORT runs single-threaded and deterministic in every worker).
Latency is still measured here, one candidate after another: timings taken side by side on busy
workers would not compare."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx

from graphopt.distributed.executor import Executor, Task
from graphopt.lossy import budget


def shard_errors(model_bytes: bytes, feeds: list[dict], refs: list, metric: str) -> list[float]:
    """The task: the metric of each feed of one shard (metric by name: a function does not travel)."""
    metric_f = budget.metric_fn(metric)
    sess = budget.ort_session(onnx.load_from_string(model_bytes))
    return [metric_f(r, sess.run(None, f)) for f, r in zip(feeds, refs)]


def evaluator(executor: Executor, metric: str, progress: Callable[[str], None] | None = None):
    """evaluate(models, feeds, refs) -> [error of each model], for budget.search(evaluate=...)."""

    def evaluate(models: list[onnx.ModelProto], feeds: list[dict], refs: list) -> list[float]:
        per_model = max(1, min(len(feeds), math.ceil(executor.workers / max(len(models), 1))))
        bounds = [len(feeds) * i // per_model for i in range(per_model + 1)]
        tasks = []
        for m, model in enumerate(models):
            blob = model.SerializeToString()
            for a, b in zip(bounds[:-1], bounds[1:]):
                tasks.append(Task(f"candidate {m} feeds {a}..{b - 1}", shard_errors, (blob, feeds[a:b], refs[a:b], metric)))
        values = executor.run(tasks, progress=progress, label=f"evaluating on {executor.describe()}")
        errors = []
        for m in range(len(models)):
            per_feed = [e for shard in values[m * per_model:(m + 1) * per_model] for e in shard]
            errors.append(float(np.mean(per_feed)))
        return errors

    return evaluate
