"""Accuracy budget: the written model's error, measured here with ORT on the held-out evaluation data
(never the calibration data), stays within the budget; no candidate -> error and nothing written."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt import lossy
from graphopt.budget import BudgetNotMet
from graphopt.cli import main

import quant_models as qm

CALIB = qm.feeds("x", (4, 3, 8, 8), 4, seed=1)
EVAL = qm.feeds("x", (4, 3, 8, 8), 6, seed=2)  # different seed: held out from calibration


def _max_rel_error(reference, candidate, feeds):
    """Mean over feeds of max|a-b| / max|a|, both models run by ORT without graph optimizations."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(reference.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(candidate.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    errs = []
    for f in feeds:
        a, b = ref.run(None, f)[0].astype(np.float64), got.run(None, f)[0].astype(np.float64)
        errs.append(np.abs(a - b).max() / np.abs(a).max())
    return float(np.mean(errs))


def test_budget_forces_fallback_and_is_honoured_on_held_out_data():
    model = qm.cnn()
    full, _ = lossy.int8_static(model, CALIB)
    full_error = _max_rel_error(model, full, EVAL)
    budget = 0.7 * full_error  # all-int8 cannot meet it: some layers must fall back to float
    chosen, report = lossy.with_budget(model, "static", EVAL, budget, "max-rel-error", calib=CALIB)
    onnx.checker.check_model(chosen, full_check=True)
    assert _max_rel_error(model, chosen, EVAL) <= budget
    assert report.kept_float and any("excluded" in why for why in report.kept_float.values())
    assert "int8, all layers" in report.table and "chosen:" in report.table


def test_dynamic_budget_with_cosine_metric():
    model = qm.mlp()
    feeds = qm.feeds("x", (8, 16), 4, seed=9)
    chosen, report = lossy.with_budget(model, "dynamic", feeds, 1e-3, "cosine")
    opts = ort.SessionOptions()
    ref = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(chosen.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    for f in feeds:
        a, b = ref.run(None, f)[0].ravel().astype(np.float64), got.run(None, f)[0].ravel().astype(np.float64)
        assert 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) <= 1e-3


def test_unreachable_budget_raises_and_cli_writes_nothing(tmp_path, capsys):
    with pytest.raises(BudgetNotMet, match="no candidate meets the accuracy budget 0"):
        lossy.with_budget(qm.cnn(), "static", EVAL, 0.0, "max-rel-error", calib=CALIB)
    model_path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(qm.cnn(), model_path)
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in CALIB])[:, None])
    np.savez(tmp_path / "eval.npz", x=np.concatenate([f["x"] for f in EVAL])[:, None])
    args = ["compile", str(model_path), "-o", str(out), "--int8", "static", "--calib", str(tmp_path / "calib.npz"),
            "--eval", str(tmp_path / "eval.npz"), "--accuracy-budget", "0", "--metric", "max-rel-error"]
    assert main(args) == 1 and not out.exists()
    assert "no candidate meets the accuracy budget" in capsys.readouterr().err
    assert main(args + ["--best-effort"]) == 0 and out.exists()
    assert "best effort:" in capsys.readouterr().out


def test_python_metric_and_unknown_metric(tmp_path, monkeypatch):
    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n"
        "def l1(ref, got):\n"
        "    return float(np.abs(ref[0] - got[0]).mean())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = qm.mlp()
    feeds = qm.feeds("x", (8, 16), 3, seed=9)
    chosen, report = lossy.with_budget(model, "dynamic", feeds, 0.05, "python:my_metric:l1")
    opts = ort.SessionOptions()
    ref = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(chosen.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert np.mean([np.abs(ref.run(None, f)[0] - got.run(None, f)[0]).mean() for f in feeds]) <= 0.05
    with pytest.raises(graphopt.UsageError, match="unknown --metric 'top5'"):
        lossy.with_budget(model, "dynamic", feeds, 0.05, "top5")
