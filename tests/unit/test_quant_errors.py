"""Bad input for the lossy options: clear one-line errors naming the problem, nothing written."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from graphopt import lossy
from graphopt.lossy.calibrate import CalibrationError
from graphopt.cli.main import main

import quant_models as qm


@pytest.fixture()
def cnn_file(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(qm.cnn(), path)
    return path


def _calib_dir(tmp_path, feeds, name="calib"):
    folder = tmp_path / name
    folder.mkdir()
    for i, feed in enumerate(feeds):
        np.savez(folder / f"{i:03d}.npz", **feed)
    return folder


@pytest.mark.parametrize("feed, message", [
    ({"input": np.zeros((1, 3, 8, 8), np.float32)}, "'input' is not a model input"),
    ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "input 'x' has dtype float64, the model expects float32"),
    ({"x": np.zeros((1, 3, 9, 8), np.float32)}, r"input 'x' has shape \[1, 3, 9, 8\].*axis 2"),
    ({"x": np.zeros((3, 8, 8), np.float32)}, "expects rank 4"),
    ({}, "missing model input 'x'"),
])
def test_bad_calibration_feeds_python_api(feed, message):
    with pytest.raises(CalibrationError, match=message):
        lossy.int8_static(qm.cnn(), [feed])


def test_empty_calibration_data():
    with pytest.raises(CalibrationError, match="empty"):
        lossy.int8_static(qm.cnn(), [])


@pytest.mark.parametrize("extra, code, message", [
    (["--int8", "static"], 2, "--int8 static needs calibration data"),
    (["--int8", "dynamic", "--accuracy-budget", "0.01"], 2, "--accuracy-budget needs evaluation data"),
    (["--int8", "static", "--calib", "CALIB", "--eval", "CALIB", "--accuracy-budget", "0.1"], 2, "held-out"),
    (["--int8", "static", "--calib", "EMPTY"], 1, "holds no .npz files"),
    (["--int8", "static", "--calib", "BAD"], 1, r"001.npz: input 'x' has dtype float64"),
    (["--int8", "static", "--calib", "nowhere"], 2, "nowhere' does not exist"),
    (["--calib", "CALIB"], 2, "--calib needs an int8 mode"),
])
def test_cli_errors_write_nothing(tmp_path, cnn_file, capsys, extra, code, message):
    good = _calib_dir(tmp_path, qm.feeds("x", (1, 3, 8, 8), 2, seed=1))
    (tmp_path / "empty").mkdir()
    bad = _calib_dir(tmp_path, qm.feeds("x", (1, 3, 8, 8), 1, seed=1)
                     + [{"x": np.zeros((1, 3, 8, 8), np.float64)}], name="bad")
    swap = {"CALIB": str(good), "EMPTY": str(tmp_path / "empty"), "BAD": str(bad),
            "nowhere": str(tmp_path / "nowhere")}
    out = tmp_path / "out.onnx"
    rc = main(["compile", str(cnn_file), "-o", str(out), *[swap.get(a, a) for a in extra]])
    err = capsys.readouterr().err
    assert rc == code and not out.exists()
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert re.search(message, err), err


def test_cli_static_writes_a_quantized_model(tmp_path, cnn_file, capsys):
    calib = _calib_dir(tmp_path, qm.feeds("x", (2, 3, 8, 8), 3, seed=1))
    stacked = tmp_path / "eval.npz"
    np.savez(stacked, x=np.random.default_rng(2).normal(size=(6, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out.onnx"
    rc = main(["compile", str(cnn_file), "-o", str(out), "--int8", "static", "--calib", str(calib),
               "--eval", str(stacked), "--calib-method", "percentile", "--percentile", "99.9"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "calibrated 9 tensors on 3 batches (6 samples, percentile)" in captured.err
    assert "top1 error (eval, 6 feeds)" in captured.out and "weight SQNR dB" in captured.out
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("QuantizeLinear") >= 4


def test_every_calibration_file_is_checked_before_any_work(tmp_path, cnn_file, capsys, monkeypatch):
    # the bad file sorts last: it must stop the run before calibration starts, naming the file
    feeds = qm.feeds("x", (1, 3, 8, 8), 3, seed=1) + [{"x": np.zeros((1, 3, 8, 9), np.float32)}]
    calib = _calib_dir(tmp_path, feeds)
    import graphopt.lossy as lossy_module

    def no_work(*a, **k):
        raise AssertionError("calibration started before the data was checked")
    monkeypatch.setattr(lossy_module, "calibrate", no_work)
    out = tmp_path / "out.onnx"
    rc = main(["compile", str(cnn_file), "-o", str(out), "--int8", "static", "--calib", str(calib)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "003.npz: input 'x' has shape [1, 3, 8, 9]" in err and "Traceback" not in err
