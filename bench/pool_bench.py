"""Pooling kernels: graphopt before/after vs ONNX Runtime, per model.

For each model (the light zoo's shufflenet/squeezenet/inception_v1 on a seeded 1x3x224x224 input,
models/convnet and models/mobilenet_yolo on their golden inputs), compiled with
graphopt.compile(level=2, target="graphopt"), in one process, 1 thread:
  * "before": a Session built without the pooling prepare hooks (kernels/cpu/pooling.py: nn.py's
    generic kernels run); the old FusedConv finish no longer exists (bench/results/pool_bench.md, from
    before it went, has both changes in its "before");
  * "after": the Session as shipped;
  * ORT: onnxruntime on the model as given, all graph optimizations, intra_op_num_threads=1.
The three take turns run by run (--runs timed runs each, after --warmup), medians reported with
the whole-model ratios to ORT. Then per-op time of the pooling ops (Session profile for graphopt,
ORT's own profiler for ORT), summed over the model's pooling nodes, medians over --op-runs runs.

    python bench/pool_bench.py
    python bench/pool_bench.py --models shufflenet,squeezenet --runs 15
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["shufflenet", "squeezenet", "inception_v1", "convnet", "mobilenet_yolo"]
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


def load(name):
    from graphopt import golden
    if name in golden.list_models():
        g = golden.load_golden(name)
        return onnx.load(golden.model_path(name)), dict(g.inputs)
    m = onnx.load(LIGHT / f"light_{name}.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    inits = {i.name for i in m.graph.initializer}  # old zoo models also list weights as inputs
    return m, {next(i.name for i in m.graph.input if i.name not in inits): x}


@contextlib.contextmanager
def old_kernels():
    """The pooling kernels as they were before pooling.py (the generic ones in nn.py)."""
    from graphopt.kernels import registry
    saved = {k: registry._PREPARE.pop(k) for k in [("", op, "cpu") for op in POOL_OPS] if k in registry._PREPARE}
    try:
        yield
    finally:
        registry._PREPARE.update(saved)


def ort_session(model, profile=False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_pool_seconds(model, feed, runs):
    """Median over runs of the summed kernel time of ORT's pooling nodes (ORT's profiler)."""
    sess = ort_session(model, profile=True)
    for _ in range(runs + 2):
        sess.run(None, feed)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    per_run = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and args.get("op_name") in POOL_OPS and e["name"].endswith("_kernel_time"):
            per_run.setdefault(e["name"], []).append(e["dur"] * 1e-6)
    if not per_run:
        return 0.0
    runs_seen = min(len(v) for v in per_run.values())
    totals = [sum(v[i] for v in per_run.values()) for i in range(2, runs_seen)]  # skip 2 warm-up runs
    return statistics.median(totals)


def graphopt_pool_seconds(sess, feed, runs, before):
    totals = []
    for _ in range(runs):
        with (old_kernels() if before else contextlib.nullcontext()):
            sess.run(None, feed, profile=True)
        prof = sess.last_profile
        totals.append(sum(t for op, t in op_times(prof) if op in POOL_OPS))
    return statistics.median(totals)


def op_times(prof):
    """(op type, seconds) per node of a Session profile."""
    for op, _, seconds in prof.steps:
        yield op, seconds


def bench(name, args):
    import graphopt
    model, feed = load(name)
    compiled = graphopt.compile(model, level=2, target="graphopt")
    after = graphopt.Session(compiled, threads=1)
    with old_kernels():
        before = graphopt.Session(compiled, threads=1)
    ort_s = ort_session(model)
    want = ort_s.run(None, feed)[0]
    errors = {}  # max abs difference of the first output from ORT's (the zoo's random weights on a
    for sess, key in ((before, "before"), (after, "after")):  # random input give logits ~1e9: float32 ulps show)
        with (old_kernels() if key == "before" else contextlib.nullcontext()):
            errors[key] = float(np.abs(sess.run(None, feed)[0].astype(np.float64) - want).max())

    def run_before():
        with old_kernels():
            before.run(None, feed)
    fns = {"before": run_before, "after": lambda: after.run(None, feed), "ort": lambda: ort_s.run(None, feed)}
    times = {k: [] for k in fns}
    for i in range(args.warmup + args.runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    pools = {"before": graphopt_pool_seconds(before, feed, args.op_runs, True),
             "after": graphopt_pool_seconds(after, feed, args.op_runs, False),
             "ort": ort_pool_seconds(model, feed, args.op_runs)}
    n_pool = sum(n.op_type in POOL_OPS for n in compiled.graph.node)
    return med, pools, n_pool, errors


def ms(seconds):
    return f"{seconds * 1e3:8.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--op-runs", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"1 thread, median of {args.runs} interleaved runs (whole model) / {args.op_runs} (pool ops)")
    print(f"{'model':15s} {'before ms':>9s} {'after ms':>9s} {'ORT ms':>9s} {'bef/ORT':>8s} {'aft/ORT':>8s} "
          f"| pool ops: {'n':>2s} {'before':>8s} {'after':>8s} {'ORT':>8s} {'aft/ORT':>8s} | max |err| vs ORT")
    ratios = {"before": [], "after": []}
    for name in args.models.split(","):
        med, pools, n_pool, errors = bench(name, args)
        ratios["before"].append(med["before"] / med["ort"])
        ratios["after"].append(med["after"] / med["ort"])
        pr = pools["after"] / pools["ort"] if pools["ort"] else float("nan")
        print(f"{name:15s} {ms(med['before'])} {ms(med['after'])} {ms(med['ort'])} "
              f"{med['before'] / med['ort']:8.2f} {med['after'] / med['ort']:8.2f} "
              f"| {'':10s}{n_pool:2d} {ms(pools['before'])} {ms(pools['after'])} {ms(pools['ort'])} {pr:8.2f} | "
              f"{errors['before']:.1e} / {errors['after']:.1e}")
    geo = {k: float(np.exp(np.mean(np.log(v)))) for k, v in ratios.items()}
    print(f"geomean ratio to ORT: before {geo['before']:.2f}, after {geo['after']:.2f}")


if __name__ == "__main__":
    main()
