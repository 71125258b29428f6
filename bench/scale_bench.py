"""How long does a 50,000-node graph take? graphopt compile -O2 vs onnxsim (and onnxslim).

Builds the synthetic chain of bench/make_big_model.py (2,800 blocks of 18 nodes + 1 = 50,401 nodes,
dynamic batch) in a temp folder, then times, each in its own process:
  - `graphopt compile -O2` as a whole process (wall clock, --runs times, default 3), plus the
    in-process compile seconds from its --report JSON;
  - onnxsim.simplify (one run; ~20 s), wall clock of the process and the call itself;
  - onnxslim.slim only with --with-onnxslim (one run; ~3 min).
Every output model is checked against the original in ONNX Runtime on a seeded random input
(batch 2; rtol 1e-4, atol 1e-5).

    python bench/scale_bench.py [--with-onnxslim] [--markdown-out bench/results/scale_bench.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report_io import cpu_line, write_report  # a sibling module: this script's folder is sys.path[0]

HERE = Path(__file__).resolve().parent
LOAD_AT_START = "load average %.2f %.2f %.2f at start" % os.getloadavg()  # timings shift when others share the CPUs

# one call of a Python tool in a fresh process: import, load, time the call, save
TOOL_SCRIPT = """
import json, sys, time, onnx
tool, src, dst = sys.argv[1:4]
if tool == "onnxsim":
    import onnxsim; fn = lambda m: onnxsim.simplify(m)[0]
else:
    import onnxslim; fn = lambda m: onnxslim.slim(m)
m = onnx.load(src)
t = time.perf_counter(); out = fn(m); s = time.perf_counter() - t
onnx.save(out, dst)
print("RESULT " + json.dumps({"seconds": s}))
"""


def graphopt_command() -> list[str]:
    exe = Path(sys.executable).with_name("graphopt")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "graphopt.cli"]


def timed(cmd: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:200]}")
    return wall, proc


def check(original, out_path: Path, seed: int) -> tuple[int, str]:
    """(nodes after, 'OK'/'FAIL (...)') of an output model vs the original in ORT."""
    import onnx

    from graphopt.compiler.report import summarize
    from graphopt.verify import compare_models
    cand = onnx.load(str(out_path))
    try:
        rep = compare_models(original, cand, runs=1, seed=seed, dims={"batch": 2})
        ok = "OK" if rep.ok else f"FAIL ({rep.summary()})"
        worst = max(o.max_abs for o in rep.outputs)
        ok += f", max abs {worst:.2g}"
    except Exception as e:
        ok = f"error ({e.__class__.__name__}: {str(e).splitlines()[0][:120]})"
    return summarize(cand).nodes, ok


def machine_line() -> str:
    from importlib.metadata import version
    cpu = cpu_line()
    vs = []
    for mod in ("graphopt", "onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy"):
        try:
            vs.append(f"{mod} {version(mod)}")
        except Exception:
            vs.append(f"{mod} ?")
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"scale_bench {now} · {cpu}, {os.cpu_count()} cores, {LOAD_AT_START} · Python {platform.python_version()} · " + ", ".join(vs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2800, help="blocks of make_big_model.py (default 2800 = 50,401 nodes)")
    ap.add_argument("--runs", type=int, default=3, help="graphopt compile runs (default 3)")
    ap.add_argument("--with-onnxslim", action="store_true", help="also time onnxslim (about 3 minutes)")
    ap.add_argument("--skip-onnxsim", action="store_true", help="leave onnxsim out")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process (default 1800)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown-out", metavar="FILE", help="also write the Markdown table here")
    ap.add_argument("--keep", metavar="DIR", help="build in DIR and keep the models (default: a temp folder)")
    a = ap.parse_args(argv)

    import onnx

    from graphopt.compiler.report import summarize
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="scale_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        big = tmp / "big.onnx"
        _, proc = timed([sys.executable, str(HERE / "make_big_model.py"), "--blocks", str(a.blocks), "-o", str(big)],
                        a.timeout)
        original = onnx.load(str(big))
        nodes = summarize(original).nodes
        print(f"built {big}: {nodes} nodes", file=sys.stderr, flush=True)

        walls, inproc, err = [], [], None
        out = tmp / "graphopt.onnx"
        for i in range(a.runs):
            try:
                wall, _ = timed(graphopt_command() + ["compile", str(big), "-o", str(out), "-O2", "-q",
                                                      "--report", str(tmp / "report.json")], a.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                err = str(e)
                break
            walls.append(wall)
            inproc.append(json.loads((tmp / "report.json").read_text())["seconds"])
            print(f"graphopt compile -O2 run {i + 1}: {wall:.2f} s wall, {inproc[-1]:.2f} s in process",
                  file=sys.stderr, flush=True)
        rows.append(("graphopt compile -O2", walls, inproc, err, *(check(original, out, a.seed) if walls else (None, ""))))

        tools = ([] if a.skip_onnxsim else ["onnxsim"]) + (["onnxslim"] if a.with_onnxslim else [])
        for tool in tools:
            out = tmp / f"{tool}.onnx"
            try:
                wall, proc = timed([sys.executable, "-c", TOOL_SCRIPT, tool, str(big), str(out)], a.timeout)
                secs = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])["seconds"]
                rows.append((f"{tool} ({tool}.{'simplify' if tool == 'onnxsim' else 'slim'})", [wall], [secs], None,
                             *check(original, out, a.seed)))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                rows.append((tool, [], [], str(e), None, ""))
            print(f"{tool}: {rows[-1][1]} s wall", file=sys.stderr, flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    base_wall = min(rows[0][1]) if rows[0][1] else None
    base_in = min(rows[0][2]) if rows[0][2] else None
    fmt = lambda xs, f: f"{f(xs):.2f}" if xs else "–"
    lines = [machine_line(), "",
             f"Model: bench/make_big_model.py --blocks {a.blocks} ({nodes:,} nodes, dynamic batch, opset 18). "
             "Every tool runs as its own process; wall = whole process (start, import, load, optimize, save), "
             "in-process = the optimize call alone (graphopt: `seconds` of its --report). "
             f"graphopt: {a.runs} runs; others: 1 run. Outputs compared with the original in ONNX Runtime "
             "(batch 2, seeded random input, rtol 1e-4, atol 1e-5).", "",
             "| tool | runs | wall min s | wall median s | in-process min s | in-process median s | nodes after "
             "| outputs | wall / graphopt wall | in-process / graphopt in-process |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, walls, inproc, err, after, ok in rows:
        if err:
            lines.append(f"| {name} | 0 | error | | | | | {err} | | |")
            continue
        r1 = f"{min(walls) / base_wall:.2f}" if base_wall else "–"
        r2 = f"{min(inproc) / base_in:.2f}" if base_in else "–"
        lines.append(f"| {name} | {len(walls)} | {fmt(walls, min)} | {fmt(walls, statistics.median)} | "
                     f"{fmt(inproc, min)} | {fmt(inproc, statistics.median)} | {after:,} | {ok} | {r1} | {r2} |")
    if not a.with_onnxslim:
        lines += ["", "onnxslim not run (pass --with-onnxslim; it takes about 3 minutes on this model)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown_out:
        write_report(text, a.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
