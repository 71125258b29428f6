"""Fusion benchmark: node counts and ONNX Runtime latency of graphopt -O2 vs onnxsim, onnxslim and ORT's
own basic-level optimizer, side by side in one run.

Models: every models/*/model.onnx (mobilenet_yolo and bert_encoder/transformer_block among them) and the
onnx package's light zoo (onnx/backend/test/data/light/*.onnx).

Per model, one subprocess (timeout; a crashing tool costs one cell) writes:
  onnxsim.simplify, onnxslim.slim, ORT basic level written out (SessionOptions.optimized_model_filepath
  with ORT_ENABLE_BASIC), graphopt -O2 for each output target graphopt knows (`--target`).
The parent then counts nodes (If/Loop/Scan bodies included), checks every output against ORT on the
original (rtol 1e-4, atol 1e-5), and times, on the same seeded input and thread count, with repetitions
interleaved round-robin across the sessions (median):
  ORT all optimizations on:  original  vs  graphopt --target ort output
  ORT all optimizations off: original  vs  graphopt --target onnx output

    python bench/fusion_bench.py                                   # everything
    python bench/fusion_bench.py --models mobilenet,resnet --reps 5
    python bench/fusion_bench.py --markdown-out bench/results/fusion_bench.md
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from report_io import cpu_line, write_report  # a sibling module: this script's folder is sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
RTOL, ATOL = 1e-4, 1e-5
LOAD_AT_START = "load average %.2f %.2f %.2f at start" % os.getloadavg()
OTHERS = ["onnxsim", "onnxslim", "ort-basic"]


# ------------------------------------------------------------------ worker (all tools, one model)

TARGETS = ["onnx", "ort", "graphopt"]


def compile_for(model: onnx.ModelProto, target: str) -> onnx.ModelProto:
    """graphopt -O2 --target TARGET. Before compile_model takes `target`, the passes still read it from
    ctx.options["target"], so set it there for this one call."""
    import graphopt
    from graphopt.compiler import pass_manager
    if "target" in inspect.signature(graphopt.compile_model).parameters:
        return graphopt.compile_model(model, level=2, target=target).model
    plain = pass_manager.PassContext

    @dataclasses.dataclass
    class TargetContext(plain):
        def __post_init__(self):
            self.options.setdefault("target", target)

    pass_manager.PassContext = TargetContext
    try:
        return graphopt.compile_model(model, level=2).model
    finally:
        pass_manager.PassContext = plain


def tool_outputs(model_path: str, outdir: Path) -> dict:
    import onnxruntime as ort

    model = onnx.load(model_path)
    done = {}

    def attempt(name, fn):
        try:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            result = fn(copy)
            if result is not None:
                onnx.save(result, str(outdir / f"{name}.onnx"))
            done[name] = "ok"
        except Exception as e:  # a tool failing on a model is a finding, not a crash of the bench
            done[name] = f"error: {e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"

    def ort_basic(m):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(outdir / "ort-basic.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        # ORT wrote the file

    def onnxsim_fn(m):
        import onnxsim
        return onnxsim.simplify(m)[0]

    def onnxslim_fn(m):
        import onnxslim
        return onnxslim.slim(m)

    attempt("onnxsim", onnxsim_fn)
    attempt("onnxslim", onnxslim_fn)
    attempt("ort-basic", ort_basic)
    for target in TARGETS:
        attempt(f"graphopt-{target}", lambda m, t=target: compile_for(m, t))
    return done


def run_worker(model_path: str, outdir: str) -> None:
    print("RESULT " + json.dumps(tool_outputs(model_path, Path(outdir))), flush=True)


# ------------------------------------------------------------------ parent

def discover(filters: list[str]) -> list[tuple[str, Path]]:
    found = [(p.parent.name, p) for p in sorted((ROOT / "models").glob("*/model.onnx"))]
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    found += [(f"light/{p.stem.removeprefix('light_')}", p) for p in sorted(light.glob("*.onnx"))]
    if filters:
        found = [(label, p) for label, p in found if any(f in label for f in filters)]
    return found


def node_count(path: Path) -> tuple[int, dict]:
    from graphopt.compiler.report import summarize
    ops = summarize(onnx.load(str(path))).ops
    return sum(ops.values()), dict(ops)


def session(path: Path, optimize: bool, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs_match(sess, feed: dict, want: dict, initializers: dict) -> bool:
    """initializers: the original's, for graph inputs that ORT's written-out model keeps listed after
    dropping their initializer (IR < 4 models list every weight as an input)."""
    inputs = {i.name for i in sess.get_inputs()}
    feed = {**{k: v for k, v in initializers.items() if k in inputs}, **feed}
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in inputs})))
    return set(got) == set(want) and all(
        got[k].shape == want[k].shape and np.allclose(got[k], want[k], rtol=RTOL, atol=ATOL, equal_nan=True)
        for k in want)


def interleaved_timing(sessions: dict, pairs: dict, feed: dict, reps: int, budget_s: float) -> dict:
    """Per round, each pair (original, graphopt output) runs back to back, the one going first alternating;
    rounds until `reps` or the time budget. Returns each session's median seconds and, per pair, the
    median of the per-round ratios graphopt/original: both runs of a round share the machine's load at
    that moment, which on a shared machine varies far more than the models' difference."""
    feeds = {k: {n: v for n, v in feed.items() if n in {i.name for i in s.get_inputs()}} for k, s in sessions.items()}
    warm = {}
    for k, s in sessions.items():
        s.run(None, feeds[k])  # warm-up
        t = time.perf_counter()
        s.run(None, feeds[k])
        warm[k] = time.perf_counter() - t
    # a sample of a sub-millisecond model is several runs (>= ~5 ms), else timer and scheduler
    # jitter alone move the per-round ratio by a few percent
    inner = max(1, min(200, int(0.005 / max(min(warm.values()), 1e-6))))
    times = {k: [] for k in sessions}
    start = time.perf_counter()
    for r in range(reps):
        for base, cand in pairs.values():
            for k in ((base, cand) if r % 2 == 0 else (cand, base)):
                run, feed_k = sessions[k].run, feeds[k]
                t = time.perf_counter()
                for _ in range(inner):
                    run(None, feed_k)
                times[k].append((time.perf_counter() - t) / inner)
        if time.perf_counter() - start > budget_s and r >= 2:
            break
    out = {k: statistics.median(v) for k, v in times.items()}
    for name, (base, cand) in pairs.items():
        out[name] = statistics.median(c / b for b, c in zip(times[base], times[cand]))
    out["rounds"] = len(times[next(iter(times))])
    return out


