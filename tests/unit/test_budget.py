"""Accuracy budget: the written model's error, measured here with ORT on the held-out evaluation data
(never the calibration data), stays within the budget; no candidate -> error and nothing written."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt import lossy
from graphopt.lossy.budget import BudgetNotMet
from graphopt.cli.main import main
from graphopt.passes.prune import prune

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
    # min/max S8S8 pinned: the max-rel-error metric and the 0.7 factor were set for that form
    full, _ = lossy.int8_static(model, CALIB, method="minmax", activations="int8")
    full_error = _max_rel_error(model, full, EVAL)
    budget = 0.7 * full_error  # all-int8 cannot meet it: some layers must fall back to float
    chosen, report = lossy.with_budget(model, "static", EVAL, budget, "max-rel-error", calib=CALIB,
                                       method="minmax", activations="int8")
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


# ------------------------------------------------------------------- pruning: lower the ratio
GRADED = """<ir_version: 8, opset_import: ["": 17]>
graded (float[N,3,8,8] x) => (float[N,4] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv<pads=[1,1,1,1]>(r1, w2, b2)
  r2 = Relu(c2)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  y = Gemm<transB=1>(f, w3, b3)
}"""
PRUNE_EVAL = qm.feeds("x", (2, 3, 8, 8), 6, seed=2)     # used by the search
PRUNE_HELD = qm.feeds("x", (2, 3, 8, 8), 6, seed=7)     # never seen by it: checks the written model
PRUNE_BUDGET = 0.02


def _graded(seed=0):
    """Two 8-channel convs whose channels come in three sizes: 2 tiny (1e-3), 2 small (0.3), 4 full.
    Pruning 25% removes the tiny ones (error ~1e-3); 50% also removes the small ones (error >> 2%)."""
    model = onnx.parser.parse_model(GRADED)
    rng = np.random.default_rng(seed)
    scale = np.ones(8)
    for w, b, tiny, small in (("w1", "b1", [0, 1], [2, 3]), ("w2", "b2", [5, 6], [0, 7])):
        fan_in = 27 if w == "w1" else 72
        s = scale.copy()
        s[tiny], s[small] = 1e-3, 0.3
        wv = rng.normal(0, np.sqrt(2 / fan_in), (8, 3 if w == "w1" else 8, 3, 3)) * s[:, None, None, None]
        bv = rng.normal(0, 0.1, 8) * s
        model.graph.initializer.extend([onnx.numpy_helper.from_array(wv.astype(np.float32), w),
                                        onnx.numpy_helper.from_array(bv.astype(np.float32), b)])
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 0.5, (4, 8)).astype(np.float32), "w3"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b3")])
    onnx.checker.check_model(model, full_check=True)
    return model


def _out_channels(model, node_output):
    node = next(n for n in model.graph.node if n.output[0] == node_output)
    return next(t.dims[0] for t in model.graph.initializer if t.name == node.input[1])


def test_prune_budget_lowers_the_ratio_and_holds_on_held_out_data():
    from graphopt.lossy.budget import prune_with_budget
    model = _graded()
    full, _ = prune(model, 0.5, "channel")
    assert _max_rel_error(model, full, PRUNE_EVAL) > PRUNE_BUDGET  # the requested ratio breaks the budget
    chosen, report, table = prune_with_budget(model, 0.5, "channel", PRUNE_EVAL, PRUNE_BUDGET, "max-rel-error")
    onnx.checker.check_model(chosen, full_check=True)
    assert _max_rel_error(model, chosen, PRUNE_HELD) <= PRUNE_BUDGET
    assert 6 <= _out_channels(chosen, "c1") < 8 and report.pruned  # pruned, but less than asked
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert rows["channel 0.5"].rstrip().endswith("no") and rows["channel 0.25"].rstrip().endswith("yes")
    assert "channel 0.5, 1 layer(s) kept" in rows and "chosen:" in table


def test_prune_budget_cli_end_to_end(tmp_path, capsys):
    model_path, out, data = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "eval"
    onnx.save(_graded(), model_path)
    data.mkdir()
    for i, f in enumerate(PRUNE_EVAL):
        np.savez(data / f"{i}.npz", **f)
    args = ["compile", str(model_path), "-o", str(out), "-O0", "--prune", "0.5", "--prune-mode", "channel",
            "--accuracy-budget", str(PRUNE_BUDGET), "--eval", str(data), "--metric", "max-rel-error"]
    assert main(args) == 0
    assert "chosen: 'channel 0." in capsys.readouterr().out
    written = onnx.load(out)
    assert _out_channels(written, "c1") < 8
    assert _max_rel_error(_graded(), written, PRUNE_HELD) <= PRUNE_BUDGET
    # both lossy steps under one budget is refused before any work (usage error, exit 2)
    assert main(args[:-2] + ["--int8", "dynamic", "-o", str(tmp_path / "both.onnx")]) == 2
    assert not (tmp_path / "both.onnx").exists()


def test_prune_budget_unreachable_writes_nothing_unless_best_effort(tmp_path, capsys):
    from graphopt.lossy.budget import prune_with_budget
    with pytest.raises(BudgetNotMet, match="no candidate meets the accuracy budget 0"):
        prune_with_budget(_graded(), 0.5, "channel", PRUNE_EVAL, 0.0, "max-rel-error")
    model_path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_graded(), model_path)
    np.savez(tmp_path / "eval.npz", x=np.stack([f["x"] for f in PRUNE_EVAL]))
    args = ["compile", str(model_path), "-o", str(out), "-O0", "--prune", "0.5", "--eval",
            str(tmp_path / "eval.npz"), "--accuracy-budget", "0", "--metric", "max-rel-error"]
    assert main(args) == 1 and not out.exists()
    assert "no candidate meets the accuracy budget" in capsys.readouterr().err
    assert main(args + ["--best-effort"]) == 0 and out.exists()
    assert "best effort: 'channel 0." in capsys.readouterr().out
    # the most accurate candidate drops only tiny channels
    assert _max_rel_error(_graded(), onnx.load(out), PRUNE_HELD) <= PRUNE_BUDGET


def test_prune_budget_two_four_keeps_sensitive_layers_dense():
    """2:4 has no ratio to lower: the search leaves the most sensitive layers dense instead."""
    from graphopt.lossy.budget import prune_with_budget
    model = _graded()
    chosen, report, table = prune_with_budget(model, 0.5, "2:4", PRUNE_EVAL, 1.0, "max-rel-error")
    names = [line.split("  ")[0].strip() for line in table.splitlines()[2:-1]]
    assert names == ["2:4", "2:4, 1 layer(s) kept"]  # c1 has 3 inputs (not a multiple of 4): c2 and y only
    onnx.checker.check_model(chosen, full_check=True)
    assert report.pruned and all("zeros" in v for v in report.pruned.values())
