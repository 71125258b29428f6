"""int4 weight-only quantization: GPTQ against round-to-nearest on a BERT-class encoder with real
weights (all-MiniLM-L6-v2, bench/minilm_onnx.py) and real sentences, and decode-step latency on a
decoder-style stack of memory-bound MatMuls (batch 1, one token) built here.

Encoder: GPTQ statistics from 64 sentences (even lines of the standard library's docstrings),
agreement on 128 others (odd lines): cosine of the pooled embeddings with the float model's (min
and mean), model size, ORT latency (1 thread, interleaved rounds, median of per-round ratios).
Decoder: ORT latency of one decode step, float vs MatMulNBits (accuracy_level 0: float compute,
4: int8 compute), same interleaving.

    pip install tokenizers && python bench/minilm_onnx.py fetch
    python bench/int4_bench.py [--runs 30] [--out bench/results/int4_bench.md]
"""
from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_bench as common  # noqa: E402  (text lines, sessions, interleaved timing)
import minilm_onnx  # noqa: E402
from bench.report_io import cpu_line, write_report  # noqa: E402

from graphopt.passes.quantize.common import ModelView, select_nodes  # noqa: E402
from graphopt.passes.quantize.gptq import collect_hessians  # noqa: E402
from graphopt.passes.quantize.int4 import apply_int4  # noqa: E402


def cosines(ref, got):
    return np.array([float(a.ravel() @ b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(ref, got)])


def decoder(width=1024, layers=6, seed=0) -> onnx.ModelProto:
    """x [1, 1, width] -> layers x (x + W2 relu(W1 x)): a decode step's MatMuls with 8 * width^2 weights each."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w1 = (rng.normal(0, 1, (width, 4 * width)) / np.sqrt(width)).astype(np.float32)
        w2 = (rng.normal(0, 1, (4 * width, width)) / np.sqrt(4 * width)).astype(np.float32)
        inits += [numpy_helper.from_array(w1, f"w1_{i}"), numpy_helper.from_array(w2, f"w2_{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w1_{i}"], [f"u{i}"], name=f"up{i}"),
                  helper.make_node("Relu", [f"u{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"d{i}"], name=f"down{i}"),
                  helper.make_node("Add", [x, f"d{i}"], [f"x{i}"])]
        x = f"x{i}"
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def with_accuracy_level(model: onnx.ModelProto, level: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            n.attribute.append(helper.make_attribute("accuracy_level", level))
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "int4_bench.md"))
    args = ap.parse_args(argv)
    if not minilm_onnx.available():
        print(f"all-MiniLM-L6-v2 weights not found: run {minilm_onnx.FETCH_HINT} (needs: pip install tokenizers)",
              file=sys.stderr)
        return 2
    lines = common.text_lines()
    calib, held = minilm_onnx.tokenize(lines[0::2][:64], 32), minilm_onnx.tokenize(lines[1::2][:128], 32)
    model = minilm_onnx.build(32)
    nodes = select_nodes(ModelView(model), {"MatMul", "Gemm"}, (), False).quantize
    hessians = collect_hessians(model, nodes, calib, progress=lambda m: print(f"  {m}", flush=True))
    bs = args.block_size
    rows = [("float", model)]
    rows.append((f"int4 RTN, DequantizeLinear (block {bs})", apply_int4(model, bs, "onnx")[0]))
    rows.append((f"int4 GPTQ, DequantizeLinear (block {bs})", apply_int4(model, bs, "onnx", hessians=hessians)[0]))
    rows.append((f"int4 GPTQ act-order, DequantizeLinear (block {bs})",
                 apply_int4(model, bs, "onnx", hessians=hessians, act_order=True)[0]))
    rows.append((f"int4 RTN, MatMulNBits (block {bs})", apply_int4(model, bs, "ort")[0]))
    gptq_ort = apply_int4(model, bs, "ort", hessians=hessians)[0]
    rows.append((f"int4 GPTQ, MatMulNBits (block {bs})", gptq_ort))
    rows.append((f"int4 GPTQ, MatMulNBits accuracy_level 4 (block {bs})", with_accuracy_level(gptq_ort, 4)))
    ref = common.outputs(model, held)
    times = np.asarray(common.interleaved_latency_ms([m for _, m in rows], held[0], args.runs))
    out = [f"# int4 weight-only bench ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
           f"{platform.machine()}, {cpu_line()}, onnxruntime {ort.__version__}, 1 thread; the machine was shared with "
           f"other jobs: latency is the median of per-round ratios over {args.runs} interleaved rounds.", "",
           f"## all-MiniLM-L6-v2 (real weights), sequence 32: GPTQ statistics on {len(calib)} sentences, agreement on "
           f"{len(held)} other sentences", "",
           "Size counts the whole model: the word-embedding table (30522 x 384, half the parameters) is a Gather "
           "and stays float32.", "",
           "| model | min cosine | mean cosine | size MB | size vs float | ORT ms (best) | latency vs float |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for i, (label, m) in enumerate(rows):
        c = cosines(ref, common.outputs(m, held))
        out.append(f"| {label} | {c.min():.4f} | {c.mean():.5f} | {m.ByteSize() / 1e6:.1f} | "
                   f"{m.ByteSize() / model.ByteSize():.2f} | {times[:, i].min():.2f} | "
                   f"{np.median(times[:, i] / times[:, 0]):.2f} |")
        print(out[-1], flush=True)
    dec = decoder()
    q = apply_int4(dec, bs, "ort")[0]
    feed = {"x": np.random.default_rng(1).normal(0, 1, (1, 1, 1024)).astype(np.float32)}
    dec_rows = [("float", dec), ("MatMulNBits (accuracy_level 0)", q), ("MatMulNBits accuracy_level 4", with_accuracy_level(q, 4))]
    dt = np.asarray(common.interleaved_latency_ms([m for _, m in dec_rows], feed, args.runs))
    ref_d = common.outputs(dec, [feed])
    out += ["", "## decode step: 6 blocks of MatMul 1024x4096 and 4096x1024, batch 1, one token (random weights)", "",
            "| model | size MB | ORT ms (best) | latency vs float | cosine vs float |", "|---|---:|---:|---:|---:|"]
    for i, (label, m) in enumerate(dec_rows):
        c = cosines(ref_d, common.outputs(m, [feed]))[0]
        out.append(f"| {label} | {m.ByteSize() / 1e6:.1f} | {dt[:, i].min():.3f} | {np.median(dt[:, i] / dt[:, 0]):.2f} "
                   f"| {c:.5f} |")
        print(out[-1], flush=True)
    write_report("\n".join(out) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
