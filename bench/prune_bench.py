"""Channel pruning at 30% on a real CNN (PP-OCRv4 text detector from the rapidocr-onnxruntime
wheel): ORT latency before/after (ratio printed), parameters, FLOPs, and the output error on
rendered real text (no fine-tuning: the error is what pruning alone costs).

    pip install pillow && pip install --no-deps rapidocr-onnxruntime==1.4.4
    python bench/prune_bench.py [--ratio 0.3] [--quick] [--out bench/results/prune_bench.md]
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_bench as common  # noqa: E402  (same data and timing helpers)

import graphopt  # noqa: E402
from graphopt.passes.prune import prune  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "prune_bench.md"))
    args = ap.parse_args(argv)
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        print("needs: pip install pillow && pip install --no-deps rapidocr-onnxruntime==1.4.4", file=sys.stderr)
        return 2
    path = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    feeds = common.det_feeds(common.text_lines()[1::2], 4 if args.quick else 16, np.random.default_rng(2))
    runs = 10 if args.quick else 30
    base = graphopt.compile(str(path), level=2)
    rows = [("float (graphopt -O2)", base, None)]
    for mode in ("channel", "unstructured"):
        pruned, report = prune(base, args.ratio, mode, {"x": feeds[0]["x"].shape})
        rows.append((f"{mode} {args.ratio:.0%}", pruned, report))
        print(report.to_text().splitlines()[0] + "\n" + report.to_text().splitlines()[1], flush=True)
    ref = common.outputs(base, feeds)
    times = common.interleaved_latency_ms([model for _, model, _ in rows], feeds[0], runs)
    base_ms = times[0]
    lines = [f"# channel pruning bench ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
             f"onnxruntime {ort.__version__}, 1 thread)", "",
             f"PP-OCRv4 det, input {list(feeds[0]['x'].shape)}, {len(feeds)} rendered real-text images; "
             f"ORT best of {runs} runs. No fine-tuning after pruning.", "",
             "| model | layers pruned / refused | params | MAC/sample | ORT ms | speedup | cosine vs float | mask agree |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (label, model, report), ms in zip(rows, times):
        agree = common.agreement("det", ref, common.outputs(model, feeds)) if report else {"cosine": 1.0,
                                                                                           "mask agree": 1.0}
        counts = f"{len(report.pruned)} / {len(report.refused)}" if report else "-"
        params = report.params_after if report else rows[1][2].params_before
        macs = report.flops_after if report else rows[1][2].flops_before
        lines.append(f"| {label} | {counts} | {params:,} | {macs / 1e6:.0f}M | {ms:.2f} | {base_ms / ms:.2f} | "
                     f"{agree['cosine']:.4f} | {agree['mask agree']:.4f} |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
