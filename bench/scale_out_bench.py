"""Scale-out: the accuracy-budget search, sharded int8 calibration and a 20-model fleet compile on
1 worker (in this process) vs the machine's cores (a process pool, and Ray), with the ratios, and a
check that every executor produced the same result (budget table, calibrated model bytes, fleet files).

Workloads (built here, seeded; nothing downloaded):
  - budget: a 10-layer CNN (32 channels, 32x32 inputs), int8 static, --accuracy-budget on max-rel-error:
    10 sensitivity models on 8 feeds + 5 candidates on --eval-feeds feeds (candidate latency is still
    timed in the driver, one after the other: that part does not scale out);
  - calibration: the same CNN, entropy ranges over --calib-feeds feeds, one shard per worker;
  - fleet: 20 synthetic transformer-ish chains (bench/make_big_model.py, --fleet-blocks blocks and more,
    ~20 nodes a block), compiled at -O2 and verified against ORT.
Pool and Ray times include starting their workers (the pool is started by the first job of a
workload); Ray's own start (ray.init) is timed apart. Timings on a shared machine are noisy.

    python bench/scale_out_bench.py [--workers N] [--ray auto|HOST:PORT] [--no-ray] [--markdown-out FILE]

Against a real cluster: start Ray on every node (`ray start --head` on one, `ray start --address HEAD:6379`
on the others, each with graphopt installed), then `--ray HEAD:6379 --workers <total CPUs>`: the fleet's
model paths and the calibration data must then be on storage every node sees.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from report_io import cpu_line, write_report  # a sibling module: this script's folder is sys.path[0]

from graphopt import lossy
from graphopt.distributed import InProcessExecutor, PoolExecutor, make_executor
from graphopt.fleet import compile_many, read_manifest
from graphopt.lossy import budget

LOAD_AT_START = "load average %.2f %.2f %.2f at start" % os.getloadavg()


def cnn(layers: int = 10, channels: int = 32, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x, cin = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, cin, 3, 3)) * (2.0 / (9 * cin)) ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="gap"))
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, channels, 1, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)} for _ in range(count)]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def budget_job(executor, model, calib, evals):
    """The fixed budget search (latency as ORT measures it; a budget between the all-int8 error and 0)."""
    ex = None if isinstance(executor, InProcessExecutor) else executor
    _, report = lossy.with_budget(model, "static", evals, 1e-9, "max-rel-error", best_effort=True, calib=calib,
                                  executor=ex)
    # latencies differ run to run: compare the errors and the candidates, not the timing columns
    return [re.match(r"(.+?)\s+(\S+)\s", line).groups() for line in report.table.splitlines()[2:-1]]


def calib_job(executor, model, calib):
    ex = None if isinstance(executor, InProcessExecutor) else executor
    return lossy.int8_static(model, calib, "entropy", executor=ex)[0].SerializeToString()


def fleet_manifest(folder: Path, blocks: int) -> Path:
    from make_big_model import build
    entries = []
    for i in range(20):
        path = folder / f"chain{i:02d}.onnx"
        onnx.save(build(blocks + 5 * i, seed=i), path)
        entries.append({"model": str(path), "level": 2})
    path = folder / "fleet.json"
    path.write_text(json.dumps(entries))
    return path


def fleet_job(executor, manifest: Path, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    rows = compile_many(read_manifest(manifest, out), executor, fresh=True)
    failed = [f"{r.name}: {r.note}" for r in rows if r.status != "compiled"]
    if failed:
        raise SystemExit("fleet entries failed: " + "; ".join(failed))
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.onnx"))}


def header() -> str:
    cpu = cpu_line()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"scale_out_bench {now} · {cpu}, {os.cpu_count()} cores, {LOAD_AT_START} · Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for the pool and Ray (default: cores)")
    ap.add_argument("--ray", default="auto", help="auto (a local Ray) or HOST:PORT of a cluster head")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    ap.add_argument("--eval-feeds", type=int, default=48)
    ap.add_argument("--calib-feeds", type=int, default=64)
    ap.add_argument("--fleet-blocks", type=int, default=60, help="blocks of the fleet's smallest model (default 60)")
    ap.add_argument("--markdown-out", help="also write the table here (e.g. bench/results/scale_out_bench.md)")
    args = ap.parse_args()
    model, calib, evals = cnn(), feeds(args.calib_feeds, 1), feeds(args.eval_feeds, 2)
    executors = [("1 worker (in-process)", lambda: InProcessExecutor()),
                 (f"process pool, {args.workers} workers", lambda: PoolExecutor(args.workers))]
    ray_start = None
    if not args.no_ray:
        import ray
        ray_start, _ = timed(lambda: make_executor(args.workers, args.ray))  # connect (or start) once
        executors.append((f"Ray ({args.ray}), {args.workers} workers", lambda: make_executor(args.workers, args.ray)))
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = fleet_manifest(Path(tmp), args.fleet_blocks)
        for label, make in executors:
            with make() as ex:  # a fresh pool per executor row: its start-up is part of its time
                for work, job in (("budget search", lambda: budget_job(ex, model, calib, evals)),
                                  ("int8 calibration", lambda: calib_job(ex, model, calib)),
                                  ("20-model fleet", lambda: fleet_job(ex, manifest, Path(tmp) / label.split()[0]))):
                    seconds, value = timed(job)
                    results.setdefault(work, []).append(value)
                    rows.append((work, label, seconds))
                    print(f"{work:18} {label:34} {seconds:8.2f} s", flush=True)
    base = {work: s for work, label, s in rows if label.startswith("1 worker")}
    lines = [header(), "", "| workload | executor | seconds | speed-up vs 1 worker | same result |",
             "|---|---|---:|---:|---|"]
    for work, label, s in rows:
        same = all(v == results[work][0] for v in results[work])
        lines.append(f"| {work} | {label} | {s:.2f} | {base[work] / s:.2f}x | {'yes' if same else 'NO'} |")
    if ray_start is not None:
        lines.append(f"\nRay start/connect (not in the times above): {ray_start:.1f} s")
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown_out:
        write_report(text + "\n", args.markdown_out)
    if not all(all(v == r[0] for v in r) for r in results.values()):
        print("executors disagree: see 'same result'", file=sys.stderr)
        return 1
    if not args.no_ray:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
