"""Channel pruning with and without teacher-guided recovery on real CNNs with real data: the
PP-OCR text detector, orientation classifier and recognizer from the rapidocr-onnxruntime wheel
(bench/wheel_models.py: installed or fetched), fed rendered lines of real prose.

For each model and ratio: ORT latency (1 thread, interleaved rounds) against the float model, and
agreement with the float model on held-out images (different text lines from the calibration
ones): detector text-mask IoU (pixels > 0.3, rapidocr's threshold), classifier top-1, recognizer
decoded strings equal. Rows: pruned by weight norm; the same plus least-squares recovery
(passes/prune_recover.py) on the calibration images; and (--select act) channels chosen by
activation variance (passes/prune_select.py) plus recovery. The last table names, per model, the
largest ratio whose recovered row meets the issue's bars (IoU >= 0.9, top-1 >= 0.97, strings >= 0.9).
Optionally (--budget) the det accuracy-budget search of graphopt/lossy/budget.py.

    pip install pillow && python -m bench.wheel_models fetch
    python bench/prune_bench.py [--models det,cls,rec] [--ratios 0.3,0.2,0.1] [--calib 32] [--held 48]
                                [--select norm,act] [--quick] [--out bench/results/prune_bench.md]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_bench as common  # noqa: E402  (same data and timing helpers)
from bench.report_io import cpu_line, write_report  # noqa: E402  (int8_bench put the repository root on sys.path)

import graphopt  # noqa: E402
from graphopt.passes.prune import prune  # noqa: E402
from graphopt.passes.prune_recover import recover  # noqa: E402
from graphopt.passes.prune_select import activation_scores  # noqa: E402

MODELS = {"det": ("ppocr_det", common.det_feeds, "text-mask IoU", 0.9),
          "cls": ("ppocr_cls", common.cls_feeds, "top-1", 0.97),
          "rec": ("ppocr_rec", common.rec_feeds, "strings equal", 0.9)}


def score(kind: str, ref: list, got: list) -> tuple[float, float]:
    """(the issue's agreement number, mean cosine similarity of the raw outputs)."""
    cos = float(np.mean([float(a.ravel() @ b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
                         for a, b in zip(ref, got)]))
    if kind == "det":
        inter = sum(np.sum((a > 0.3) & (b > 0.3)) for a, b in zip(ref, got))
        union = sum(np.sum((a > 0.3) | (b > 0.3)) for a, b in zip(ref, got))
        return float(inter / max(union, 1)), cos
    if kind == "rec":
        return float(np.mean([common.ctc_decode(a) == common.ctc_decode(b) for a, b in zip(ref, got)])), cos
    return float(np.mean([np.array_equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(ref, got)])), cos


def bench_model(kind: str, ratios: list, selects: list, n_calib: int, n_held: int, runs: int, log) -> tuple:
    name, make, metric, bar = MODELS[kind]
    lines = common.text_lines()
    calib = make(lines[0::2], n_calib, np.random.default_rng(1))
    held = make(lines[1::2], n_held, np.random.default_rng(2))
    base = graphopt.compile(str(common.wheel_models.find(name)), level=2)
    ref = common.outputs(base, held)
    sample = {"x": held[0]["x"].shape}
    scores = activation_scores(base, calib) if "act" in selects else None
    rows, timed = [], [base]
    for ratio in ratios:
        for select in selects:
            pruned, report = prune(base, ratio, "channel", sample, scores=scores if select == "act" else None)
            if select == "norm":
                rows.append([f"{ratio:.0%} norm, no recovery", ratio, pruned, report, None, 0.0])
                timed.append(pruned)
            t = time.perf_counter()
            refit, rec = recover(base, pruned, report.kept, calib, progress=lambda m: log(f"    {kind} {m}"))
            rows.append([f"{ratio:.0%} {select} + recovery", ratio, refit, report, rec, time.perf_counter() - t])
            if select != "norm":
                timed.append(refit)
            log(f"  {kind} {ratio:.0%} {select}: recovery {rows[-1][-1]:.0f} s, {len(rec.layers)} layers")
    times = np.asarray(common.interleaved_latency_ms(timed, held[0], runs))
    speed = {id(m): float(np.median(times[:, 0] / times[:, i])) for i, m in enumerate(timed)}
    best = {id(m): float(times[:, i].min()) for i, m in enumerate(timed)}
    table = [f"### {name} ({metric} bar {bar:g}; {len(calib)} calibration / {len(held)} held-out images)", "",
             f"| model | layers pruned | MAC/sample | ORT ms (best) | speedup (median of rounds) | {metric} | "
             "cosine | recovery s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table.append(f"| float (graphopt -O2) | - | {rows[0][3].flops_before / 1e6:.0f}M | {best[id(base)]:.2f} | 1.00 | "
                 f"1.0000 | 1.0000 | - |")
    met = []
    for label, ratio, model, report, rec, secs in rows:
        timing_model = model if id(model) in speed else next(r[2] for r in rows if r[1] == ratio and r[4] is None)
        agree, cos = score(kind, ref, common.outputs(model, held))
        table.append(f"| {label} | {len(report.pruned)} | {report.flops_after / 1e6:.0f}M | {best[id(timing_model)]:.2f} "
                     f"| {speed[id(timing_model)]:.2f} | {agree:.4f} | {cos:.4f} | {secs:.0f} |")
        log(table[-1])
        if rec is not None and agree >= bar:
            met.append((ratio, label, speed[id(timing_model)], agree))
    best_row = max(met, default=None)
    return table, (name, metric, bar, best_row), rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="det,cls,rec")
    ap.add_argument("--ratios", default="0.3,0.2,0.1")
    ap.add_argument("--select", default="norm,act", help="channel choice: norm (weights), act (activation variance)")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--held", type=int, default=48)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="8 calibration / 8 held-out images, 5 rounds")
    ap.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "prune_bench.md"))
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    names = [MODELS[k][0] for k in kinds]
    if common.missing_models_message(names):
        print(common.missing_models_message(names), file=sys.stderr)
        return 2
    if args.quick:
        args.calib, args.held, args.runs = 8, 8, 5
    ratios = [float(r) for r in args.ratios.split(",")]
    selects = [s.strip() for s in args.select.split(",")]

    def log(msg):
        print(msg, flush=True)

    start = time.perf_counter()
    out = [f"# channel pruning with teacher-guided recovery ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
           f"{platform.machine()}, {cpu_line()}, onnxruntime {ort.__version__}, 1 thread. The machine was shared "
           "with other jobs (load average above its 2 cores): latency is the median of per-round ratios over "
           f"{args.runs} interleaved rounds, best ms beside it. Recovery time is wall time on that busy machine. "
           "Agreement is on held-out rendered text lines that the calibration images do not contain. "
           "No fine-tuning: recovery is the least-squares refit only.", ""]
    summary = ["| model | bar | largest ratio meeting it (with recovery) | speedup | agreement |", "|---|---|---|---:|---:|"]
    for kind in kinds:
        log(f"{kind}:")
        table, (name, metric, bar, best_row), _ = bench_model(kind, ratios, selects, args.calib, args.held,
                                                              args.runs, log)
        out += table + [""]
        if best_row:
            summary.append(f"| {name} | {metric} >= {bar:g} | {best_row[1]} | {best_row[2]:.2f} | {best_row[3]:.4f} |")
        else:
            summary.append(f"| {name} | {metric} >= {bar:g} | none of {', '.join(f'{r:.0%}' for r in ratios)} | - | - |")
    out += ["### largest ratio meeting the bar", ""] + summary
    out += ["", f"total bench time {time.perf_counter() - start:.0f} s"]
    write_report("\n".join(out) + "\n", args.out)
    print("\n".join(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
