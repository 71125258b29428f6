"""int8 side by side: graphopt's static/dynamic quantization vs onnxruntime.quantization, on real models.

Models: the PP-OCR models that ship inside the rapidocr-onnxruntime wheel (a real CNN text
detector, DBNet/MobileNetV3; a real text recognizer, PP-OCRv4 SVTR with self-attention blocks; a
CNN text-direction classifier), found through bench/wheel_models.py (the installed package, or
fetched: `python -m bench.wheel_models fetch`). Data: real text (the Python standard library's module docstrings)
rendered with PIL and DejaVu fonts; calibration and evaluation use different lines. Both quantizers get the same float model (graphopt -O2 output)
and the same calibration feeds; agreement is measured against the float model on the evaluation
feeds, latency with ONNX Runtime (all graph optimizations, 1 thread, best and median of N rounds).

The default static row is what `graphopt compile --int8 static --calib DATA` writes on this CPU
(--int8-activations auto, mse ranges); the CPU's int8 flags and the format chosen are printed first.

    pip install pillow && python -m bench.wheel_models fetch
    python bench/int8_bench.py [--quick] [--out bench/results/int8_bench.md]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt import lossy
from graphopt.passes.quantize.cpu_format import choose_format, cpu_flags, describe_cpu
from graphopt.passes.quantize.ort_fusion import fusion_summary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import wheel_models  # noqa: E402
from bench.report_io import cpu_model, write_report  # noqa: E402
FONTS = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("DejaVuSans*.ttf"))


def text_lines() -> list[str]:
    """Real prose that does not change between runs: the Python standard library's module
    docstrings (lines of 12-60 ASCII characters, deduplicated, in a fixed order)."""
    import importlib
    lines = []
    for name in ("argparse", "json", "pathlib", "textwrap", "collections", "functools", "itertools", "subprocess",
                 "logging", "random", "statistics", "string", "csv", "zipfile", "tarfile", "shutil", "typing",
                 "unittest", "email", "http.client", "urllib.parse", "datetime", "decimal", "fractions", "heapq",
                 "bisect", "difflib", "pickle", "sqlite3", "tempfile", "threading", "queue", "socket", "ssl"):
        try:
            lines += (importlib.import_module(name).__doc__ or "").splitlines()
        except ImportError:
            continue
    clean = []
    for line in lines:
        line = " ".join(line.strip(" #*`|-").split())
        if 12 <= len(line) and line.isascii():
            clean.append(line[:60])
    return list(dict.fromkeys(clean))


def _font(size: int, i: int):
    from PIL import ImageFont
    return ImageFont.truetype(str(FONTS[i % len(FONTS)]), size) if FONTS else ImageFont.load_default()


def _normalize(img) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), np.float32) / 255.0
    return ((a - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def det_feeds(lines, count, rng):
    from PIL import Image, ImageDraw
    feeds = []
    for k in range(count):
        img = Image.new("RGB", (640, 320), tuple(int(v) for v in rng.integers(200, 256, 3)))
        d = ImageDraw.Draw(img)
        for j in range(6):
            line = lines[(k * 6 + j) % len(lines)]
            d.text((int(rng.integers(5, 60)), 10 + j * 50), line[:40], font=_font(int(rng.integers(18, 28)), k + j),
                   fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        feeds.append({"x": _normalize(img)})
    return feeds


def line_image(line, width, height, rng, k, flip=False):
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 8), line, font=_font(int(rng.integers(20, 26)), k), fill=(0, 0, 0))
    return img.rotate(180) if flip else img


def rec_feeds(lines, count, rng):
    return [{"x": _normalize(line_image(lines[k % len(lines)][:28], 320, 48, rng, k))} for k in range(count)]


def cls_feeds(lines, count, rng):
    return [{"x": _normalize(line_image(lines[k % len(lines)][:16], 192, 48, rng, k, flip=k % 2 == 1))}
            for k in range(count)]


# ------------------------------------------------------------------------------------- metrics
def ctc_decode(probs: np.ndarray) -> list[tuple]:
    out = []
    for row in probs.argmax(-1):
        seq, prev = [], -1
        for c in row:
            if c != prev and c != 0:
                seq.append(int(c))
            prev = c
        out.append(tuple(seq))
    return out


def agreement(kind, ref: list, got: list) -> dict:
    cos = np.mean([1 - float(a.ravel() @ b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
                   for a, b in zip(ref, got)])
    res = {"cosine": 1 - cos}
    if kind == "det":  # pixels on the same side of rapidocr's 0.3 threshold
        res["mask agree"] = float(np.mean([np.mean((a > 0.3) == (b > 0.3)) for a, b in zip(ref, got)]))
        inter = sum(int(np.sum((a > 0.3) & (b > 0.3))) for a, b in zip(ref, got))
        union = sum(int(np.sum((a > 0.3) | (b > 0.3))) for a, b in zip(ref, got))
        res["mask IoU"] = inter / union if union else 1.0  # text pixels only (the background is most of a page)
    elif kind == "rec":  # decoded strings equal, and per-step top-1
        res["text equal"] = float(np.mean([ctc_decode(a) == ctc_decode(b) for a, b in zip(ref, got)]))
        res["top1"] = float(np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(ref, got)]))
    else:
        res["top1"] = float(np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(ref, got)]))
    return res


def session(model_or_path, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def interleaved_latency_ms(models, feed, runs):
    """Latency per model over N rounds; in each round every model runs once, the starting model
    rotating, so that load from other processes on a shared machine falls on all of them alike.
    Returns a (runs, models) array of milliseconds."""
    sessions = [session(m) for m in models]
    for s in sessions:
        for _ in range(3):
            s.run(None, feed)
    times = np.zeros((runs, len(sessions)))
    for r in range(runs):
        for k in range(len(sessions)):
            i = (r + k) % len(sessions)
            t = time.perf_counter()
            sessions[i].run(None, feed)
            times[r, i] = 1000 * (time.perf_counter() - t)
    return times


# graphopt rows compared with the ORT row that uses the same activation type / mode
VERSUS = [("graphopt int8 static, default", "ORT quantize_static U8S8"),
          ("graphopt int8 static S8S8", "ORT quantize_static S8S8"), ("graphopt int8 dynamic", "ORT quantize_dynamic")]


def latency_ratios(labels, times) -> list[str]:
    """graphopt / ORT latency for each pair in VERSUS: best vs best, and the median over rounds of
    the per-round ratio (robust when other work on the machine comes and goes)."""
    lines = []
    for ours, theirs in VERSUS:
        i = next((k for k, lab in enumerate(labels) if lab.startswith(ours)), None)
        j = next((k for k, lab in enumerate(labels) if lab.startswith(theirs)), None)
        if i is None or j is None:
            continue
        best = times[:, i].min() / times[:, j].min()
        med = float(np.median(times[:, i] / times[:, j]))
        lines.append(f"{labels[i].split(' (')[0]} / {labels[j].split(' (')[0]} latency: "
                     f"{best:.3f} (best of {len(times)}), {med:.3f} (median of per-round ratios)")
    return lines


def outputs(model, feeds):
    s = session(model)
    return [s.run(None, f)[0] for f in feeds]


# ------------------------------------------------------------------------------ ORT quantizers
def ort_static(float_path: Path, calib, out: Path, unsigned: bool = False):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8, weight_type=QuantType.QInt8)
    return onnx.load(out)


def ort_dynamic(float_path: Path, out: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(float_path), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return onnx.load(out)


def bench_model(name, kind, path, calib, evals, runs, tmp: Path, modes):
    print(f"== {name}: compiling float model (graphopt -O2)", flush=True)
    original = onnx.load(path)
    for vi in list(original.graph.input) + list(original.graph.output):  # the cls model declares -1 dims
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = "N"
    base = graphopt.compile(original, level=2)
    from graphopt.passes.quantize.common import at_least_opset
    base = at_least_opset(base, 13)  # ORT's quantizers emit per-axis DequantizeLinear (opset 13) too
    float_path = tmp / f"{name}.float.onnx"
    onnx.save(base, float_path)
    ref = outputs(base, evals)
    rows = [("float (graphopt -O2)", base, None)]
    for mode in modes:
        t = time.perf_counter()
        if mode == "static":
            q, rep = lossy.int8_static(base, calib)  # the default: --int8-activations auto
            form = rep.mode.split("(")[1].rstrip(")")
            rows.append((f"graphopt int8 static, default = auto: {form} ({time.perf_counter() - t:.1f} s)", q, None))
            if any("final layer" in why for why in rep.kept_float.values()):  # ORT quantizes the head too
                q, _ = lossy.int8_static(base, calib, keep_final=False)
                rows.append(("graphopt int8 static auto, classifier int8 too", q, None))
            q, _ = lossy.int8_static(base, calib, method="percentile", percentile=99.99)
            rows.append(("graphopt int8 static auto, percentile 99.99", q, None))
            q, _ = lossy.int8_static(base, calib, method="minmax")  # the default is mse
            rows.append(("graphopt int8 static auto, minmax ranges", q, None))
            q, _ = lossy.int8_static(base, calib, bias_correction=True)
            rows.append(("graphopt int8 static auto, bias correction", q, None))
            t = time.perf_counter()
            theirs = ort_static(float_path, calib, tmp / f"{name}.ort_u8.onnx", unsigned=True)
            rows.append((f"ORT quantize_static U8S8 ({time.perf_counter() - t:.1f} s)", theirs, None))
            q, _ = lossy.int8_static(base, calib, activations="int8")
            rows.append(("graphopt int8 static S8S8 (forced)", q, None))
            t = time.perf_counter()
            theirs = ort_static(float_path, calib, tmp / f"{name}.ort_s8.onnx")
            rows.append((f"ORT quantize_static S8S8 ({time.perf_counter() - t:.1f} s)", theirs, None))
        else:
            q, _ = lossy.int8_dynamic(base)
            rows.append((f"graphopt int8 dynamic ({time.perf_counter() - t:.1f} s)", q, None))
            rows.append(("ORT quantize_dynamic", ort_dynamic(float_path, tmp / f"{name}.ort_dyn.onnx"), None))
    all_times = interleaved_latency_ms([model for _, model, _ in rows], evals[0], runs)
    best, median = all_times.min(axis=0), np.median(all_times, axis=0)
    table = []
    for k, ((label, model, _), ms, med) in enumerate(zip(rows, best, median)):
        agree = {k: float(v) for k, v in agreement(kind, ref, outputs(model, evals)).items()} if model is not base else {}
        fused = fusion_summary(model) if model is not base else None
        if fused:  # what ORT runs: integer kernels, and float ops left between quantized ones
            agree["integer kernels"] = fused.integer_kernels
            agree["float ops between"] = sum(fused.float_between.values())
        ratio = float(np.median(all_times[:, k] / all_times[:, 0]))  # per-round latency / float
        table.append((label, ms, med, ratio, model.ByteSize() / 2**20, agree))
        print(f"  {label:40} {ms:8.2f} ms (median {med:8.2f})  latency/float {ratio:5.3f}  "
              f"{model.ByteSize() / 2**20:6.2f} MiB  " + "  ".join(f"{a} {v:.4f}" if isinstance(v, float) else f"{a} {v}"
                                                              for a, v in agree.items()), flush=True)
    ratios = latency_ratios([label for label, _, _ in rows], all_times)
    for line in ratios:
        print("  " + line, flush=True)
    return table, ratios


MODELS = [("PP-OCRv4 det (CNN)", "det", "ppocr_det", det_feeds, ("static",)),  # third: wheel_models name
          ("PP-OCR cls (CNN)", "cls", "ppocr_cls", cls_feeds, ("static", "dynamic")),
          ("PP-OCRv4 rec (SVTR transformer)", "rec", "ppocr_rec", rec_feeds, ("static", "dynamic"))]


def missing_models_message(names):
    """None when every named wheel model is found, else what to run (one line)."""
    missing = [n for n in names if wheel_models.find(n) is None]
    return (f"needs the PP-OCR model(s) {', '.join(missing)}: python -m bench.wheel_models fetch "
            f"(or pip install --no-deps rapidocr-onnxruntime==1.4.4)") if missing else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer feeds and timing runs")
    ap.add_argument("--only", help="det, cls or rec")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_bench.md"))
    ap.add_argument("--runs", type=int, help="timing rounds (default 15, 10 with --quick)")
    args = ap.parse_args(argv)
    needed = [model for _, kind, model, _, _ in MODELS if not args.only or args.only == kind]
    if missing_models_message(needed):
        print(missing_models_message(needed), file=sys.stderr)
        return 2
    lines = text_lines()
    calib_lines, eval_lines = lines[0::2], lines[1::2]  # disjoint: evaluation never sees calibration text
    n_cal, n_eval, runs = (8, 8, 10) if args.quick else (16, 24, 15)
    runs = args.runs or runs
    flags = cpu_flags()
    cpu = f"{cpu_model()}; {describe_cpu(flags)}; {choose_format(flags).to_text()}"
    print(f"CPU: {cpu}", flush=True)
    report = [f"# int8 bench ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
              f"onnxruntime {ort.__version__}, 1 thread)", "", f"CPU: {cpu}", "",
              f"{n_cal} calibration / {n_eval} evaluation feeds of rendered real text (disjoint lines); "
              "latency: ORT, best and median of {runs} rounds on one evaluation feed, every model running once per round "
              "(starting model rotating).".replace("{runs}", str(runs)), ""]
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, model, make, modes in MODELS:
            if args.only and args.only != kind:
                continue
            rng_c, rng_e = np.random.default_rng(1), np.random.default_rng(2)
            calib, evals = make(calib_lines, n_cal, rng_c), make(eval_lines, n_eval, rng_e)
            table, ratios = bench_model(name, kind, wheel_models.find(model), calib, evals, runs, Path(tmp), modes)
            report += [f"## {name}", "", "| model | ORT ms (best) | ORT ms (median) | latency / float (median of rounds) | MiB "
                       "| agreement with float |", "|---|---:|---:|---:|---:|---|"]
            for label, ms, med, ratio, mib, agree in table:
                report.append(f"| {label} | {ms:.2f} | {med:.2f} | {ratio:.3f} | {mib:.2f} | "
                              + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in agree.items()) + " |")
            report += [""] + [f"- {line}" for line in ratios] + [""]
    write_report("\n".join(report) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
