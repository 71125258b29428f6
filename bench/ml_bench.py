"""scikit-learn models (skl2onnx, ai.onnx.ml ops): graphopt.Session vs ONNX Runtime, 1 and 1000 rows.

The models are tests/unit/ml_models.py's (synthetic data, fixed seeds: random forests, gradient
boosting, logistic/linear regression, SVMs, a StandardScaler + OneHotEncoder pipeline, Normalizer,
Binarizer, a ZipMap output). Each is timed in one process, graphopt and ORT (all graph
optimizations, the same thread count) taking turns run by run, so load from other processes falls
on both alike. Reported: median latency per runtime, graphopt / ORT (below 1 = graphopt faster),
and whether every output matched ORT (labels equal, scores within 1e-5 relative to the largest).
Needs scikit-learn and skl2onnx (pip install ".[test]").

    python bench/ml_bench.py                         # every model, batches 1 and 1000, 1 thread
    python bench/ml_bench.py --models forest --rows 1000 --runs 50
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from bench.report_io import write_report  # noqa: E402
from bench.report_io import cpu_line  # noqa: E402
from bench.runtime_bench import fmt_ms, geomean, interleaved_medians, ort_session  # noqa: E402

TARGET = 1.5  # issue 21: at most 1.5x ORT's latency


def rows_of(x, n, seed=1):
    """n rows drawn from the model's data (with replacement), so batches of any size are realistic."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=n)
    return np.ascontiguousarray(x[idx])


def same_outputs(got, want) -> bool:
    for g, w in zip(got, want):
        if isinstance(w, list):
            if len(g) != len(w) or any(list(a) != list(b) or not np.allclose(list(a.values()), list(b.values()),
                                                                           rtol=1e-5, atol=1e-6)
                                       for a, b in zip(g, w)):
                return False
        elif w.dtype.kind in "iuOUSb":
            if not (g.shape == w.shape and (g == w).all()):
                return False
        elif g.shape != w.shape or np.abs(g.astype(np.float64) - w).max() > 1e-5 * max(1.0, np.abs(w).max()):
            return False
    return True


def bench_one(name, batches, args):
    import graphopt
    from ml_models import build
    model, x = build(name)
    ops = sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"})
    sess = graphopt.Session(model, threads=args.threads)
    ort = ort_session(model, args.threads)
    input_name = model.graph.input[0].name
    out = []
    for n in batches:
        feed = {input_name: rows_of(x, n)}
        ok = same_outputs(sess.run(None, feed), ort.run(None, feed))
        med = interleaved_medians({"graphopt": lambda: sess.run(None, feed), "ort": lambda: ort.run(None, feed)},
                                  runs=args.runs, warmup=args.warmup, min_seconds=args.min_seconds,
                                  max_runs=args.max_runs)
        out.append({"model": name, "ops": ", ".join(ops), "rows": n, "graphopt": med["graphopt"],
                    "ort": med["ort"], "ratio": med["graphopt"] / med["ort"], "match": ok})
        print(f"{name:32s} rows={n:5d} graphopt {fmt_ms(med['graphopt']):>8s} ms  ORT {fmt_ms(med['ort']):>8s} ms  "
              f"ratio {med['graphopt'] / med['ort']:.2f}  match={ok}", flush=True)
    return out


def table(results, args) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# ml_bench: scikit-learn models, graphopt.Session vs ONNX Runtime",
             "",
             f"{when}; {cpu_line()}, {os.cpu_count()} cores; {args.threads} thread(s); medians of "
             f"interleaved runs (at least {args.runs}, up to {args.max_runs}, until {args.min_seconds} s). "
             f"Ratio = graphopt / ORT (below 1: graphopt faster); target <= {TARGET}x. "
             f"`python bench/ml_bench.py {' '.join(sys.argv[1:])}`".rstrip() +
             f" Load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min).",
             "",
             "| model | ai.onnx.ml ops | rows | graphopt ms | ORT ms | ratio | matches ORT |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        flag = "" if r["ratio"] <= TARGET else " **>1.5x**"
        lines.append(f"| {r['model']} | {r['ops']} | {r['rows']} | {fmt_ms(r['graphopt'])} | {fmt_ms(r['ort'])} | "
                     f"{r['ratio']:.2f}{flag} | {'yes' if r['match'] else '**no**'} |")
    lines.append("")
    for n in sorted({r["rows"] for r in results}):
        ratios = [r["ratio"] for r in results if r["rows"] == n]
        over = [r["model"] for r in results if r["rows"] == n and r["ratio"] > TARGET]
        lines.append(f"- {n} row(s): geomean ratio {geomean(ratios):.2f}, worst {max(ratios):.2f}; "
                     f"above {TARGET}x: {', '.join(over) if over else 'none'}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    from ml_models import NAMES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated substrings of model names (default: all)")
    p.add_argument("--rows", default="1,1000", help="batch sizes, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--max-runs", type=int, default=2000)
    p.add_argument("--min-seconds", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ml_bench.md"))
    args = p.parse_args(argv)
    selected = [s for s in args.models.split(",") if s]
    names = [n for n in NAMES if not selected or any(s in n for s in selected)]
    batches = [int(b) for b in args.rows.split(",")]
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn deprecation notices while fitting
        for name in names:
            results += bench_one(name, batches, args)
    text = table(results, args)
    print(text)
    if args.out:
        write_report(text, args.out)
    return 0 if all(r["match"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
