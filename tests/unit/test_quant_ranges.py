"""Calibration method "mse" (graphopt/lossy/calibrate_mse.py): the range of least expected quantization
error per tensor. Expected outputs come from ONNX Runtime on the float model."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt import lossy
from graphopt.lossy.calibrate import TensorStats
from graphopt.lossy.calibrate_mse import mse_range
from graphopt.verify import ort_session as _ort

import quant_models as qm


def _fake_quant_mse(x, lo, hi):
    step = (hi - lo) / 255
    q = np.clip(np.rint((x - lo) / step), 0, 255) * step + lo
    return float(np.mean((x - q) ** 2))


def test_mse_range_beats_minmax_on_heavy_tails_and_keeps_a_uniform_range():
    rng = np.random.default_rng(0)
    heavy = rng.laplace(0, 1, 200_000).astype(np.float32)
    stats = TensorStats(True)
    stats.update(heavy)
    lo, hi = stats.range("mse", 0)
    assert stats.lo < lo < 0 < hi < stats.hi  # both tails clipped
    # measured: 6.2e-4 vs 8.3e-4 (0.75x)
    assert _fake_quant_mse(heavy, lo, hi) < 0.85 * _fake_quant_mse(heavy, stats.lo, stats.hi)
    flat = rng.uniform(-1, 3, 200_000).astype(np.float32)  # nothing to gain from clipping a uniform range
    stats = TensorStats(True)
    stats.update(flat)
    lo, hi = stats.range("mse", 0)
    assert abs(lo - stats.lo) < 0.05 and abs(hi - stats.hi) < 0.1


def test_mse_range_of_non_negative_values_starts_at_zero():
    hist = np.zeros(2048, np.int64)
    hist[1024:1100] = 1000  # values in [0, 76/1024 * R)
    hist[2000] = 1         # one far outlier
    lo, hi = mse_range(hist, 1.0, 0.0, 0.96)
    assert lo == 0.0 and 0 < hi < 0.96


def test_mse_calibration_improves_a_model_with_heavy_tailed_activations():
    # a Conv net fed heavy-tailed inputs (Laplace): min/max spends the input's 256 levels on rare
    # extremes; the mse range rounds the bulk of the values on a finer grid
    model = qm.cnn()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.laplace(0, 1, (4, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    evals = [{"x": rng.laplace(0, 1, (4, 3, 8, 8)).astype(np.float32)} for _ in range(6)]
    errors = {}
    for method in ("minmax", "mse"):
        q, _ = lossy.int8_static(model, calib, method=method, activations="uint8", weight_bits=8, keep_final=False)
        errs = []
        for feed in evals:
            want = _ort(model).run(None, feed)[0]
            errs.append(np.abs(_ort(q, optimize=True).run(None, feed)[0] - want).mean())
        errors[method] = float(np.mean(errs))
    assert errors["mse"] < 0.93 * errors["minmax"], errors  # measured 0.85x


def test_unknown_method_is_a_usage_error():
    from graphopt.errors import UsageError
    with pytest.raises(UsageError, match="unknown calibration method 'mse2'"):
        lossy.int8_static(qm.cnn(), qm.feeds("x", (2, 3, 8, 8), 2, seed=1), method="mse2")
