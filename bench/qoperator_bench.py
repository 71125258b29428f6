"""Quantized models as onnxruntime.quantization writes them: graphopt's runtime vs ONNX Runtime.

Each light-zoo model is quantized once with `quantize_static` (uint8 activations, int8 weights per
channel in 7 bits, one seeded random calibration batch) in QOperator format (QLinearConv,
QLinearMatMul and the com.microsoft QLinear* ops) and in QDQ format, then timed in one process,
runtimes taking turns run by run: graphopt Session on the model as written and after
graphopt.compile(level=2), and ONNX Runtime with all graph optimizations (which fuses QDQ islands
into its integer kernels), the same thread count. Reported: median latencies, graphopt -O2 / ORT
(below 1 = graphopt faster) and the largest difference from ORT's output relative to its largest
value. Weights in 7 bits (reduce_range) because ORT's uint8 x int8 kernels on AVX2 CPUs without
VNNI saturate sums of product pairs of full-range weights (its outputs then differ from the spec's,
tests/unit/test_integer_ops_exact.py). graphopt accumulates the integer products exactly, in
float32 GEMMs where a per-layer bound allows, else in float64 (kernels/cpu/quant.py).

    python bench/qoperator_bench.py                       # squeezenet, shufflenet, resnet50, densenet121, inception_v1
    python bench/qoperator_bench.py --models resnet50 --formats qoperator --runs 5
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
from pathlib import Path

import onnx
import onnx.version_converter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runtime_bench import (LIGHT, fmt_ms, geomean, interleaved_medians, max_rel_error,  # noqa: E402
                                 ort_session)
from bench.report_io import cpu_line, write_report  # noqa: E402

DEFAULT_MODELS = "squeezenet,shufflenet,resnet50,densenet121,inception_v1"


def quantized(name: str, fmt: str, workdir: str) -> tuple[onnx.ModelProto, dict]:
    """(the light-zoo model `name` quantized by ORT in format `fmt`, a feed for it)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import graphopt
    from graphopt.verify import random_feed
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    if model.opset_import[0].version < 13:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
        model = onnx.version_converter.convert_version(model, 13)
    model = graphopt.compile(model, level=1)  # shapes inferred for ORT's tool
    feed = random_feed(model, seed=0, default_dim=1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([feed])

        def get_next(self):
            return next(self.batches, None)
    src, dst = os.path.join(workdir, f"{name}.onnx"), os.path.join(workdir, f"{name}-{fmt}.onnx")
    onnx.save(model, src)
    logging.disable(logging.WARNING)  # ORT's tool logs a preprocessing advice per model
    quantize_static(src, dst, Reader(), per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ)
    return onnx.load(dst), feed


def bench(name, fmt, args, workdir) -> dict:
    import graphopt
    model, feed = quantized(name, fmt, workdir)
    raw = graphopt.Session(model, threads=args.threads)
    o2 = graphopt.Session(graphopt.compile(model, level=2), threads=args.threads)
    ort = ort_session(model, args.threads)
    err = max_rel_error(o2.run(None, feed)[0], ort.run(None, feed)[0])
    times = interleaved_medians({"raw": lambda: raw.run(None, feed), "O2": lambda: o2.run(None, feed),
                                 "ort": lambda: ort.run(None, feed)}, args.runs, args.warmup, args.min_seconds)
    return {"name": name, "fmt": fmt, "err": err, **times}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated light-zoo names (default {DEFAULT_MODELS})")
    ap.add_argument("--formats", default="qoperator,qdq", help="qoperator, qdq or both (default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--markdown-out", help="write the table to this file")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            for fmt in args.formats.split(","):
                r = bench(name, fmt, args, workdir)
                rows.append(r)
                print(f"{name} {fmt}: graphopt {fmt_ms(r['raw'])} ms, -O2 {fmt_ms(r['O2'])} ms, ORT {fmt_ms(r['ort'])} ms",
                      flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Quantized-model benchmark, {when}: {cpu_line()}, {args.threads} thread(s), median of >= {args.runs} runs "
             f"(runtimes in turn), load average {os.getloadavg()[0]:.2f} at the end.", "",
             "| model | format | graphopt ms | graphopt -O2 ms | ORT ms | O2/ORT | err vs ORT |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['fmt']} | {fmt_ms(r['raw'])} | {fmt_ms(r['O2'])} | {fmt_ms(r['ort'])} | "
              f"{r['O2'] / r['ort']:.2f} | {r['err']:.1e} |" for r in rows]
    lines.append("")
    for fmt in args.formats.split(","):
        lines.append(f"geomean graphopt -O2 / ORT, {fmt}: {geomean([r['O2'] / r['ort'] for r in rows if r['fmt'] == fmt]):.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown_out:
        write_report(text, args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
