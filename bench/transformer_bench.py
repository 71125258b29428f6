"""Transformer benchmark: graphopt -O2 against ONNX Runtime's transformer optimizer and onnxslim, side by
side in one run, on transformers exported as a user would today (bench/transformer_exports.py: BERT, ViT,
Llama-style GQA decoder, GPT-2, each by torch's TorchScript and dynamo exporters, dynamic batch/sequence)
and models/bert_dynamic.

Per model: node counts (original, onnxslim, ORT optimizer given the head count and hidden size,
graphopt -O2 --target ort), attention blocks fused (Softmax nodes left), ORT latency with every graph
optimization on of each output relative to the original's (interleaved runs, median), graphopt's
runtime on its own --target graphopt output relative to ORT on the original, and the largest output
difference of every graphopt output against ORT on the original.

    python bench/transformer_bench.py [--exports DIR] [--runs 30] [--batch 2 --seq 16] [--out bench/results/transformer_bench.md]

Needs torch and transformers for the exports (run in a subprocess from outside the repository: its
kernels/ folder would shadow the `kernels` package transformers imports); without them only
models/bert_dynamic is measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphopt  # noqa: E402
from bench.report_io import write_report  # noqa: E402
from graphopt.verify import ort_session  # noqa: E402

HIDDEN, HEADS = 64, 4  # bench/transformer_exports.py's sizes


def export_all(out: Path) -> None:
    script = ROOT / "bench" / "transformer_exports.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], cwd=tempfile.gettempdir(), check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def feed_for(model: onnx.ModelProto, batch: int, seq: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    names = [i.name for i in model.graph.input]
    if "pixel_values" in names:
        return {"pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    mask = np.ones((batch, seq), np.int64)
    if batch > 1:
        mask[1, seq - seq // 3:] = 0  # one padded sequence
    return {"input_ids": rng.integers(0, 100, (batch, seq)).astype(np.int64), "attention_mask": mask}


def ort_optimizer(path: Path, model_type: str) -> onnx.ModelProto | None:
    try:
        from onnxruntime.transformers.optimizer import optimize_model
        return optimize_model(str(path), model_type=model_type, num_heads=HEADS, hidden_size=HIDDEN).model
    except Exception as e:  # noqa: BLE001  (a tool that fails on a model is reported, not fatal)
        print(f"  ORT optimizer failed on {path.name}: {str(e).splitlines()[0][:120]}")
        return None


def onnxslim(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        import onnxslim as slim
        return slim.slim(model)
    except Exception as e:  # noqa: BLE001
        print(f"  onnxslim failed: {str(e).splitlines()[0][:120]}")
        return None


def counts(model: onnx.ModelProto | None) -> tuple[int | None, int | None, int | None]:
    """(nodes, attention ops, Softmax nodes left)."""
    if model is None:
        return None, None, None
    c = Counter(n.op_type for n in model.graph.node)
    return len(model.graph.node), sum(v for k, v in c.items() if "Attention" in k), c["Softmax"]


def graphopt_run(model: onnx.ModelProto):
    sess = graphopt.Session(model)
    names = [o.name for o in model.graph.output]
    return lambda feed: dict(zip(names, sess.run(None, feed)))


def ort_run(model: onnx.ModelProto):
    sess = ort_session(model, optimize=True)
    return lambda feed: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def interleaved(runners: dict, feed: dict, runs: int) -> dict:
    """Median seconds per runner, the runners taking turns in each round (load drifts hit all alike)."""
    times = {k: [] for k in runners}
    for fn in runners.values():
        fn(feed)  # warm-up
    for _ in range(runs):
        for k, fn in runners.items():
            t = time.perf_counter()
            fn(feed)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def max_diff(want: dict, got: dict) -> float:
    worst = 0.0
    for k, w in want.items():
        g = got[k]
        if w.shape != g.shape:
            return float("inf")
        d = np.where(np.isnan(w) & np.isnan(g), 0, np.abs(w - g))
        worst = max(worst, float(np.nanmax(d)) if d.size else 0.0, float("inf") if np.isnan(d).any() else 0.0)
    return worst


def bench(name: str, path: Path, model_type: str, a) -> dict:
    model = onnx.load(str(path))
    row = {"model": name}
    outs = {"original": model, "onnxslim": onnxslim(model), "ort-opt": ort_optimizer(path, model_type)}
    for target in ("ort", "graphopt"):
        outs[f"go-{target}"] = graphopt.compile_model(model, level=2, target=target).model
    outs["go-ort23"] = graphopt.compile_model(model, level=2, target="ort", opset=23).model  # RotaryEmbedding, Attention-23
    for key, m in outs.items():
        row[key] = counts(m)
    feed = feed_for(model, a.batch, a.seq)
    ref = ort_session(model)  # every ORT optimization off: the reference outputs
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feed)))
    runners = {"original": ort_run(model), "go-ort": ort_run(outs["go-ort"]), "go-ort23": ort_run(outs["go-ort23"])}
    if outs["ort-opt"] is not None:
        try:
            runners["ort-opt"] = ort_run(outs["ort-opt"])
        except Exception as e:  # noqa: BLE001
            print(f"  ORT cannot run its optimizer's output of {name}: {str(e)[:100]}")
    runners["go-runtime"] = graphopt_run(outs["go-graphopt"])
    row["diff"] = max(max_diff(want, runners["go-ort"](feed)), max_diff(want, runners["go-runtime"](feed)))
    lat = interleaved(runners, feed, a.runs)
    row["lat"] = {k: v / lat["original"] for k, v in lat.items()}
    row["orig_ms"] = lat["original"] * 1e3
    return row


def fmt(x, spec="d"):
    return "—" if x is None else format(x, spec)


def markdown(rows: list[dict], a) -> str:
    head = (f"Transformer benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {platform.machine()} "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, onnxruntime "
            f"{__import__('onnxruntime').__version__}, batch {a.batch}, seq {a.seq}, median of {a.runs} interleaved "
            f"runs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end (shared machine: "
            f"timings are noisy, ratios are within one run)")
    lines = [head, "", "| model | nodes: original | onnxslim | ORT optimizer | graphopt -O2 ort | graphopt ort "
             "--opset 23 | graphopt (go target) | attention fused (go-ort / go-ort-23 / ORT opt) | Softmax left "
             "(go-ort / ORT opt) | ORT all-on latency: go-ort / orig | go-ort-23 / orig | ORT-opt / orig | graphopt "
             "runtime (go target) / ORT orig | original ms | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["lat"]
        lines.append(
            f"| {r['model']} | {r['original'][0]} | {fmt(r['onnxslim'][0])} | {fmt(r['ort-opt'][0])} | "
            f"{r['go-ort'][0]} | {r['go-ort23'][0]} | {r['go-graphopt'][0]} | {r['go-ort'][1]} / {r['go-ort23'][1]} / "
            f"{fmt(r['ort-opt'][1])} | {r['go-ort'][2]} / {fmt(r['ort-opt'][2])} | {lat['go-ort']:.2f} | "
            f"{lat['go-ort23']:.2f} | {fmt(lat.get('ort-opt'), '.2f')} | {lat['go-runtime']:.2f} | {r['orig_ms']:.2f} | "
            f"{r['diff']:.1e} |")
    for key, what in (("go-ort", "--target ort"), ("go-ort23", "--target ort --opset 23"), ("ort-opt", "ORT optimizer")):
        ratios = [r["lat"][key] for r in rows if key in r["lat"]]
        geo = float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")
        lines.append(f"{'' if key != 'go-ort' else chr(10)}Geomean ORT all-on latency, {what} output / original: "
                     f"{geo:.3f} (worst {max(ratios):.3f}, {len(ratios)} models).")
    lines.append("\nmax abs diff: the larger of graphopt's --target ort output in ORT and its --target graphopt "
                 "output in graphopt's runtime, against ORT (optimizations off) on the original; go-ort-23's "
                 "outputs are checked by the tests (ORT's Attention-23 differs only on rows whose every key is "
                 "masked with a finite minimum, see README).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exports", default=None, help="folder of exports (made when missing)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "transformer_bench.md"))
    a = ap.parse_args(argv)
    exports = Path(a.exports or Path(tempfile.gettempdir()) / "graphopt_transformer_exports")
    if not any(exports.glob("*.onnx")):
        exports.mkdir(parents=True, exist_ok=True)
        export_all(exports)
    jobs = [("bert_dynamic (models/)", ROOT / "models" / "bert_dynamic" / "model.onnx", "bert")]
    types = {"bert": "bert", "vit": "vit", "llama": "gpt2", "gpt2": "gpt2"}
    for path in sorted(exports.glob("*.onnx")):
        jobs.append((path.stem, path, types.get(path.stem.split("_")[0], "bert")))
    rows = []
    for name, path, model_type in jobs:
        print(f"{name} ...", flush=True)
        rows.append(bench(name, path, model_type, a))
    text = markdown(rows, a)
    write_report(text, a.out)
    print(text)


if __name__ == "__main__":
    main()