def bench_model(label: str, path: Path, a) -> dict:
    from graphopt.verify import random_feed, run_ort
    row = {"model": label, "nodes": {}, "errors": {}, "ok": {}, "latency": {}}
    row["nodes"]["original"], row["ops_original"] = node_count(path)
    original = onnx.load(str(path))
    feed = {k: np.asarray(v) for k, v in random_feed(original, seed=a.seed).items()}
    want = run_ort(original, feed)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    with tempfile.TemporaryDirectory(prefix="fusion_bench_") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(path), tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            status = json.loads(lines[-1][7:]) if lines else {"all": f"worker exit {proc.returncode}: "
                                                                     f"{(proc.stderr.strip().splitlines() or [''])[-1][:160]}"}
        except subprocess.TimeoutExpired:
            status = {"all": f"timeout after {a.timeout:.0f} s"}
        row["ops"] = {}
        for name, st in status.items():
            out = Path(tmp) / f"{name}.onnx"
            if st != "ok" or not out.is_file():
                row["errors"][name] = st if st != "ok" else "no output written"
                continue
            row["nodes"][name], row["ops"][name] = node_count(out)
            if name == "graphopt-graphopt":
                continue  # ai.graphopt ops: graphopt.Session runs them, ORT cannot (tests/golden checks them)
            try:
                row["ok"][name] = outputs_match(session(out, False, a.threads), feed, want, inits)
            except Exception as e:
                row["ok"][name] = False
                row["errors"][name] = f"ORT cannot run it: {str(e).splitlines()[0][:160]}"
        go = Path(tmp) / "graphopt-onnx.onnx"
        go_ort = Path(tmp) / "graphopt-ort.onnx"
        go_ort = go_ort if go_ort.is_file() else go
        if a.reps and go.is_file() and row["ok"].get("graphopt-onnx") and row["ok"].get(go_ort.stem, False):
            sessions = {"orig-on": session(path, True, a.threads), "ort-on": session(go_ort, True, a.threads),
                        "orig-off": session(path, False, a.threads), "onnx-off": session(go, False, a.threads)}
            pairs = {"ratio-on": ("orig-on", "ort-on"), "ratio-off": ("orig-off", "onnx-off")}
            row["latency"] = interleaved_timing(sessions, pairs, feed, a.reps, a.budget)
    print(f"  {label:26} nodes {row['nodes']}  latency {({k: round(v, 3) if k.startswith(('ratio', 'rounds')) else round(v * 1e3, 3) for k, v in row['latency'].items()})}"
          + (f"  errors {row['errors']}" if row["errors"] else ""), file=sys.stderr, flush=True)
    return row


