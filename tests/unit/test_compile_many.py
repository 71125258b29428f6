"""graphopt compile-many: the same bytes from every executor, resumable, one failure not stopping the
rest, manifest mistakes as one line before any work."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from graphopt.cli.main import main
from graphopt.distributed import InProcessExecutor, PoolExecutor
from graphopt.fleet import DONE_SUFFIX, compile_many, read_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
FLEET = ["convnet", "transformer_block", "shape_chain", "redundant_ops"]


def manifest(tmp_path, entries, name="fleet.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"defaults": {"level": 2}, "models": entries}))
    return path


def fleet_entries(extra=()):
    return [{"model": str(MODELS / m / "model.onnx"), "name": m} for m in FLEET] + list(extra)


@pytest.fixture(scope="module")
def pool():
    with PoolExecutor(2) as p:
        yield p


def test_in_process_and_pool_write_the_same_bytes(tmp_path, pool):
    m = manifest(tmp_path, fleet_entries([{"model": str(MODELS / "convnet/model.onnx"), "name": "convnet-int8",
                                           "int8": "dynamic"}]))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rows_a = compile_many(read_manifest(m, tmp_path / "a"), InProcessExecutor())
    rows_b = compile_many(read_manifest(m, tmp_path / "b"), pool)
    assert [r.status for r in rows_a] == [r.status for r in rows_b] == ["compiled"] * 5
    for name in FLEET + ["convnet-int8"]:
        a, b = (tmp_path / d / f"{name}.opt.onnx" for d in "ab")
        assert a.read_bytes() == b.read_bytes(), name
        onnx.checker.check_model(onnx.load(a))


def test_a_rerun_skips_finished_entries_and_redoes_the_rest(tmp_path):
    m = manifest(tmp_path, fleet_entries()[:3])
    out = tmp_path / "out"
    out.mkdir()
    assert [r.status for r in compile_many(read_manifest(m, out), InProcessExecutor())] == ["compiled"] * 3
    (out / "convnet.opt.onnx").write_bytes((out / "convnet.opt.onnx").read_bytes()[:100])  # damaged since
    (out / f"shape_chain.opt.onnx{DONE_SUFFIX}").unlink()  # died between the output and its record
    rows = compile_many(read_manifest(m, out), InProcessExecutor())
    assert [r.status for r in rows] == ["compiled", "skipped", "compiled"]
    onnx.checker.check_model(onnx.load(out / "convnet.opt.onnx"))
    (out / f"transformer_block.opt.onnx{DONE_SUFFIX}").write_text(  # made from another input file since
        (out / f"transformer_block.opt.onnx{DONE_SUFFIX}").read_text().replace('"input_sha256": "', '"input_sha256": "0'))
    rows = compile_many(read_manifest(m, out), InProcessExecutor())
    assert [r.status for r in rows] == ["skipped", "compiled", "skipped"]
    entries = fleet_entries()[:3]
    entries[1]["level"] = 1  # other options: not the same output any more
    rows = compile_many(read_manifest(manifest(tmp_path, entries), out), InProcessExecutor())
    assert [r.status for r in rows] == ["skipped", "compiled", "skipped"]


def test_one_failure_does_not_stop_the_fleet(tmp_path, capsys):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    m = manifest(tmp_path, fleet_entries()[:2] + [{"model": "broken.onnx"}, {"model": "missing.onnx"}])
    assert main(["compile-many", str(m), "--out-dir", str(tmp_path / "out"), "--workers", "1", "-q"]) == 1
    out = capsys.readouterr().out
    assert "4 models: 2 compiled, 0 skipped (already done), 2 failed" in out
    assert "broken" in out and "missing" in out and out.count("FAILED") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{n}.opt.onnx" for n in FLEET[:2]] + [f"{n}.opt.onnx{DONE_SUFFIX}" for n in FLEET[:2]])


def test_csv_manifest(tmp_path, capsys):
    (tmp_path / "fleet.csv").write_text("model,output,level,verify\n"
                                        f"{MODELS / 'convnet/model.onnx'},c.onnx,1,true\n"
                                        f"{MODELS / 'shape_chain/model.onnx'},s.onnx,,false\n")
    assert main(["compile-many", str(tmp_path / "fleet.csv"), "--workers", "1", "-q"]) == 0
    assert "2 models: 2 compiled" in capsys.readouterr().out
    assert (tmp_path / "c.onnx").exists() and (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("doc, message", [
    ("{", "is not valid JSON"),
    ('[{"model": "m.onnx", "levle": 1}]', "entry 1: unknown key 'levle'"),
    ('[{"model": "m.onnx", "level": 7}]', "entry 1: level must be 0..3, got 7"),
    ('[{"model": "m.onnx", "int8": "static"}]', "entry 1: int8 static needs calib"),
    ('[{"model": "a/m.onnx"}, {"model": "b/m.onnx", "name": "a-m"}]', "entry 2: output '.*' is also entry 1's output"),
    ("[]", "lists no models"),
])
def test_manifest_mistakes_are_one_line_and_nothing_is_written(tmp_path, capsys, doc, message):
    (tmp_path / "fleet.json").write_text(doc)
    assert main(["compile-many", str(tmp_path / "fleet.json"), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("graphopt: error: ")
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_no_output_and_no_out_dir(tmp_path, capsys):
    m = manifest(tmp_path, fleet_entries()[:1])
    assert main(["compile-many", str(m)]) == 2
    assert "no output (give one per entry or --out-dir DIR)" in capsys.readouterr().err


def test_a_model_compiles_to_the_same_bytes_after_other_compiles():
    """New node names come from a counter that each compile restarts: a worker that compiled other
    models first writes the same bytes as a fresh process."""
    import graphopt
    path = MODELS / "transformer_block/model.onnx"
    first = graphopt.compile(path).SerializeToString()
    graphopt.compile(MODELS / "bert_encoder/model.onnx")
    assert graphopt.compile(path).SerializeToString() == first
