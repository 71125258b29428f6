"""fp16: float16 weights/compute, float32 boundary by default, blocked ops stay float32; outputs
within a measured tolerance of ORT on the float model (measured max abs error ~1e-4 on the CNN,
~1e-3 on the MLP whose outputs reach ~3.5; bounds below give ~5x headroom)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt.passes.precision import convert_fp16

import quant_models as qm


def _run(model, feed):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _initializer_types(model):
    return {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer}


def test_cnn_fp16_keeps_float32_io():
    model = qm.cnn()
    half, report = convert_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _initializer_types(half) == {"float16"} and report.casts == 2
    assert report.size_after < 0.6 * report.size_before
    for feed in qm.feeds("x", (2, 3, 8, 8), 3, seed=5):
        want = _run(model, feed)
        got = _run(half, feed)
        assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-3
        np.testing.assert_allclose(graphopt.Session(half).run(None, feed)[0], got, atol=1e-3)


def test_blocked_ops_stay_float32_and_block_list_is_configurable():
    model = qm.mlp()
    half, report = convert_fp16(model)
    ln = next(n for n in half.graph.node if n.op_type == "LayerNormalization")
    inits = {t.name: t.data_type for t in half.graph.initializer}
    assert all(inits[i] == onnx.TensorProto.FLOAT for i in ln.input[1:])  # its scale/bias stay float32
    assert report.blocked == {"LayerNormalization": 1}
    feed = qm.feeds("x", (8, 16), 1, seed=6)[0]
    want = _run(model, feed)
    assert np.abs(_run(half, feed) - want).max() < 5e-3 * np.abs(want).max()
    _, report = convert_fp16(model, block={"MatMul"})
    assert report.blocked == {"MatMul": 3}


def test_float16_io_when_asked():
    model = qm.cnn()
    half, report = convert_fp16(model, keep_io_float32=False)
    onnx.checker.check_model(half, full_check=True)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert report.casts == 0
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=5)[0]
    got = _run(half, {"x": feed["x"].astype(np.float16)})
    assert got.dtype == np.float16 and np.abs(got - _run(model, feed)).max() < 1e-3
