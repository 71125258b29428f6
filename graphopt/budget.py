"""Accuracy budget: metrics, candidate evaluation against the float model, sensitivity ranking and
the fallback search that keeps the fastest candidate whose error stays inside the budget.

Errors are measured on evaluation data (never the calibration data) with ONNX Runtime; latency is
ORT's median over a few runs of one evaluation feed, single-threaded (noisy on a busy machine,
so the table shows it rather than hiding it behind a threshold).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .errors import GraphoptError, UsageError

METRICS = ("top1", "cosine", "max-rel-error")


class BudgetNotMet(GraphoptError):
    """No candidate stays within the accuracy budget."""


# ---------------------------------------------------------------------------------- metrics
def _top1(ref: list, got: list) -> float:
    a, b = ref[0], got[0]
    a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    b = b.reshape(-1, b.shape[-1]) if b.ndim else b.reshape(1, 1)
    return float(np.mean(a.argmax(-1) != b.argmax(-1)))


def _cosine(ref: list, got: list) -> float:
    errs = []
    for a, b in zip(ref, got):
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        errs.append(0.0 if na == nb == 0 else 1.0 - float(a @ b) / max(na * nb, 1e-300))
    return max(errs)


def _max_rel(ref: list, got: list) -> float:
    errs = []
    for a, b in zip(ref, got):
        a, b = a.astype(np.float64), b.astype(np.float64)
        errs.append(float(np.abs(a - b).max(initial=0.0)) / max(float(np.abs(a).max(initial=0.0)), 1e-12))
    return max(errs)


def metric_fn(name: str) -> Callable[[list, list], float]:
    """metric(reference_outputs, candidate_outputs) -> error for one feed (0 = identical)."""
    builtin = {"top1": _top1, "cosine": _cosine, "max-rel-error": _max_rel}
    if name in builtin:
        return builtin[name]
    if name.startswith("python:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise UsageError(f"--metric '{name}': write python:module:function")
        try:
            return getattr(importlib.import_module(parts[1]), parts[2])
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--metric '{name}': {e}") from None
    raise UsageError(f"unknown --metric '{name}' (choose {', '.join(METRICS)} or python:module:function)")


def _session(model: onnx.ModelProto, threads: int = 1):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def reference_outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    sess = _session(model)
    return [sess.run(None, f) for f in feeds]


def error(model: onnx.ModelProto, feeds: list[dict], refs: list, metric) -> float:
    """Mean of the per-feed metric (top-1 disagreement averages to a rate, like accuracy does)."""
    sess = _session(model)
    return float(np.mean([metric(r, sess.run(None, f)) for f, r in zip(feeds, refs)]))


def latency_ms(model: onnx.ModelProto, feed: dict, runs: int = 10) -> float:
    sess = _session(model)
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


# ----------------------------------------------------------------------------------- search
@dataclass
class Candidate:
    name: str
    float_layers: list[str]
    error: float
    latency_ms: float
    size_bytes: int
    model: onnx.ModelProto
    pareto: bool = False


def search(build: Callable[[list[str]], onnx.ModelProto], layers: list[str], feeds: list[dict], refs: list,
           metric, budget: float, progress=None, sensitivity_feeds: int = 8) -> list[Candidate]:
    """Rank `layers` by sensitivity (error when only that layer is quantized), then build candidates
    with the 0, 1, 2, 4, ... most sensitive layers back in float. Returns every candidate, Pareto
    flags set; the caller picks."""
    say = progress or (lambda msg: None)
    sample, sample_refs = feeds[:sensitivity_feeds], refs[:sensitivity_feeds]
    sens = {}
    for i, layer in enumerate(layers):
        others = [x for x in layers if x != layer]
        sens[layer] = error(build(others), sample, sample_refs, metric)
        if (i + 1) % 10 == 0 or i + 1 == len(layers):
            say(f"sensitivity: {i + 1}/{len(layers)} layers")
    ranked = sorted(layers, key=lambda x: -sens[x])
    counts, k = [0], 1
    while k < len(layers):
        counts.append(k)
        k *= 2
    candidates = []
    for k in counts:
        fallback = ranked[:k]
        model = build(fallback)
        err = error(model, feeds, refs, metric)
        cand = Candidate(f"int8, {k} layer(s) float" if k else "int8, all layers", fallback, err,
                         latency_ms(model, feeds[0]), model.ByteSize(), model)
        candidates.append(cand)
        say(f"candidate '{cand.name}': error {err:.4g}, {cand.latency_ms:.2f} ms")
    for c in candidates:
        c.pareto = not any(o is not c and o.error <= c.error and o.latency_ms <= c.latency_ms
                           and (o.error < c.error or o.latency_ms < c.latency_ms) for o in candidates)
    return candidates


def choose(candidates: list[Candidate], budget: float, best_effort: bool) -> Candidate:
    inside = [c for c in candidates if c.error <= budget]
    if inside:
        return min(inside, key=lambda c: c.latency_ms)
    if best_effort:
        return min(candidates, key=lambda c: (c.error, c.latency_ms))
    best = min(c.error for c in candidates)
    raise BudgetNotMet(f"no candidate meets the accuracy budget {budget:g} (best error {best:.4g}); "
                       "nothing written (use --best-effort to write the most accurate one)")


def table(candidates: list[Candidate], float_latency: float, float_size: int, budget: float) -> str:
    lines = [f"{'candidate':28}{'error':>10}{'ORT ms':>9}{'speedup':>9}{'size MiB':>10}  pareto  in budget",
             f"{'float (reference)':28}{0.0:>10.4g}{float_latency:>9.2f}{1.0:>9.2f}{float_size / 2**20:>10.2f}"]
    for c in candidates:
        lines.append(f"{c.name:28}{c.error:>10.4g}{c.latency_ms:>9.2f}{float_latency / c.latency_ms:>9.2f}"
                     f"{c.size_bytes / 2**20:>10.2f}  {'yes' if c.pareto else '':6}  "
                     f"{'yes' if c.error <= budget else 'no'}")
    return "\n".join(lines)
