"""Channel pruning at 30% on a real CNN (PP-OCRv4 text detector from the rapidocr-onnxruntime
wheel, found through bench/wheel_models.py: installed or fetched): ORT latency before/after
(ratio printed), parameters, FLOPs, and the output error on rendered real text (no fine-tuning:
the error is what pruning alone costs). A last row runs the accuracy-budget search (--budget,
cosine error): it picks the candidate on half of the images and every error in the table is
measured on the other half.

    pip install pillow && python -m bench.wheel_models fetch
    python bench/prune_bench.py [--ratio 0.3] [--budget 0.05] [--quick] [--out bench/results/prune_bench.md]
"""
from __future__ import annotations

import argparse
import re
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_bench as common  # noqa: E402  (same data and timing helpers)
from bench.report_io import write_report  # noqa: E402  (int8_bench put the repository root on sys.path)

import graphopt  # noqa: E402
from graphopt.lossy.budget import BudgetNotMet, prune_with_budget  # noqa: E402
from graphopt.passes.prune import prune  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--budget", type=float, default=0.05,
                    help="cosine-error budget of the search row (0: skip the search)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "prune_bench.md"))
    args = ap.parse_args(argv)
    if common.missing_models_message(["ppocr_det"]):
        print(common.missing_models_message(["ppocr_det"]), file=sys.stderr)
        return 2
    path = common.wheel_models.find("ppocr_det")
    feeds = common.det_feeds(common.text_lines()[1::2], 4 if args.quick else 16, np.random.default_rng(2))
    select, held = feeds[::2], feeds[1::2]  # the search sees `select` only; errors are on `held`
    runs = 10 if args.quick else 30
    base = graphopt.compile(str(path), level=2)
    rows = [("float (graphopt -O2)", base, None)]
    for mode in ("channel", "unstructured"):
        pruned, report = prune(base, args.ratio, mode, {"x": feeds[0]["x"].shape})
        rows.append((f"{mode} {args.ratio:.0%}", pruned, report))
        print(report.to_text().splitlines()[0] + "\n" + report.to_text().splitlines()[1], flush=True)
    search = ""
    if args.budget:
        try:
            chosen, report, search = prune_with_budget(base, args.ratio, "channel", select, args.budget, "cosine",
                                                       progress=lambda msg: print(f"  {msg}", flush=True))
            name = re.search(r"chosen: '([^']*)'", search).group(1)
            rows.append((f"budget {args.budget:g}: {name}", chosen, report))
        except BudgetNotMet as e:
            search = str(e)
        print(search, flush=True)
    ref = common.outputs(base, held)
    times = np.asarray(common.interleaved_latency_ms([model for _, model, _ in rows], feeds[0], runs))
    best = times.min(axis=0)  # (runs, models): best of the rounds, and the median per-round ratio to float
    median_ratio = np.median(times[:, :1] / times, axis=0)
    lines = [f"# channel pruning bench ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
             f"onnxruntime {ort.__version__}, 1 thread)", "",
             f"PP-OCRv4 det, input {list(feeds[0]['x'].shape)}, {len(feeds)} rendered real-text images: the "
             f"budget search selects on {len(select)}, every error below is on the other {len(held)}; "
             f"ORT over {runs} rounds, each model once per round (start rotating): best ms, speedup best vs "
             "best and the median of per-round ratios. No fine-tuning after pruning.", "",
             "| model | layers pruned / refused | params | MAC/sample | ORT ms | speedup (best) | speedup (median) "
             "| cosine vs float | mask agree |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (label, model, report), ms, ratio in zip(rows, best, median_ratio):
        agree = common.agreement("det", ref, common.outputs(model, held)) if report else {"cosine": 1.0,
                                                                                           "mask agree": 1.0}
        counts = f"{len(report.pruned)} / {len(report.refused)}" if report else "-"
        params = report.params_after if report else rows[1][2].params_before
        macs = report.flops_after if report else rows[1][2].flops_before
        lines.append(f"| {label} | {counts} | {params:,} | {macs / 1e6:.0f}M | {ms:.2f} | {best[0] / ms:.2f} | "
                     f"{ratio:.2f} | {agree['cosine']:.4f} | {agree['mask agree']:.4f} |")
        print(lines[-1], flush=True)
    if search:
        lines += ["", f"Budget search (cosine error <= {args.budget:g} on the {len(select)} selection images; "
                  "latency here is the search's own quick measure):", "", "```", search, "```"]
    write_report("\n".join(lines) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
