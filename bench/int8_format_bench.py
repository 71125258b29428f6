"""Which int8 format ONNX Runtime runs fastest on THIS CPU: S8S8 vs U8S8, 8-bit vs 7-bit weights.

The measurements behind passes/quantize/cpu_format.py's decision table. For each PP-OCR model of the
rapidocr wheel (detector, classifier, recognizer), one calibration (mse ranges, the default; rendered real text),
then graphopt's static int8 QDQ model in four forms; each is timed in ORT (1 thread, interleaved
rounds, the starting model rotating) against the float model, its agreement with the float model
measured on held-out rendered text, and ORT's optimized graph inspected (integer kernels, float ops
left between quantized ops).

    python -m bench.wheel_models fetch
    python bench/int8_format_bench.py [--quick] [--only det|cls|rec] [--out bench/results/int8_format_bench.md]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import graphopt  # noqa: E402
from graphopt import lossy  # noqa: E402
from graphopt.lossy.calibrate import calibrate  # noqa: E402
from graphopt.passes.quantize import plan_static  # noqa: E402
from graphopt.passes.quantize.common import at_least_opset  # noqa: E402
from graphopt.passes.quantize.cpu_format import cpu_flags, describe_cpu  # noqa: E402
from graphopt.passes.quantize.ort_fusion import fusion_summary  # noqa: E402
from bench import wheel_models  # noqa: E402
from bench.int8_bench import MODELS, agreement, interleaved_latency_ms, outputs, text_lines  # noqa: E402
from bench.report_io import write_report  # noqa: E402

FORMATS = [("S8S8, 8-bit weights", "int8", 8), ("S8S8, 7-bit weights", "int8", 7),
           ("U8S8, 8-bit weights", "uint8", 8), ("U8S8, 7-bit weights", "uint8", 7)]


def float_model(path) -> onnx.ModelProto:
    original = onnx.load(path)
    for vi in list(original.graph.input) + list(original.graph.output):  # the cls model declares -1 dims
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = "N"
    return at_least_opset(graphopt.compile(original, level=2), 13)


def bench_formats(name, kind, path, calib, evals, runs):
    base = float_model(path)
    # one calibration for all four forms (the uint8 plan's tensors are a superset of the int8 plan's)
    # (with the uint8-only rewrites applied: they are float-exact, and S8S8 reads a subset of the ranges)
    friendly, _ = lossy.int8_friendly(base, "uint8")
    ranges = calibrate(friendly, plan_static(friendly, const_operands=True).tensors, calib, method="mse")
    rows = [("float", base)]
    for label, act, bits in FORMATS:
        q, _ = lossy.int8_static(base, None, ranges=ranges, activations=act, weight_bits=bits)
        rows.append((label, q))
    times = interleaved_latency_ms([m for _, m in rows], evals[0], runs)
    best, med = times.min(axis=0), np.median(times, axis=0)
    ref = outputs(base, evals)
    table = []
    for k, (label, m) in enumerate(rows):
        ratio = float(np.median(times[:, k] / times[:, 0]))
        agree = agreement(kind, ref, outputs(m, evals)) if k else {}
        fused = fusion_summary(m) if k else None
        table.append((label, best[k], med[k], ratio, agree, fused))
        print(f"  {name:10} {label:22} {best[k]:8.2f} ms (median {med[k]:8.2f}) latency/float {ratio:5.3f}  "
              + "  ".join(f"{a} {v:.4f}" for a, v in agree.items()), flush=True)
        if fused:
            print(f"      {fused.to_text()}", flush=True)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer feeds and timing rounds")
    ap.add_argument("--only", help="det, cls or rec")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_format_bench.md"))
    args = ap.parse_args(argv)
    flags = cpu_flags()
    cpu = describe_cpu(flags)
    print(f"CPU: {cpu}", flush=True)
    lines = text_lines()
    calib_lines, eval_lines = lines[0::2], lines[1::2]
    n_cal, n_eval, runs = (8, 8, 10) if args.quick else (16, 24, 20)
    runs = args.runs or runs
    report = [f"# int8 format bench ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
              f"onnxruntime {ort.__version__}, 1 thread)", "", f"CPU: {cpu}", "",
              f"{n_cal} calibration / {n_eval} evaluation feeds of rendered real text (disjoint lines), mse "
              f"ranges; latency in ORT over {runs} interleaved rounds; 'latency/float' is the median of per-round "
              "ratios to the float model; 'float ops between' counts float compute ops ORT leaves on a path "
              "DequantizeLinear -> ... -> QuantizeLinear in its optimized graph.", ""]
    for title, kind, model_name, make, _ in MODELS:
        if args.only and args.only != kind:
            continue
        path = wheel_models.find(model_name)
        if path is None:
            print(f"needs {model_name}: {wheel_models.FETCH_HINT}", file=sys.stderr)
            return 2
        calib = make(calib_lines, n_cal, np.random.default_rng(1))
        evals = make(eval_lines, n_eval, np.random.default_rng(2))
        table = bench_formats(kind, kind, path, calib, evals, runs)
        report += [f"## {title}", "", "| form | ORT ms (best) | ORT ms (median) | latency/float | agreement with float "
                   "| integer kernels | float ops between |", "|---|---:|---:|---:|---|---:|---:|"]
        for label, b, m, ratio, agree, fused in table:
            fb = f"{fused.integer_kernels} | {sum(fused.float_between.values())}" if fused else " | "
            report.append(f"| {label} | {b:.2f} | {m:.2f} | {ratio:.3f} | "
                          + ", ".join(f"{a} {v:.4f}" for a, v in agree.items()) + f" | {fb} |")
        report.append("")
    write_report("\n".join(report) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
