"""Bias correction (passes/quantize/bias_correction.py): the mean output shift of int8 weights,
folded into the bias. Expected outputs come from ONNX Runtime on the float model."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from graphopt import lossy
from graphopt.cli import main
from graphopt.passes.quantize.bias_correction import correct_biases
from graphopt.verify import ort_session as _ort

# MobileNet's weak spot: a depthwise 3x3 (9 weights per channel, each rounded on its channel's grid)
# after a ReLU (inputs with a large mean), then a pointwise Conv
DWPW = """<ir_version: 8, opset_import: ["": 17]>
dwpw (float[N,16,12,12] x) => (float[N,16,12,12] y) {
  r = Relu(x)
  d = Conv<group=16, pads=[1,1,1,1]>(r, wd, bd)
  y = Conv(d, wp)
}"""


def dwpw():
    model = onnx.parser.parse_model(DWPW)
    rng = np.random.default_rng(0)
    wd = rng.normal(0, 0.05, (16, 1, 3, 3))
    wd[:, 0, 1, 1] = rng.uniform(0.5, 1.0, 16)  # one large tap per channel sets a coarse grid
    values = {"wd": wd, "bd": rng.normal(0, 0.1, 16), "wp": rng.normal(0, 0.3, (16, 16, 1, 1))}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(seed, count):
    rng = np.random.default_rng(seed)
    return [{"x": (3.0 + rng.normal(0, 1, (2, 16, 12, 12))).astype(np.float32)} for _ in range(count)]


def test_corrected_float_bias_equals_the_analytic_shift():
    model, feeds = dwpw(), _feeds(1, 4)
    for t in model.graph.initializer:  # the original bias, before correction
        if t.name == "bd":
            bd = numpy_helper.to_array(t)
    fixed, count = correct_biases(model, feeds, weight_bits=7)
    onnx.checker.check_model(fixed, full_check=True)
    assert count == 2  # the depthwise Conv's bias moved; the pointwise Conv got one
    inits = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    dw = next(n for n in fixed.graph.node if n.output[0] == "d")
    # numpy: 7-bit symmetric per-channel weights, shift = (sum of the 9 tap errors) * mean of relu(x)
    wd = inits["wd"]
    scale = np.abs(wd).reshape(16, -1).max(axis=1) / 63
    wq = np.clip(np.rint(wd / scale[:, None, None, None]), -64, 63) * scale[:, None, None, None]
    mean_r = np.mean([np.maximum(f["x"], 0).mean(axis=(0, 2, 3)) for f in feeds], axis=0)
    want = bd - (wq - wd).reshape(16, -1).sum(axis=1) * mean_r
    np.testing.assert_allclose(inits[dw.input[2]], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("acts", ["uint8", "int8"])
def test_bias_correction_lowers_the_error_of_a_depthwise_pointwise_net(acts):
    model, calib, evals = dwpw(), _feeds(1, 6), _feeds(2, 4)
    errors = {}
    for corrected in (False, True):
        q, report = lossy.int8_static(model, calib, activations=acts, weight_bits=7, keep_final=False,
                                      bias_correction=corrected)
        onnx.checker.check_model(q, full_check=True)
        errs = []
        for feed in evals:
            want = _ort(model).run(None, feed)[0]
            got = _ort(q, optimize=True).run(None, feed)[0]
            errs.append(float(np.mean((got - want) ** 2)))
        errors[corrected] = np.mean(errs)
    assert "bias correction: 2 layer" in report.format_choice
    assert errors[True] < 0.7 * errors[False], errors  # measured 0.48x (mean squared error)


def test_bias_correction_needs_static_and_rereadable_data(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(dwpw(), src)
    assert main(["compile", str(src), "-o", str(tmp_path / "o.onnx"), "--int8", "dynamic", "--bias-correction"]) == 2
    assert "--bias-correction needs --int8 static" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
    from graphopt.errors import UsageError
    with pytest.raises(UsageError, match="reads the calibration data twice"):
        lossy.int8_static(dwpw(), (f for f in _feeds(1, 2)), bias_correction=True)
