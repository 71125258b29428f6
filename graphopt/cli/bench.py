"""`graphopt bench A.onnx [B.onnx ...]`: models side by side, in graphopt's runtime and/or ONNX Runtime.

All models get the same inputs (cli/feeds.py, made for the first model). Runs are interleaved: each
round runs every (model, runtime, threads) case once, the starting case rotating, so a load change on
a shared machine hits every case alike. Printed: median/min/max per case and, per runtime and thread
count, each model's median time over the first model's (ratio < 1: faster). ONNX Runtime cannot load
graphopt's own fused ops (`compile --target graphopt`): such a model is timed in graphopt's runtime
only, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from graphopt.cli import common, feeds
from graphopt.errors import GraphoptError, Unsupported, UsageError

NO_ORT = "n/a: ai.graphopt ops run only in graphopt's runtime"


def _threads(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts >= 1 like 1 or 1,4, got '{text}'")
    return values


def add_bench_command(sub) -> None:
    b = sub.add_parser("bench", help="time models side by side (graphopt's runtime and/or ONNX Runtime)",
                       description=__doc__.split("\n\n")[0] + " " + " ".join(__doc__.split("\n\n")[1].split()))
    b.add_argument("models", nargs="+", metavar="MODEL", help="one or more models; ratios are against the first")
    b.add_argument("--runtime", choices=["graphopt", "ort", "both"],
                   help="where to run (default: graphopt for one model, both for several)")
    b.add_argument("--compare", choices=["ort"], help="same as --runtime both")
    b.add_argument("--runs", type=int, default=20, help="timed rounds (default 20)")
    b.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    b.add_argument("--threads", type=_threads, default=None, metavar="T[,T...]",
                   help="intra-op threads for both runtimes; a list (1,4) times each")
    b.add_argument("--profile", action="store_true", help="also print graphopt's time per op type (one profiled run)")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(handler=cmd_bench)
    return b


def _ort_session(model, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _cases(args, models: dict) -> tuple[list, list]:
    """(path, runtime, threads, run function, graphopt Session or None, feed) per case; and the skipped cases."""
    from graphopt.runtime.session import Session
    runtime = args.runtime or ("both" if args.compare == "ort" or len(models) > 1 else "graphopt")
    runtimes = ["graphopt", "onnxruntime"] if runtime == "both" else [{"ort": "onnxruntime"}.get(runtime, runtime)]
    cases, skipped = [], []
    for threads in args.threads or [None]:
        for rt in runtimes:
            for path, (model, feed) in models.items():
                if rt == "onnxruntime" and common.has_graphopt_ops(model):
                    skipped.append((path, rt, threads, NO_ORT))
                    continue
                try:
                    sess = Session(model, threads=threads, **common.session_options(args)) if rt == "graphopt" \
                        else _ort_session(model, threads)
                except Exception as e:  # noqa: BLE001  a runtime that cannot load this model gets a row saying so
                    if rt == "graphopt" and not isinstance(e, Unsupported):
                        raise
                    skipped.append((path, rt, threads, f"n/a: {rt} cannot load it: {str(e).splitlines()[0]}"))
                    continue
                run = (lambda s, f: lambda: s.run(None, f))(sess, feed)
                cases.append((path, rt, threads, run, sess if rt == "graphopt" else None, feed))
    return cases, skipped


def _feeds(args, paths: list) -> dict:
    """path -> (model, feed): the first model's inputs, handed to each model by name."""
    models = {p: common.load_model_file(p) for p in dict.fromkeys(paths)}
    first = models[paths[0]]
    feed = feeds.feeds_for(args, first, quiet=args.json)[0]
    out = {}
    for path, model in models.items():
        inits = {t.name for t in model.graph.initializer}
        names = [vi.name for vi in model.graph.input if vi.name not in inits]
        missing = [n for n in names if n not in feed]
        if missing:
            raise UsageError(f"{path}: input '{missing[0]}' is not an input of {paths[0]} (bench feeds every model "
                             f"the first one's inputs)")
        out[path] = (model, {n: feed[n] for n in names})
    return out


def cmd_bench(args) -> int:
    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    models = _feeds(args, args.models)
    cases, skipped = _cases(args, models)
    if not cases:
        raise GraphoptError("nothing to time: " + "; ".join(f"{p} [{rt}] {why}" for p, rt, _, why in skipped))
    times = [[] for _ in cases]
    with feeds.blame_random_inputs(args):
        for round_ in range(args.warmup + args.runs):
            for k in range(len(cases)):
                i = (k + round_) % len(cases)  # rotate the starting case
                t0 = time.perf_counter()
                try:
                    cases[i][3]()
                except GraphoptError:
                    raise
                except Exception as e:  # ORT refusing the inputs: one line naming the model, not a traceback
                    raise GraphoptError(f"{cases[i][0]} [{cases[i][1]}] fails on these inputs: "
                                        f"{str(e).splitlines()[0]}") from None
                if round_ >= args.warmup:
                    times[i].append(time.perf_counter() - t0)
    rows = []
    for (path, rt, threads, *_), ts in zip(cases, times):
        ms = [t * 1e3 for t in ts]
        base = next(j for j, c in enumerate(cases) if c[1:3] == (rt, threads))  # first model, same runtime/threads
        rows.append({"model": path, "runtime": rt, "threads": threads, "median_ms": statistics.median(ms),
                     "min_ms": min(ms), "max_ms": max(ms), "runs": len(ms),
                     "ratio_vs_first": statistics.median(ms) / statistics.median(t * 1e3 for t in times[base])
                     if cases[base][0] == args.models[0] else None})
    rows += [{"model": p, "runtime": rt, "threads": th, "skipped": why} for p, rt, th, why in skipped]
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return 0
    _print(args, rows, cases)
    return 0


def _print(args, rows: list, cases: list) -> None:
    single = len(dict.fromkeys(args.models)) == 1
    for row in rows:
        label = row["runtime"] if single else f"{row['model']} [{row['runtime']}" + \
            (f", {row['threads']} thread{'s' if row['threads'] > 1 else ''}]" if row["threads"] else "]")
        if "skipped" in row:
            print(f"{label}: {row['skipped']}")
            continue
        ratio = f", {row['ratio_vs_first']:.2f}x the first model" if not single and row["ratio_vs_first"] \
            and row["model"] != args.models[0] else ""
        print(f"{label}: median {row['median_ms']:.3f} ms, min {row['min_ms']:.3f} ms, max {row['max_ms']:.3f} ms "
              f"({row['runs']} runs{ratio})")
    if single:
        by_rt = {r["runtime"]: r for r in rows if "skipped" not in r and r["threads"] == (args.threads or [None])[0]}
        if {"graphopt", "onnxruntime"} <= set(by_rt):
            print(f"ratio graphopt/onnxruntime (median): "
                  f"{by_rt['graphopt']['median_ms'] / by_rt['onnxruntime']['median_ms']:.2f}x")
    for path, rt, threads, _, sess, feed in cases:  # graphopt's memory (and --profile) for each model, once
        if sess is None or threads != (args.threads or [None])[0]:
            continue
        sess.run(None, feed, profile=True)
        print(f"{'' if single else path + ': '}peak activation memory: {sess.peak_activation_bytes / 2**20:.2f} MiB "
              f"(intermediate values; weights and inputs not counted)")
        if args.profile:
            print(sess.last_profile.format())
        if args.threads and not sess.threads_applied:
            print("note: --threads could not cap NumPy's BLAS threads here (no threadpoolctl, no OpenBLAS found)")
