"""Golden models: small real models built by scripts, with reference inputs/outputs from ONNX Runtime.

    models/<name>/build.py      build() -> ModelProto  (optional: inputs(rng), DIMS, save(model, path))
    models/<name>/model.onnx    the built model (+ model.onnx.data when its weights are external)
    models/<name>/golden.npz    "input:<name>" and "output:<name>" arrays

The outputs always come from ONNX Runtime with every optimization disabled, run on the model as
stored, never from graphopt.

    python -m graphopt.golden --update [NAME ...]   rebuild the models, regenerate golden.npz
    python -m graphopt.golden [NAME ...]            check: models up to date with their scripts,
                                                    golden.npz reproducible, graphopt O0-O3 match it
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

MODEL_FILE, GOLDEN_FILE, BUILD_FILE = "model.onnx", "golden.npz", "build.py"
SEED = 0
RTOL, ATOL = 1e-4, 1e-5


def models_dir() -> Path:
    """The repository's models/ folder (GRAPHOPT_MODELS overrides it)."""
    env = os.environ.get("GRAPHOPT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def list_models() -> list[str]:
    """Names of the models that have a build script or a built model.onnx."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and ((p / BUILD_FILE).is_file() or (p / MODEL_FILE).is_file()))


def model_path(name: str) -> Path:
    return models_dir() / name / MODEL_FILE


def model_files(name: str) -> list[Path]:
    """model.onnx and every external data file beside it that it references."""
    path = model_path(name)
    files = [path]
    model = onnx.load_model(str(path), load_external_data=False)
    locations = {e.value for t in _all_tensors(model.graph) for e in t.external_data if e.key == "location"}
    files += [path.parent / loc for loc in sorted(locations)]
    return files


def fingerprint(paths) -> dict[str, str]:
    """sha256 of each file, to show a compile left its input untouched."""
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@dataclass
class Golden:
    inputs: dict
    outputs: dict  # in the model's output order


def load_golden(name: str) -> Golden:
    with np.load(models_dir() / name / GOLDEN_FILE, allow_pickle=False) as data:
        inputs = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
        outputs = {k[len("output:"):]: data[k] for k in data.files if k.startswith("output:")}
    order = [o.name for o in onnx.load_model(str(model_path(name)), load_external_data=False).graph.output]
    return Golden(inputs, {k: outputs[k] for k in order if k in outputs})


def save_golden(folder: Path, inputs: dict, outputs: dict) -> Path:
    """An .npz as np.savez writes it, but byte-for-byte reproducible (fixed zip timestamps), so
    regenerating unchanged golden files leaves git clean."""
    arrays = {f"input:{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"output:{k}": np.asarray(v) for k, v in outputs.items()})
    path = folder / GOLDEN_FILE
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    return path


# ---------------------------------------------------------------- building

def load_builder(name: str):
    """Import models/<name>/build.py (models/ goes on sys.path so it can import `build_common`)."""
    root = models_dir()
    script = root / name / BUILD_FILE
    if not script.is_file():
        raise FileNotFoundError(f"{script}: no build script")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(f"graphopt_models_{name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(name: str, folder: Path | None = None) -> Path:
    """Run the build script and write model.onnx (+ data) into `folder` (default: models/<name>/)."""
    builder = load_builder(name)
    folder = Path(folder) if folder is not None else models_dir() / name
    model = builder.build()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # a fresh folder: external data is never appended to
        target = Path(tmp) / MODEL_FILE
        save = getattr(builder, "save", None)
        if save is not None:
            save(model, target)
        else:
            onnx.save_model(model, str(target))
        for old in folder.glob(MODEL_FILE + "*"):
            old.unlink()
        for made in Path(tmp).iterdir():
            made.chmod(0o644)
            shutil.move(str(made), folder / made.name)
    return folder / MODEL_FILE


def golden_inputs(name: str, model: onnx.ModelProto) -> dict:
    """The build script's inputs(rng), else seeded random data with its DIMS for symbolic dims."""
    builder = load_builder(name)
    rng = np.random.default_rng(SEED)
    if hasattr(builder, "inputs"):
        return builder.inputs(rng)
    from graphopt.verify import random_feed
    return random_feed(model, seed=SEED, dims=getattr(builder, "DIMS", None))


def reference_outputs(model_or_path, feed: dict) -> dict:
    """ONNX Runtime, CPU, every graph optimization disabled: the only source of expected outputs."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    source = str(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in wanted})))


def update(name: str) -> Path:
    """Rebuild models/<name>/model.onnx and regenerate its golden.npz."""
    path = build(name)
    model = onnx.load_model(str(path))
    feed = golden_inputs(name, model)
    return save_golden(path.parent, feed, reference_outputs(path, feed))


# ---------------------------------------------------------------- checking

def compare(want: dict, got: dict, rtol=RTOL, atol=ATOL) -> list[str]:
    """Mismatches between two output dicts (names, order, shapes, dtypes, values)."""
    from graphopt.verify import compare_arrays
    if list(want) != list(got):
        return [f"outputs {list(got)} != expected {list(want)}"]
    problems = []
    for k in want:
        err = compare_arrays(k, want[k], got[k], rtol, atol)
        if not err.ok:
            problems.append(f"output '{k}': max abs {err.max_abs:.3g}, max rel {err.max_rel:.3g} {err.note}".rstrip())
    return problems


def check(name: str, levels=(0, 1, 2, 3)) -> list[str]:
    """Everything wrong with one golden model (empty when all is well)."""
    folder = models_dir() / name
    if not model_path(name).is_file() or not (folder / GOLDEN_FILE).is_file():
        return [f"{name}: model.onnx or golden.npz missing (run python -m graphopt.golden --update {name})"]
    problems = []
    if (folder / BUILD_FILE).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build(name, Path(tmp))
            stored = fingerprint(model_files(name))
            rebuilt = {str(folder / Path(k).name): v for k, v in fingerprint(fresh.parent.iterdir()).items()}
            if stored != rebuilt:
                problems.append(f"{name}: model.onnx is stale, build.py now builds something else "
                                f"(run python -m graphopt.golden --update {name})")
    golden = load_golden(name)
    problems += [f"{name}: ONNX Runtime no longer reproduces golden.npz: {p}"
                 for p in compare(golden.outputs, reference_outputs(model_path(name), golden.inputs))]
    from graphopt.pipeline import compile_model
    for level in levels:
        try:
            compiled = compile_model(model_path(name), level=level).model
            onnx.checker.check_model(compiled)
            got = reference_outputs(compiled, golden.inputs)
        except Exception as e:  # report and go on with the next level
            problems.append(f"{name} O{level}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        problems += [f"{name} O{level}: {p}" for p in compare(golden.outputs, got)]
    return problems


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_tensors(sub)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphopt.golden", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="models to handle (default: all under models/)")
    ap.add_argument("--update", action="store_true", help="rebuild the models and regenerate golden.npz")
    ap.add_argument("--levels", default="0,1,2,3", help="optimization levels to check (default 0,1,2,3)")
    ap.add_argument("--list", action="store_true", help="list the golden models and exit")
    args = ap.parse_args(argv)
    names = args.names or list_models()
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        ap.error(f"unknown model(s): {', '.join(unknown)} (in {models_dir()})")
    if args.list:
        print("\n".join(names))
        return 0
    if args.update:
        for name in names:
            path = update(name)
            size = sum(f.stat().st_size for f in model_files(name))
            print(f"{name}: {path.relative_to(models_dir().parent)} (model {size / 1024:.1f} KiB)")
        return 0
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    failed = 0
    for name in names:
        problems = check(name, levels)
        failed += bool(problems)
        print(f"{name}: ok" if not problems else "\n".join(problems))
    print(f"{len(names) - failed}/{len(names)} golden models ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
