"""compile-many: compile, verify and (optionally) quantize a fleet of models listed in a manifest, on
an executor (graphopt/distributed), resumable, one failure not stopping the rest.

Manifest: JSON (a list of entries, or {"defaults": {...}, "models": [...]}) or CSV (a header row of
the same keys). Keys: model (required), output, name, level (0-3), target, opset, int8 (dynamic |
static), calib, calib_method, verify (true: compare with the input model in ONNX Runtime). Relative
paths are relative to the manifest.

Each entry is one task: a pure function of (model path in shared storage, options) -> the compiled
model's bytes and a few numbers; this process writes the output atomically (temp file + rename) and
then `<output>.done.json` (the entry's options, graphopt's version, the input's and the output's
SHA-256). A rerun skips an entry whose record matches all of these; anything else is redone.
(Calibration data is named by path only: changed data under the same path goes unnoticed; --fresh.)
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from graphopt.errors import UsageError, VerificationFailed

KEYS = {"model", "output", "name", "level", "target", "opset", "int8", "calib", "calib_method", "verify"}
DONE_SUFFIX = ".done.json"


@dataclass
class Entry:
    name: str
    model: str
    output: str
    options: dict = field(default_factory=dict)   # level, target, opset, int8, calib, calib_method, verify

    def record(self) -> dict:
        """What a finished output was made from: a change in any of these redoes the entry."""
        return {"model": self.model, **self.options}


def _typed(raw: dict, where: str) -> dict:
    opts = {"level": 2, "target": None, "opset": None, "int8": None, "calib": None, "calib_method": "minmax",
            "verify": True}
    for key, value in raw.items():
        if value is None or value == "" or key in ("model", "output", "name"):
            continue
        if key in ("level", "opset"):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise UsageError(f"{where}: {key} must be an integer, got {value!r}") from None
        if key == "verify" and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise UsageError(f"{where}: verify must be true or false, got {value!r}")
            value = value.lower() in ("true", "1", "yes")
        opts[key] = value
    if opts["level"] not in range(4):
        raise UsageError(f"{where}: level must be 0..3, got {opts['level']}")
    if opts["int8"] not in (None, "dynamic", "static"):
        raise UsageError(f"{where}: int8 must be dynamic or static, got {opts['int8']!r}")
    if opts["int8"] == "static" and not opts["calib"]:
        raise UsageError(f"{where}: int8 static needs calib (calibration data)")
    return opts


def read_manifest(path, out_dir=None, force: bool = False) -> list[Entry]:
    """Parse and check the whole manifest before any work: a mistake is one line naming the entry."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"manifest '{path}' does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(text.splitlines())]
        defaults = {}
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"manifest '{path}' is not valid JSON: {e}") from None
        defaults, rows = ({}, doc) if isinstance(doc, list) else (doc.get("defaults", {}), doc.get("models"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows) or not isinstance(defaults, dict):
            raise UsageError(f"manifest '{path}': expected a list of entries or {{\"defaults\": {{...}}, \"models\": [...]}}")
    if not rows:
        raise UsageError(f"manifest '{path}' lists no models")
    base = path.resolve().parent
    stems = [Path(str(r.get("model", ""))).stem for r in rows]
    entries, outputs = [], {}
    for i, row in enumerate(rows, start=1):
        where = f"manifest '{path}' entry {i}"
        raw = {**defaults, **row}
        unknown = sorted(set(raw) - KEYS)
        if unknown:
            raise UsageError(f"{where}: unknown key '{unknown[0]}' (keys: {', '.join(sorted(KEYS))})")
        if not raw.get("model"):
            raise UsageError(f"{where}: no model")
        model = base / str(raw["model"])
        stem = Path(str(raw["model"])).stem  # models/x/model.onnx and models/y/model.onnx: x-model, y-model
        name = str(raw.get("name") or (stem if stems.count(stem) == 1 else f"{model.parent.name}-{stem}"))
        if raw.get("output"):
            output = base / str(raw["output"])
        elif out_dir is not None:
            output = Path(out_dir).resolve() / f"{name}.opt.onnx"
        else:
            raise UsageError(f"{where}: no output (give one per entry or --out-dir DIR)")
        opts = _typed(raw, where)
        if opts["calib"]:
            opts["calib"] = str(base / str(opts["calib"]))
        if str(output) in outputs:
            raise UsageError(f"{where}: output '{output}' is also entry {outputs[str(output)]}'s output")
        if output.resolve() == model.resolve() and not force:
            raise UsageError(f"{where}: refusing to overwrite the input '{model}' (use --force)")
        outputs[str(output)] = i
        entries.append(Entry(name, str(model), str(output), opts))
    return entries


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished(entry: Entry) -> bool:
    """True when the output exists, is what the record says it is, and was made from these options."""
    out, done = Path(entry.output), Path(entry.output + DONE_SUFFIX)
    try:
        record = json.loads(done.read_text())
    except (OSError, ValueError):
        return False
    model = Path(entry.model)
    return (record.get("entry") == entry.record() and record.get("graphopt") == _version() and out.is_file()
            and model.is_file() and record.get("input_sha256") == _sha256(model) and record.get("sha256") == _sha256(out))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("graphopt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def compile_entry(model_path: str, options: dict) -> dict:
    """The task (runs on any worker): compile, quantize when asked, verify; returns the model's bytes."""
    import onnx

    from graphopt.ir.model_io import load_model
    from graphopt.pipeline import compile_model
    start = time.perf_counter()
    result = compile_model(model_path, level=options["level"], target=options["target"], opset=options["opset"])
    model, note = result.model, "not verified"
    if options["verify"]:
        from graphopt.verify import compare_models
        report = compare_models(load_model(model_path), model)
        if not report.ok:
            raise VerificationFailed(f"outputs changed: {report.summary()}")
        note = f"max abs err {max((o.max_abs for o in report.outputs), default=0.0):.2g}"
    if options["int8"]:
        from graphopt.lossy import api as lossy
        if options["int8"] == "static":
            model, rep = lossy.int8_static(model, options["calib"], options["calib_method"])
        else:
            model, rep = lossy.int8_dynamic(model)
        note += f"; int8 {options['int8']}: {len(rep.quantized)} quantized"
    return {"bytes": model.SerializeToString(), "input_sha256": _sha256(Path(model_path)),
            "nodes_before": result.report.before.nodes,
            "nodes_after": len(onnx.load_from_string(model.SerializeToString()).graph.node),
            "seconds": time.perf_counter() - start, "note": note}


def write_result(entry: Entry, value: dict) -> None:
    """The output atomically, then its record (a crash between the two only redoes the entry)."""
    import onnx

    from graphopt import ir
    out = Path(entry.output)
    ir.save(onnx.load_from_string(value["bytes"]), out, protect=() if entry.output == entry.model else {entry.model})
    record = {"entry": entry.record(), "graphopt": _version(), "input_sha256": value["input_sha256"],
              "sha256": _sha256(out), "nodes_before": value["nodes_before"],
              "nodes_after": value["nodes_after"]}
    fd, tmp = tempfile.mkstemp(prefix=".graphopt-", dir=out.parent)
    try:
        os.fchmod(fd, 0o644)  # as readable as the model beside it (mkstemp makes it private)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, entry.output + DONE_SUFFIX)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Row:
    name: str
    status: str          # compiled | skipped | FAILED
    nodes: str = ""
    seconds: float = 0.0
    attempts: int = 0
    note: str = ""


def summary_table(rows: list[Row]) -> str:
    w = max([6] + [len(r.name) + 2 for r in rows])
    lines = [f"{'model':{w}}{'status':10}{'nodes':>12}{'seconds':>9}{'tries':>6}  note"]
    lines += [f"{r.name:{w}}{r.status:10}{r.nodes:>12}{r.seconds:>9.2f}{r.attempts:>6}  {r.note}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in ("compiled", "skipped", "FAILED")}
    lines.append(f"{len(rows)} models: {counts['compiled']} compiled, {counts['skipped']} skipped (already done), "
                 f"{counts['FAILED']} failed")
    return "\n".join(lines)


def compile_many(entries: list[Entry], executor, retries: int = 2, fresh: bool = False, progress=None) -> list[Row]:
    """Compile every unfinished entry on `executor`, writing each output as its task finishes (so an
    interrupted job resumes where it stopped); one Row per entry, in manifest order."""
    from graphopt.distributed import Task
    rows = {e.output: Row(e.name, "skipped", note="output complete") for e in entries}
    todo = [e for e in entries if fresh or not finished(e)]

    def on_done(i: int, o) -> None:
        e, row = todo[i], rows[todo[i].output]
        row.attempts = o.attempts
        if not o.ok:
            row.status, row.note = "FAILED", o.error
            return
        v = o.value
        try:
            write_result(e, v)
        except Exception as exc:  # noqa: BLE001 (a folder that vanished, a full disk: this entry fails)
            row.status, row.note = "FAILED", f"writing {e.output}: {exc}"
            return
        finally:
            o.value = None  # the model's bytes are on disk now: do not hold a fleet of them in memory
        row.status, row.nodes, row.seconds, row.note = ("compiled", f"{v['nodes_before']} -> {v['nodes_after']}",
                                                         v["seconds"], v["note"])

    tasks = [Task(e.name, compile_entry, (e.model, e.options)) for e in todo]
    executor.map(tasks, retries, progress, label=f"compile-many on {executor.describe()}", on_done=on_done)
    return list(rows.values())
