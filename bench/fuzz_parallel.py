"""The differential fuzzer on an executor (graphopt/distributed): `python -m bench.fuzz --workers N` or
`--ray auto|ADDRESS`. Seeds are cut into chunks, one task each; a task checks its graphs exactly as
fuzz.run does and returns one record per seed; this process sums them in seed order (the same summary
as fuzz.run) and minimizes and saves the failing graphs itself (rare, and the files land here)."""
from __future__ import annotations

import time
from pathlib import Path

import onnx

from bench import fuzz
from bench.fuzz_graphs import random_model
from graphopt.distributed import Task, make_executor

CHUNK = 25  # seeds per task: enough to amortize a task's start, small enough to spread and retry


def check_seeds(first: int, count: int, max_ops: int, session: bool) -> list[dict]:
    """The task: for each seed, 'invalid' (ORT rejects the original) or its failures and notes."""
    records = []
    for s in range(first, first + count):
        model = random_model(s, max_ops=max_ops)
        feeds = fuzz.feeds_for(model, s)
        try:
            onnx.checker.check_model(model, full_check=True)
            fuzz.reference(model, feeds)
        except Exception:
            records.append({"seed": s, "invalid": True})
            continue
        try:
            failures, notes = fuzz.check(model, feeds, session=session)
        except Exception as e:  # the harness itself must not die on one graph
            failures, notes = [fuzz.Failure("harness-crash", f"{e.__class__.__name__}: {e}")], []
        records.append({"seed": s, "invalid": False, "failures": [(f.key, f.detail) for f in failures],
                        "unsupported": any(n.startswith("session") for n in notes),
                        "ort_bug": any("ORT failed" in n for n in notes)})
    return records


def run_parallel(n: int, seed: int, save: Path | None, max_ops: int = 8, log=print, minimize_budget: int = 150,
                 session: bool = True, workers: int | None = None, ray: str | None = None, executor=None,
                 chunk: int = CHUNK) -> dict:
    """fuzz.run on an executor; returns the same summary dict."""
    stats = {"graphs": 0, "invalid_originals": 0, "failing_graphs": 0, "failures": {}, "unsupported": 0,
             "saved": [], "seconds": 0.0, "ort_bugs": 0}
    start = time.perf_counter()
    tasks = [Task(f"seeds {a}..{min(a + chunk, seed + n) - 1}", check_seeds, (a, min(chunk, seed + n - a), max_ops, session))
             for a in range(seed, seed + n, chunk)]
    own = executor is None
    executor = executor or make_executor(workers, ray, tasks=len(tasks))
    try:
        outcomes = executor.map(tasks, progress=log, label=f"fuzzing on {executor.describe()}")
    finally:
        if own:
            executor.close()
    for task, o in zip(tasks, outcomes):
        if not o.ok:  # a chunk whose worker kept dying: counted as a harness failure, named
            stats["failing_graphs"] += 1
            stats["failures"]["harness-crash"] = stats["failures"].get("harness-crash", 0) + 1
            log(f"{task.name}: {o.error}")
            continue
        for r in o.value:
            if r["invalid"]:
                stats["invalid_originals"] += 1
                continue
            stats["graphs"] += 1
            stats["unsupported"] += r["unsupported"]
            stats["ort_bugs"] += r["ort_bug"]
            if not r["failures"]:
                continue
            stats["failing_graphs"] += 1
            for key, _ in r["failures"]:
                stats["failures"][key] = stats["failures"].get(key, 0) + 1
            key, detail = r["failures"][0]
            log(f"seed {r['seed']}: {key}: {detail[:200]} ({len(r['failures'])} failing checks)")
            if save is not None:
                s, model = r["seed"], random_model(r["seed"], max_ops=max_ops)
                small, small_feeds = fuzz.minimize(model, s, key, minimize_budget)
                meta = {"seed": s, "key": key, "detail": detail[:500], "all_keys": sorted({k for k, _ in r["failures"]}),
                        "nodes_before": len(model.graph.node), "nodes_after": len(small.graph.node), "xfail": None}
                folder = fuzz.save_case(save / f"fuzz_{s}_{key.replace(':', '_').replace('/', '_')}", small, small_feeds, meta)
                stats["saved"].append(str(folder))
    stats["seconds"] = round(time.perf_counter() - start, 1)
    return stats
