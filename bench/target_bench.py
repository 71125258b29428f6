"""Output targets, side by side in one run: ONNX Runtime on the original vs on `--target ort` /
`--target onnx` (optionally `--opset 23`) outputs, and graphopt's runtime at -O1 vs `--target graphopt`.

    python bench/target_bench.py [--models bert_encoder,transformer_block] [--runs 50] [--batch 8 --seq 32]

Prints the 10th-percentile latency per variant (quiet-run estimate on a shared machine) and the
ratio to its baseline: ORT (all optimizations on) original for the ort target, ORT (optimizations
off) original for the onnx target, graphopt -O1 for the graphopt target.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt import golden
from graphopt.verify import random_feed


def ort_session(model, optimize: bool):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feed_for(model, batch: int, seq: int):
    feed = random_feed(model, seed=0, dims={"batch": batch, "seq": seq})
    if "input_ids" in feed:  # token ids within the vocabulary, no padding
        feed["input_ids"] = np.random.default_rng(0).integers(0, 100, feed["input_ids"].shape).astype(np.int64)
    if "attention_mask" in feed:
        feed["attention_mask"] = np.ones_like(feed["attention_mask"])
    return feed


def measure(runners: dict, feed: dict, runs: int) -> dict:
    times = {k: [] for k in runners}
    for run in runners.values():
        run(feed)
    for _ in range(runs):  # interleaved, so load changes hit every variant alike
        for name, run in runners.items():
            start = time.perf_counter()
            run(feed)
            times[name].append(time.perf_counter() - start)
    return {k: float(np.percentile(v, 10)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert_encoder,transformer_block")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    args = ap.parse_args()
    print(f"{'model':18} {'variant':28} {'ms':>8} {'ratio':>7}  baseline")
    for name in args.models.split(","):
        path = golden.model_path(name)
        original = onnx.load_model(str(path))
        feed = feed_for(original, args.batch, args.seq)
        build = lambda **kw: graphopt.compile_model(path, **kw).model  # noqa: E731
        variants = {  # name -> (runner, baseline name)
            "ort(all) original": (ort_session(original, True), None),
            "ort(all) --target ort": (ort_session(build(level=2, target="ort"), True), "ort(all) original"),
            "ort(off) original": (ort_session(original, False), None),
            "ort(off) --target onnx": (ort_session(build(level=2), False), "ort(off) original"),
            "ort(off) --target onnx --opset 23": (ort_session(build(level=2, opset=23), False), "ort(off) original"),
            "graphopt -O1": (graphopt.Session(build(level=1)), None),
            "graphopt --target graphopt": (graphopt.Session(build(level=2, target="graphopt")), "graphopt -O1"),
        }
        runners = {k: (lambda f, s=s: s.run(None, f)) for k, (s, _) in variants.items()}
        t = measure(runners, feed, args.runs)
        for k, (_, base) in variants.items():
            ratio = f"{t[k] / t[base]:.3f}x" if base else ""
            print(f"{name:18} {k:34} {t[k] * 1e3:8.2f} {ratio:>7}  {base or ''}")


if __name__ == "__main__":
    main()
