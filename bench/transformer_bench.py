"""Transformer benchmark: graphopt -O2 against ONNX Runtime's transformer optimizer and onnxslim, side by
side in one run, on transformers exported as a user would today (bench/transformer_exports.py: BERT, ViT,
Llama-style GQA decoder, GPT-2, each by torch's TorchScript and dynamo exporters, dynamic batch/sequence;
the Llama-style decoder's KV-cache step graph) and models/bert_dynamic.

Per model: node counts (original, onnxslim, ORT optimizer given the head count and hidden size,
graphopt -O2 --target ort), attention blocks fused (Softmax nodes left), ORT latency with every graph
optimization on of each output relative to the original's (interleaved runs, median), graphopt's
runtime on its own --target graphopt output relative to ORT on the original, and the largest output
difference of every graphopt output against ORT on the original. KV-cache step graphs get a decode loop
(prefill, then single-token steps feeding present back as past): prefill ms and decode tokens/s of ORT
on the original and on graphopt's --target ort outputs (model opset, and --opset 23), and of graphopt's
runtime on its own target.

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


def decode_loop(fn, model: onnx.ModelProto, batch: int, prompt: int, steps: int, seed: int = 0):
    """Prefill `prompt` tokens, then `steps` single tokens feeding present back as past:
    (logits per step, prefill seconds, decode seconds per step)."""
    rng = np.random.default_rng(seed)
    outs = [o.name for o in model.graph.output]
    pasts = [i for i in model.graph.input if i.name.startswith("past_")]
    kv, head = (pasts[0].type.tensor_type.shape.dim[i].dim_value for i in (1, 3))
    past = {i.name: np.zeros((batch, kv, 0, head), np.float32) for i in pasts}
    mask, logits, times = np.ones((batch, 0), np.int64), [], []
    for step in range(steps + 1):
        new = prompt if step == 0 else 1
        mask = np.concatenate([mask, np.ones((batch, new), np.int64)], axis=1)
        feed = {"input_ids": rng.integers(0, 100, (batch, new)).astype(np.int64), "attention_mask": mask, **past}
        t = time.perf_counter()
        got = dict(zip(outs, fn(feed)))
        times.append(time.perf_counter() - t)
        logits.append(got["logits"])
        past = {n: got[n.replace("past_", "present_")] for n in past}
    return logits, times[0], statistics.median(times[1:])


def bench_decode(name: str, path: Path, a) -> dict:
    """Decode tokens/s of a KV-cache step graph: ORT all-on on the original and on graphopt's --target ort
    outputs (model opset and 23), graphopt's runtime on its --target graphopt output."""
    model = onnx.load(str(path))
    outs = {"original": model, "onnxslim": onnxslim(model), "ort-opt": ort_optimizer(path, "gpt2")}
    outs["go-ort"] = graphopt.compile_model(model, level=2, target="ort").model
    outs["go-ort23"] = graphopt.compile_model(model, level=2, target="ort", opset=23).model
    outs["go-graphopt"] = graphopt.compile_model(model, level=2, target="graphopt").model
    row = {"model": name, **{k: counts(m) for k, m in outs.items()}}
    ref = ort_session(model)
    want = decode_loop(lambda f: ref.run(None, f), model, a.batch, a.seq, a.steps)[0]
    runners = {"original": ort_session(model, optimize=True), "go-ort": ort_session(outs["go-ort"], optimize=True),
               "go-ort23": ort_session(outs["go-ort23"], optimize=True), "go-runtime": graphopt.Session(outs["go-graphopt"])}
    row["diff"] = max(float(np.abs(w - g).max()) for key in ("go-ort", "go-ort23", "go-runtime")
                      for w, g in zip(want, decode_loop(lambda f: runners[key].run(None, f), model, a.batch,
                                                        a.seq, a.steps)[0]))
    samples = {k: ([], []) for k in runners}
    for _ in range(max(3, a.runs // 5)):  # whole loops in turn
        for k, sess in runners.items():
            _, pre, step = decode_loop(lambda f: sess.run(None, f), model, a.batch, a.seq, a.steps)
            samples[k][0].append(pre)
            samples[k][1].append(step)
    row["prefill_ms"] = {k: statistics.median(v[0]) * 1e3 for k, v in samples.items()}
    row["tok_s"] = {k: a.batch / statistics.median(v[1]) for k, v in samples.items()}
    return row


def decode_markdown(rows: list[dict], a) -> str:
    lines = [f"Decode loop: batch {a.batch}, prompt {a.seq} tokens, then {a.steps} single-token steps feeding "
             "present back as past (median per step); same run and machine as above.", "",
             "| model | nodes: original | onnxslim | ORT optimizer | graphopt -O2 ort | graphopt ort --opset 23 | "
             "graphopt (go target) | attention fused (go-ort / go-ort-23 / go) | prefill ms: ORT orig / ORT go-ort / "
             "ORT go-ort-23 / graphopt runtime | decode tokens/s: ORT orig | ORT go-ort | ORT go-ort-23 | graphopt "
             "runtime | max abs diff (logits, every step) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pre, tok = r["prefill_ms"], r["tok_s"]
        lines.append(f"| {r['model']} | {r['original'][0]} | {fmt(r['onnxslim'][0])} | {fmt(r['ort-opt'][0])} | "
                     f"{r['go-ort'][0]} | {r['go-ort23'][0]} | {r['go-graphopt'][0]} | {r['go-ort'][1]} / "
                     f"{r['go-ort23'][1]} / {r['go-graphopt'][1]} | {pre['original']:.2f} / {pre['go-ort']:.2f} / "
                     f"{pre['go-ort23']:.2f} / {pre['go-runtime']:.2f} | {tok['original']:.0f} | {tok['go-ort']:.0f} | "
                     f"{tok['go-ort23']:.0f} | {tok['go-runtime']:.0f} | "
                     f"{r['diff']:.1e} |")
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--steps", type=int, default=16, help="decode steps after the prompt (KV-cache models)")
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
    rows, decode_rows = [], []
    for name, path, model_type in jobs:
        print(f"{name} ...", flush=True)
        if name.startswith("llama-kv"):
            decode_rows.append(bench_decode(name, path, a))
        else:
            rows.append(bench(name, path, model_type, a))
    text = markdown(rows, a) + ("\n" + decode_markdown(decode_rows, a) if decode_rows else "")
    write_report(text, a.out)
    print(text)


if __name__ == "__main__":
    main()