def ms(lat: dict, key: str) -> str:
    return f"{lat[key] * 1e3:.3g} ms" if key in lat else "–"


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def markdown(rows: list[dict], targets: list[str], head: str) -> str:
    gcols = [f"graphopt-{t}" for t in targets]
    lines = [head, "", "| model | original | onnxsim | onnxslim | ORT basic | "
             + " | ".join(f"graphopt -O2 {t}" for t in targets)
             + " | O2 / best other | ORT all on: target-ort / original | ORT all off: target-onnx / original | outputs |",
             "|---|" + "---:|" * (4 + len(targets) + 3) + "---|"]
    ratios_on, ratios_off, gaps, node_ratios = [], [], [], []
    for row in rows:
        n = row["nodes"]
        best = min((n[k] for k in OTHERS if k in n), default=None)
        ours = n.get("graphopt-onnx")
        lat = row["latency"]
        on, off = lat.get("ratio-on"), lat.get("ratio-off")
        ratios_on.append(on)
        ratios_off.append(off)
        nr = ours / best if ours and best else None
        node_ratios.append(nr)
        bad = [k for k, v in row["ok"].items() if not v]
        cells = [str(n.get(k, "err")) for k in ["original"] + OTHERS + gcols]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {fmt(nr)} | {fmt(on)} ({ms(lat, 'orig-on')}) | "
                     f"{fmt(off)} ({ms(lat, 'orig-off')}) | "
                     + ("FAIL: " + ", ".join(bad) if bad else "all match") + " |")
        if ours is not None and best is not None and ours > best:
            winner = min((k for k in OTHERS if k in n), key=lambda k: n[k])
            gaps.append(f"- {row['model']}: graphopt -O2 {ours} > {winner} {best}: {op_diff(row['ops'].get('graphopt-onnx', {}), row['ops'].get(winner, {}))}")
    lines += ["", f"Geomean: O2 nodes / best other tool {fmt(geomean(node_ratios), '.3f')}; "
              f"ORT all-on latency target-ort / original {fmt(geomean(ratios_on), '.3f')} "
              f"(worst {fmt(max((r for r in ratios_on if r), default=None), '.3f')}); "
              f"ORT all-off latency target-onnx / original {fmt(geomean(ratios_off), '.3f')} "
              f"(worst {fmt(max((r for r in ratios_off if r), default=None), '.3f')}).", ""]
    lines += ["Where graphopt -O2 has more nodes than min(onnxsim, onnxslim, ORT basic):", ""] + (gaps or ["- none"])
    errs = [f"- {r['model']} / {k}: {v}" for r in rows for k, v in r["errors"].items()]
    if errs:
        lines += ["", "Tool errors:", ""] + errs
    return "\n".join(lines) + "\n"


def op_diff(a: dict, b: dict) -> str:
    diff = {op: (a.get(op, 0), b.get(op, 0)) for op in set(a) | set(b) if a.get(op, 0) != b.get(op, 0)}
    return ", ".join(f"{op} {x}→{y}" for op, (x, y) in sorted(diff.items()))


def header(a, targets) -> str:
    from importlib.metadata import version
    cpu = cpu_line()
    vers = ", ".join(f"{m} {version(m)}" for m in ("onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"fusion_bench {now} · {cpu}, {os.cpu_count()} cores, {LOAD_AT_START} · Python "
            f"{platform.python_version()} · {vers} · graphopt targets: {', '.join(targets)}\n\n"
            f"Node counts include If/Loop/Scan bodies. Latency: ORT CPU, {a.threads} intra-op thread(s), seed {a.seed} "
            f"input, up to {a.reps} interleaved rounds (a sample is as many runs as take ~5 ms; time budget {a.budget:.0f} s per model); a latency ratio is the "
            "median over rounds of graphopt/original timed back to back (original's median latency in brackets); "
            "< 1 means the graphopt output is faster. 'outputs': every tool's output vs ORT on the original "
            f"(rtol {RTOL:g}, atol {ATOL:g}).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated substrings of model labels to keep")
    ap.add_argument("--reps", type=int, default=20, help="interleaved timing rounds per model (0: no timing)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timing per model before stopping early")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads, the same for every session")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for all tools on one model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown-out", metavar="FILE", help="also write the Markdown table here")
    ap.add_argument("--json-out", metavar="FILE", help="raw results as JSON")
    ap.add_argument("--_worker", nargs=2, metavar=("MODEL", "OUTDIR"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._worker:
        run_worker(*a._worker)
        return 0
    models = discover([f.strip() for f in a.models.split(",") if f.strip()])
    targets = TARGETS
    rows = []
    for label, path in models:
        try:
            rows.append(bench_model(label, path, a))
        except Exception as e:  # the original itself does not run in ORT: say so, go on
            print(f"  {label}: skipped ({e.__class__.__name__}: {str(e).splitlines()[0][:160]})", file=sys.stderr)
    text = markdown(rows, targets, header(a, targets))
    print(text)
    if a.markdown_out:
        write_report(text, a.markdown_out)
    if a.json_out:
        write_report(json.dumps(rows, indent=1, default=float), a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
