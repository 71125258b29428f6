"""Accuracy budget: metrics, candidate evaluation against the float model, sensitivity ranking and
the fallback searches that keep the fastest candidate whose error stays inside the budget: quantized
layers back to float (search), or a lower prune ratio / unpruned sensitive layers (prune_search).

Errors are measured on evaluation data (never the calibration data) with ONNX Runtime; latency is
ORT's median over a few runs of one evaluation feed, single-threaded (the prune search: best of a few
runs, candidates taking turns); noisy on a busy machine, so the table shows it rather than hiding
it behind a threshold.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from graphopt.errors import GraphoptError, UsageError

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
        errs.append(0.0 if na == nb == 0 else max(0.0, 1.0 - float(a @ b) / max(na * nb, 1e-300)))
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


ort_session = _session  # public: lossy/parallel_eval.py's workers open their sessions the same way


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


def latencies_ms(models: list, feed: dict, runs: int = 10) -> list[float]:
    """Best-of-`runs` latency per model, the models taking turns run by run, so that load from
    other processes on a shared machine falls on all of them alike."""
    sessions = [_session(m) for m in models]
    for s in sessions:
        s.run(None, feed)
    best = [float("inf")] * len(sessions)
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feed)
            best[i] = min(best[i], time.perf_counter() - t)
    return [1000.0 * b for b in best]


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
    report: object = None  # the PruneReport of a pruning candidate


EVAL_BATCH = 16  # candidate models built and evaluated together (bounded memory, a batch fills the workers)


def search(build: Callable[[list[str]], onnx.ModelProto], layers: list[str], feeds: list[dict], refs: list,
           metric, budget: float, progress=None, sensitivity_feeds: int = 8, evaluate=None) -> list[Candidate]:
    """Rank `layers` by sensitivity (error when only that layer is quantized), then build candidates
    with the 0, 1, 2, 4, ... most sensitive layers back in float. Returns every candidate, Pareto
    flags set; the caller picks. evaluate(models, feeds, refs) -> their errors (default: one after the
    other here; graphopt/lossy/parallel_eval.py runs them on an executor with the same results)."""
    say = progress or (lambda msg: None)
    evaluate = evaluate or (lambda models, f, r: [error(m, f, r, metric) for m in models])
    sample, sample_refs = feeds[:sensitivity_feeds], refs[:sensitivity_feeds]
    sens = {}
    for start in range(0, len(layers), EVAL_BATCH):
        batch = layers[start:start + EVAL_BATCH]
        models = [build([x for x in layers if x != layer]) for layer in batch]
        sens.update(zip(batch, evaluate(models, sample, sample_refs)))
        say(f"sensitivity: {start + len(batch)}/{len(layers)} layers")
    ranked = sorted(layers, key=lambda x: -sens[x])
    counts, k = [0], 1
    while k < len(layers):
        counts.append(k)
        k *= 2
    candidates = []
    for start in range(0, len(counts), EVAL_BATCH):
        batch = counts[start:start + EVAL_BATCH]
        models = [build(ranked[:k]) for k in batch]
        for k, model, err in zip(batch, models, evaluate(models, feeds, refs)):
            cand = Candidate(f"int8, {k} layer(s) float" if k else "int8, all layers", ranked[:k], err,
                             latency_ms(model, feeds[0]), model.ByteSize(), model)
            candidates.append(cand)
            say(f"candidate '{cand.name}': error {err:.4g}, {cand.latency_ms:.2f} ms")
    _mark_pareto(candidates)
    return candidates


def _latency(c: Candidate):
    return c.latency_ms


def _mark_pareto(candidates: list[Candidate], cost=_latency) -> None:
    for c in candidates:
        c.pareto = not any(o is not c and o.error <= c.error and cost(o) <= cost(c)
                           and (o.error < c.error or cost(o) < cost(c)) for o in candidates)


def choose(candidates: list[Candidate], budget: float, best_effort: bool, cost=_latency) -> Candidate:
    """The cheapest candidate (by `cost`: measured latency unless told otherwise) inside the budget."""
    inside = [c for c in candidates if c.error <= budget]
    if inside:
        return min(inside, key=cost)
    if best_effort:
        return min(candidates, key=lambda c: (c.error, cost(c)))
    best = min(c.error for c in candidates)
    raise BudgetNotMet(f"no candidate meets the accuracy budget {budget:g} (best error {best:.4g}); "
                       "nothing written (use --best-effort to write the most accurate one)")


def table(candidates: list[Candidate], float_latency: float, float_size: int, budget: float) -> str:
    w = max([28] + [len(c.name) + 2 for c in candidates])
    macs = all(c.report is not None for c in candidates)  # pruning candidates: show their MACs too
    lines = [f"{'candidate':{w}}{'error':>10}{'ORT ms':>9}{'speedup':>9}{'size MiB':>10}"
             + (f"{'MMAC':>9}" if macs else "") + "  pareto  in budget",
             f"{'float (reference)':{w}}{0.0:>10.4g}{float_latency:>9.2f}{1.0:>9.2f}{float_size / 2**20:>10.2f}"
             + (f"{candidates[0].report.flops_before / 1e6:>9.0f}" if macs and candidates else "")]
    for c in candidates:
        lines.append(f"{c.name:{w}}{c.error:>10.4g}{c.latency_ms:>9.2f}{float_latency / c.latency_ms:>9.2f}"
                     f"{c.size_bytes / 2**20:>10.2f}" + (f"{c.report.flops_after / 1e6:>9.0f}" if macs else "")
                     + f"  {'yes' if c.pareto else '':6}  {'yes' if c.error <= budget else 'no'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pruning budget
# When the requested prune ratio R breaks the budget, lower it. Candidates, each measured against
# the float model on the evaluation data: R on every layer; R with the 1, 2, 4, ... most sensitive
# layers left unpruned (sensitivity: the error when only that layer is pruned, on the first few
# evaluation feeds); R/2 and R/4 on every layer (not for 2:4, always half). The one written is the
# cheapest inside the budget by multiply-accumulates (_prune_cost), measured latency breaking ties.
def prune_search(model: onnx.ModelProto, ratio: float, mode: str, feeds: list[dict], refs: list, metric,
                 scope: str = "layer", progress=None, sensitivity_feeds: int = 8,
                 evaluate=None, refine=None) -> tuple[list[Candidate], float]:
    """Returns the candidates (Pareto flags set) and the float model's latency, measured with them.
    evaluate: as for search() (one model at a time here: its data shards spread over the workers).
    refine(model, report) -> (model, _) post-processes each candidate (recovery), not the sensitivity probes."""
    from graphopt.passes.prune import prune
    say = progress or (lambda msg: None)
    evaluate = evaluate or (lambda models, f, r: [error(m, f, r, metric) for m in models])
    sample = {k: np.shape(v) for k, v in feeds[0].items()}

    def build(r: float, unpruned=()):
        return prune(model, r, mode, sample, scope, exclude=unpruned)

    full, full_report = build(ratio)
    layers = list(full_report.pruned)
    ranked_layers = [x for x in layers if x not in full_report.coupled]  # those go with their gated layer
    if not layers:
        raise UsageError(f"--prune {ratio:g} ({mode}) prunes no layer of this model: nothing to search "
                         f"({len(full_report.refused)} refused)")

    def label(r: float) -> str:
        return mode if mode == "2:4" else f"{mode} {r:.3g}"  # 2:4 is always half: the ratio plays no part

    specs: list[tuple[str, float, list[str]]] = [(label(ratio), ratio, [])]
    if len(ranked_layers) > 1:  # rank layers by the error each causes alone
        sens = {}
        for i, layer in enumerate(ranked_layers):
            alone, _ = build(ratio, [x for x in ranked_layers if x != layer])
            sens[layer] = evaluate([alone], feeds[:sensitivity_feeds], refs[:sensitivity_feeds])[0]
            if (i + 1) % 10 == 0 or i + 1 == len(ranked_layers):
                say(f"prune sensitivity: {i + 1}/{len(ranked_layers)} layers")
        ranked = sorted(ranked_layers, key=lambda x: -sens[x])
        k = 1
        while k < len(ranked_layers):
            specs.append((f"{label(ratio)}, {k} layer(s) kept", ratio, ranked[:k]))
            k *= 2
    if mode != "2:4":
        specs += [(label(ratio / d), ratio / d, []) for d in (2, 4)]
    candidates = []
    for name, r, unpruned in specs:
        model_r, report = (full, full_report) if (r, unpruned) == (ratio, []) else build(r, unpruned)
        if not report.pruned:
            continue  # a ratio this low removes nothing: the float model itself, not a candidate
        if refine is not None:
            model_r = refine(model_r, report)[0]
        err = evaluate([model_r], feeds, refs)[0]
        candidates.append(Candidate(name, list(unpruned), err, 0.0, model_r.ByteSize(), model_r, report=report))
        say(f"candidate '{name}': error {err:.4g}")
    times = latencies_ms([model] + [c.model for c in candidates], feeds[0])
    for c, ms in zip(candidates, times[1:]):
        c.latency_ms = ms
    _mark_pareto(candidates, _prune_cost)
    return candidates, times[0]


def _prune_cost(c: Candidate):
    """Pruned candidates differ only in layer widths, so their multiply-accumulates rank their speed
    as latency does without its noise (on a shared machine two candidates' timings can swap);
    latency breaks ties."""
    return (c.report.flops_after, c.latency_ms)


def prune_with_budget(model: onnx.ModelProto, ratio: float, mode: str, eval_data, budget: float,
                      metric: str = "top1", best_effort: bool = False, scope: str = "layer", progress=None,
                      evaluate=None, refine=None):
    """Returns (model, PruneReport of the chosen candidate, table text). Raises BudgetNotMet when no
    candidate's error on eval_data is within `budget` (unless best_effort)."""
    from graphopt.lossy.calibrate import feeds_list
    if eval_data is None:
        raise UsageError("--accuracy-budget needs evaluation data (--eval DATA)")
    if budget < 0:
        raise UsageError(f"--accuracy-budget must be >= 0, got {budget}")
    metric_f = metric_fn(metric)
    feeds = feeds_list(eval_data, model, "evaluation")
    refs = reference_outputs(model, feeds)
    cands, float_ms = prune_search(model, ratio, mode, feeds, refs, metric_f, scope, progress, evaluate=evaluate,
                                   refine=refine)
    text = table(cands, float_ms, model.ByteSize(), budget)
    chosen = choose(cands, budget, best_effort, _prune_cost)  # raises BudgetNotMet -> nothing written
    if chosen.error <= budget:
        text += f"\nchosen: '{chosen.name}' ({metric} error {chosen.error:.4g} <= {budget:g})"
    else:
        text += f"\nbest effort: '{chosen.name}' (error {chosen.error:.4g} > {budget:g})"
    return chosen.model, chosen.report, text
