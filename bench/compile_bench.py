"""graphopt vs onnxsim / onnxslim / onnxoptimizer on real models: nodes left, seconds, numeric check.

Models: every models/*/model.onnx plus the onnx package's light model zoo
(onnx/backend/test/data/light/*.onnx). Tools: graphopt -O1, graphopt -O2, onnxsim.simplify,
onnxslim.slim, onnxoptimizer.optimize (its default fuse-and-elimination passes).

Each (model, tool) runs in its own subprocess with a timeout, so a tool that crashes, hangs or
runs out of memory costs one cell ('error' / 'timeout'), never the run. Inside that subprocess the
tool is warmed up on a tiny model first (imports, lazy registries), then the one optimize call on an
already loaded ModelProto is timed (load/save excluded). The parent then runs the original and the
tool's output in ONNX Runtime (graph optimizations off) on the same seeded random input and compares
every output (OK = all within rtol 1e-4, atol 1e-5).

    python bench/compile_bench.py                                 # everything
    python bench/compile_bench.py --models squeezenet,resnet --skip-tool onnxslim
    python bench/compile_bench.py --markdown-out bench/results/compile_bench.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from report_io import cpu_line, write_report  # a sibling module: this script's folder is sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["graphopt-O1", "graphopt-O2", "onnxsim", "onnxslim", "onnxoptimizer"]
SHORT = {"graphopt-O1": "O1", "graphopt-O2": "O2", "onnxsim": "onnxsim", "onnxslim": "onnxslim",
         "onnxoptimizer": "onnxoptimizer"}
RTOL, ATOL = 1e-4, 1e-5
LOAD_AT_START = "load average %.2f %.2f %.2f at start" % os.getloadavg()  # timings shift when others share the CPUs


# ------------------------------------------------------------------ worker (one tool, one model)

def _tiny_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    c = onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    nodes = [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [c]),
                             opset_imports=[helper.make_opsetid("", 13)])


def tool_function(tool: str):
    """The optimize call of each tool, ModelProto in, ModelProto out."""
    if tool.startswith("graphopt-O"):
        import graphopt
        level = int(tool[-1])
        return lambda m: graphopt.compile_model(m, level=level).model
    if tool == "onnxsim":
        import onnxsim
        return lambda m: onnxsim.simplify(m)[0]
    if tool == "onnxslim":
        import onnxslim
        return lambda m: onnxslim.slim(m)
    if tool == "onnxoptimizer":
        import onnxoptimizer
        return lambda m: onnxoptimizer.optimize(m, onnxoptimizer.get_fuse_and_elimination_passes())
    raise ValueError(f"unknown tool {tool}")


def count_ops(model: onnx.ModelProto) -> dict:
    """Op histogram including nodes inside If/Loop/Scan bodies."""
    from graphopt.compiler.report import summarize
    return summarize(model).ops


def worker(tool: str, model_path: str, out_path: str, repeat: int = 1) -> None:
    fn = tool_function(tool)
    fn(_tiny_model())  # warm-up: imports, pass registries, ORT sessions created on first use
    model = onnx.load(model_path)
    seconds = float("inf")
    for _ in range(repeat):  # a fresh copy each time: some tools edit their input in place
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        start = time.perf_counter()
        result = fn(copy)
        seconds = min(seconds, time.perf_counter() - start)
    if result is None or not isinstance(result, onnx.ModelProto):
        raise RuntimeError(f"{tool} returned {type(result).__name__}, not a ModelProto")
    large = result.ByteSize() > 1_900_000_000 if hasattr(result, "ByteSize") else False
    onnx.save(result, out_path, save_as_external_data=large, location=Path(out_path).name + ".data")
    print("RESULT " + json.dumps({"seconds": seconds, "ops": count_ops(result)}), flush=True)


# ------------------------------------------------------------------ parent

def discover(filters: list[str]) -> list[tuple[str, Path]]:
    found = [(f"models/{p.parent.name}", p) for p in sorted((ROOT / "models").glob("*/model.onnx"))]
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    found += [(f"light/{p.stem.removeprefix('light_')}", p) for p in sorted(light.glob("*.onnx"))]
    if filters:
        found = [(label, p) for label, p in found if any(f in label for f in filters)]
    return found


def run_tool(tool: str, model_path: Path, out_path: Path, timeout: float, repeat: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", tool, str(model_path), str(out_path),
           "--repeat", str(repeat)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "timeout": True}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [f"exit {proc.returncode}"])
    return {"error": f"exit {proc.returncode}: {tail[-1][:200]}"}


def check_outputs(cand_path: Path, feed: dict, want: dict) -> tuple[bool | None, float, str]:
    """(ok, worst max-abs error, note) of the tool's output vs the original's ORT outputs."""
    from graphopt.verify import compare_arrays, ort_session
    try:
        sess = ort_session(onnx.load(str(cand_path)))
        names = [o.name for o in sess.get_outputs()]
        if sorted(names) != sorted(want):
            return False, float("inf"), f"output names differ: {names}"
        inputs = {i.name for i in sess.get_inputs()}
        got = dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in inputs})))
    except Exception as e:
        return False, float("inf"), f"ORT cannot run the output: {str(e).splitlines()[0][:160]}"
    errs = [compare_arrays(n, want[n], got[n], RTOL, ATOL) for n in want]
    bad = [e for e in errs if not e.ok]
    worst = max((e.max_abs for e in errs), default=0.0)
    return not bad, worst, "; ".join(f"{e.name}: {e.note or f'max abs {e.max_abs:.3g}'}" for e in bad)


def bench_model(label: str, path: Path, tools: list[str], timeout: float, seed: int, repeat: int) -> dict:
    from graphopt.verify import random_feed, run_ort
    original = onnx.load(str(path))
    row = {"model": label, "nodes": sum(count_ops(original).values()), "ops": count_ops(original), "tools": {}}
    try:
        # np.asarray: random_feed hands back NumPy scalars (not 0-d arrays) for rank-0 inputs, which ORT rejects
        feed = {k: np.asarray(v) for k, v in random_feed(original, seed=seed).items()}
        want = run_ort(original, feed)
    except Exception as e:
        feed = want = None
        row["ref_error"] = f"ORT cannot run the original: {str(e).splitlines()[0][:160]}"
    with tempfile.TemporaryDirectory(prefix="compile_bench_") as tmp:
        for tool in tools:
            out = Path(tmp) / f"{tool}.onnx"
            wall = time.perf_counter()
            r = run_tool(tool, path, out, timeout, repeat)
            r["wall"] = time.perf_counter() - wall
            if "error" not in r:
                r["nodes"] = sum(r["ops"].values())
                if want is not None:
                    r["ok"], r["max_abs"], r["note"] = check_outputs(out, feed, want)
            for f in Path(tmp).iterdir():
                f.unlink()
            row["tools"][tool] = r
            status = r.get("error") or f"{r['nodes']} nodes {r['seconds']:.3f} s ok={r.get('ok')}"
            print(f"  {label:28} {tool:14} {status}", file=sys.stderr, flush=True)
    return row


def header(tools: list[str], timeout: float, seed: int, repeat: int) -> list[str]:
    cpu = cpu_line()
    versions = {}
    for mod in ("graphopt", "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxoptimizer", "numpy"):
        try:
            from importlib.metadata import version
            versions[mod] = version(mod)
        except Exception:
            versions[mod] = "?"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return [f"compile_bench {now} · {cpu}, {os.cpu_count()} cores, {LOAD_AT_START} · Python {platform.python_version()} · "
            + ", ".join(f"{k} {v}" for k, v in versions.items()),
            "",
            f"Each tool runs in its own subprocess per model (timeout {timeout:.0f} s), after a warm-up call on a "
            "tiny model; seconds = the optimize call on a loaded ModelProto (load/save excluded), "
            f"{'best of ' + str(repeat) + ' calls' if repeat > 1 else 'one call'}. "
            f"Node counts include If/Loop/Scan bodies. Outputs: ONNX Runtime (optimizations off), seed {seed}, "
            f"every output within rtol {RTOL:g}, atol {ATOL:g} of the original's. Tools run: {', '.join(tools)}."]


def cell(r: dict | None) -> str:
    if r is None:
        return "skipped"
    if "error" in r:
        return "timeout" if r.get("timeout") else "error"
    return f"{r['nodes']} / {r['seconds']:.3f}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "–"


def markdown(rows: list[dict], tools: list[str], head: list[str]) -> str:
    lines = head + [""]
    if not rows:
        return "\n".join(lines + ["No models found (models/*/model.onnx and the onnx light zoo are both empty)."]) + "\n"
    lines += ["| model | original nodes | graphopt O1 nodes/s | O2 nodes/s | onnxsim nodes/s | onnxslim nodes/s "
              "| onnxoptimizer nodes/s | outputs ok | O1 nodes / onnxsim nodes | onnxslim s / graphopt-O2 s |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    notes = []
    for row in rows:
        t = row["tools"]
        get = lambda tool, key: t[tool].get(key) if tool in t and "error" not in t[tool] else None
        failed = [f"{SHORT[k]} ({v['max_abs']:.2g})" for k, v in t.items() if v.get("ok") is False]
        if row.get("ref_error"):
            ok = "n/a (original does not run)"
        elif failed:
            ok = "FAIL: " + ", ".join(failed)
        elif any(v.get("ok") for v in t.values()):
            ok = "all OK" if all("error" not in v for v in t.values()) else "OK (where produced)"
        else:
            ok = "–"
        lines.append(f"| {row['model']} | {row['nodes']} | " + " | ".join(cell(t.get(k)) for k in TOOLS)
                     + f" | {ok} | {ratio(get('graphopt-O1', 'nodes'), get('onnxsim', 'nodes'))}"
                     + f" | {ratio(get('onnxslim', 'seconds'), get('graphopt-O2', 'seconds'))} |")
        if row.get("ref_error"):
            notes.append(f"{row['model']}: {row['ref_error']}")
        for k, v in t.items():
            if "error" in v:
                notes.append(f"{row['model']} / {k}: {v['error']}")
            elif v.get("ok") is False:
                notes.append(f"{row['model']} / {k}: outputs differ: {v['note']}")
    lines += ["", "Cells are `nodes after / seconds`. Max abs error per tool (vs the original in ORT):", "",
              "| model | " + " | ".join(SHORT[k] for k in tools) + " |", "|---|" + "---:|" * len(tools)]
    for row in rows:
        errs = []
        for k in tools:
            v = row["tools"].get(k, {})
            errs.append("–" if "max_abs" not in v else f"{v['max_abs']:.2g}")
        lines.append(f"| {row['model']} | " + " | ".join(errs) + " |")
    if notes:
        lines += ["", "Errors and failures:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Findings (graphopt -O1 has more nodes than onnxsim, outputs differ, or graphopt is slower "
              "than onnxslim):", ""] + (findings(rows) or ["- none"])
    return "\n".join(lines) + "\n"


def op_diff(a: dict, b: dict) -> str:
    """Ops where `a` has more nodes than `b`, as 'Op a→b'."""
    more = {op: (a.get(op, 0), b.get(op, 0)) for op in set(a) | set(b) if a.get(op, 0) != b.get(op, 0)}
    return ", ".join(f"{op} {x}→{y}" for op, (x, y) in sorted(more.items(), key=lambda kv: kv[1][1] - kv[1][0]))


def findings(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        t = row["tools"]
        ok = lambda k: k in t and "error" not in t[k]
        if ok("graphopt-O1") and ok("onnxsim") and t["graphopt-O1"]["nodes"] > t["onnxsim"]["nodes"]:
            out.append(f"- {row['model']}: graphopt -O1 {t['graphopt-O1']['nodes']} nodes > onnxsim "
                       f"{t['onnxsim']['nodes']}; op counts graphopt-O1→onnxsim: "
                       f"{op_diff(t['graphopt-O1']['ops'], t['onnxsim']['ops'])}")
        for level in ("graphopt-O1", "graphopt-O2"):
            if ok(level) and t[level].get("ok") is False:
                out.append(f"- {row['model']}: {level} outputs differ: {t[level]['note']}")
            elif level in t and "error" in t[level]:
                out.append(f"- {row['model']}: {level} failed: {t[level]['error']}")
            if ok(level) and ok("onnxslim") and t[level]["seconds"] > t["onnxslim"]["seconds"]:
                out.append(f"- {row['model']}: {level} {t[level]['seconds']:.3f} s is slower than onnxslim "
                           f"{t['onnxslim']['seconds']:.3f} s")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated substrings; keep models whose label "
                                                 "(models/NAME or light/NAME) contains one")
    ap.add_argument("--skip-tool", action="append", default=[], metavar="TOOL",
                    help=f"tool(s) to leave out, comma-separated or repeated: {', '.join(TOOLS)} "
                         "('graphopt' skips both levels)")
    ap.add_argument("--markdown-out", metavar="FILE", help="also write the Markdown report here")
    ap.add_argument("--json-out", metavar="FILE", help="write raw results (incl. op histograms) as JSON")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per tool per model (default 900)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    ap.add_argument("--repeat", type=int, default=1, help="time the optimize call N times, keep the best (default 1)")
    ap.add_argument("--_worker", nargs=3, metavar=("TOOL", "MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._worker:
        worker(*a._worker, repeat=max(1, a.repeat))
        return 0
    skip = {s.strip() for arg in a.skip_tool for s in arg.split(",") if s.strip()}
    unknown = skip - set(TOOLS) - {"graphopt"}
    if unknown:
        ap.error(f"unknown tool(s) {sorted(unknown)}; choose from {TOOLS}")
    tools = [t for t in TOOLS if t not in skip and not (t.startswith("graphopt") and "graphopt" in skip)]
    models = discover([f.strip() for f in a.models.split(",") if f.strip()])
    if not models:
        print("no models matched (models/*/model.onnx, onnx light zoo)", file=sys.stderr)
    rows = []
    for label, path in models:
        print(f"{label}:", file=sys.stderr, flush=True)
        rows.append(bench_model(label, path, tools, a.timeout, a.seed, a.repeat))
    text = markdown(rows, tools, header(tools, a.timeout, a.seed, a.repeat))
    print(text)
    if a.markdown_out:
        write_report(text, a.markdown_out)
    if a.json_out:
        write_report(json.dumps(rows, indent=1, default=float), a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
