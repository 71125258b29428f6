"""Calibration shards and the accuracy-budget search on executors give exactly the single-process result:
the same statistics and ranges, the same quantized model bytes, the same candidate errors and choice."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import quant_models as qm
from graphopt import lossy
from graphopt.distributed import InProcessExecutor, PoolExecutor
from graphopt.lossy import budget
from graphopt.lossy.calib_shards import calibrate_sharded
from graphopt.lossy.calibrate import CalibrationError, TensorStats, calibrate
from graphopt.passes.quantize import plan_static

CALIB = qm.feeds("x", (2, 3, 8, 8), 7, seed=1)
EVAL = qm.feeds("x", (2, 3, 8, 8), 6, seed=2)


@pytest.fixture(scope="module")
def pool():
    with PoolExecutor(2) as p:
        yield p


def _stats(batches) -> TensorStats:
    s = TensorStats(True)
    for b in batches:
        s.update(b)
    return s


def test_merged_shards_equal_one_stream_whatever_the_order():
    rng = np.random.default_rng(0)
    # values exactly on powers of two: the old binning put +R in the last bin at radius R and one bin
    # higher once R doubled, so the histogram depended on which batch came first
    batches = [np.float32([0.25, 1.0, -0.5]), rng.standard_normal(500).astype(np.float32),
               np.float32([2.0, -2.0, 4.0]), (rng.standard_normal(300) * 10).astype(np.float32)]
    whole = _stats(batches)
    top = float(np.abs(np.concatenate(batches)).max())
    assert top < whole.radius <= 2 * top  # the smallest power of two above every |x|
    for order in ([3, 2, 1, 0], [2, 0, 3, 1]):
        assert np.array_equal(_stats([batches[i] for i in order]).hist, whole.hist)
    merged = _stats(batches[:1])
    for part in ([batches[1]], [], [batches[3], batches[2]]):  # an empty shard merges as nothing
        merged.merge(_stats(part))
    assert np.array_equal(merged.hist, whole.hist) and merged.radius == whole.radius
    assert (merged.lo, merged.hi, merged.count) == (whole.lo, whole.hi, whole.count)
    for method in ("percentile", "entropy"):
        assert merged.range(method, 99.9) == whole.range(method, 99.9)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_sharded_calibration_equals_single_process(method, pool):
    model = qm.cnn()
    tensors = plan_static(model).tensors
    want = calibrate(model, tensors, CALIB, method)
    assert calibrate_sharded(model, tensors, CALIB, method, 99.99, InProcessExecutor(), shards=3) == want
    assert calibrate_sharded(model, tensors, CALIB, method, 99.99, pool) == want


def test_sharded_calibration_from_a_folder_and_a_stacked_npz(tmp_path, pool):
    model = qm.cnn()
    tensors = plan_static(model).tensors
    for i, f in enumerate(CALIB):
        np.savez(tmp_path / f"{i:02d}.npz", **f)
    np.savez(tmp_path.parent / "stacked.npz", x=np.stack([f["x"] for f in CALIB]))
    want = calibrate(model, tensors, CALIB, "entropy")
    assert calibrate_sharded(model, tensors, str(tmp_path), "entropy", 99.99, pool, shards=3) == want
    assert calibrate_sharded(model, tensors, str(tmp_path.parent / "stacked.npz"), "entropy", 99.99, pool) == want


def test_a_bad_feed_in_a_shard_names_the_shard_and_the_file(tmp_path, pool):
    model = qm.cnn()
    for i, f in enumerate(CALIB[:4]):
        np.savez(tmp_path / f"{i:02d}.npz", **f)
    np.savez(tmp_path / "03.npz", x=np.zeros((2, 3, 8, 8), np.float64))
    with pytest.raises(CalibrationError, match=r"shard '.* files 2..3' failed: .*03.npz: input 'x' has dtype float64"):
        calibrate_sharded(model, plan_static(model).tensors, str(tmp_path), "minmax", 99.99, pool)


def test_int8_static_on_workers_writes_the_same_model(pool):
    model = qm.cnn()
    one, _ = lossy.int8_static(model, CALIB, "entropy")
    many, _ = lossy.int8_static(model, CALIB, "entropy", executor=pool)
    assert many.SerializeToString() == one.SerializeToString()


def test_budget_search_on_workers_chooses_the_same_candidate(pool, monkeypatch):
    # latency is measured in this process on both paths; made a function of the model so that the
    # choice (fastest inside the budget) compares what the workers computed, not timing noise
    monkeypatch.setattr(budget, "latency_ms", lambda m, feed, runs=10: m.ByteSize() / 1e4)
    model = qm.cnn()
    full, _ = lossy.int8_static(model, CALIB)
    errs = budget.error(full, EVAL, budget.reference_outputs(model, EVAL), budget.metric_fn("max-rel-error"))
    args = (model, "static", EVAL, 0.9 * errs, "max-rel-error", True)  # all-int8 misses: a fallback is chosen
    one, one_report = lossy.with_budget(*args, calib=CALIB)
    many, many_report = lossy.with_budget(*args, calib=CALIB, executor=pool)
    assert many_report.table == one_report.table  # every candidate's error, digit for digit, and the choice
    assert "chosen: 'int8, all layers'" not in one_report.table
    assert many.SerializeToString() == one.SerializeToString()
    onnx.checker.check_model(many)


def test_compile_int8_static_with_workers_writes_the_same_file(tmp_path, capsys):
    from graphopt.cli.main import main
    onnx.save(qm.cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.stack([f["x"] for f in CALIB]))
    base = ["compile", str(tmp_path / "m.onnx"), "--int8", "static", "--calib", str(tmp_path / "calib.npz"),
            "--calib-method", "percentile", "-q"]
    assert main(base + ["-o", str(tmp_path / "one.onnx")]) == 0
    assert main(base + ["-o", str(tmp_path / "two.onnx"), "--workers", "2"]) == 0
    assert (tmp_path / "one.onnx").read_bytes() == (tmp_path / "two.onnx").read_bytes()
    capsys.readouterr()
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.onnx"), "--workers", "2"]) == 2
    assert "--workers/--ray spread int8 static calibration" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_prune_search_on_workers_gives_the_same_candidates(pool):
    from graphopt.lossy.parallel_eval import evaluator
    model = qm.cnn()
    refs = budget.reference_outputs(model, EVAL)
    cosine = budget.metric_fn("cosine")
    one, _ = budget.prune_search(model, 0.5, "channel", EVAL, refs, cosine)
    many, _ = budget.prune_search(model, 0.5, "channel", EVAL, refs, cosine, evaluate=evaluator(pool, "cosine"))
    assert len(one) > 2 and [(c.name, c.error) for c in many] == [(c.name, c.error) for c in one]
