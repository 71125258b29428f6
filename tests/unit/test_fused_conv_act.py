"""FusedConv's in-place activations (kernels/cpu/conv_activation.py _activate): Conv + activation
compiled to ai.graphopt FusedConv, run by graphopt.Session, against ONNX Runtime on the model as
written, with NaN and infinities in the input (clip and max must propagate/saturate as ORT does)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphopt


def model(act_lines, opset, hw, extra_inits=()):
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1,3,{hw},{hw}] x) => (float[1,8,{hw - 2},{hw - 2}] y) {{
  c = Conv(x, W, B)
  {act_lines}
}}"""
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend([w, b, *[numpy_helper.from_array(np.array(v, np.float32), n)
                                        for n, v in extra_inits]])
    onnx.checker.check_model(m)
    return m


ACTIVATIONS = [
    ("y = Relu(c)", 13, ()),
    ("y = Clip(c, lo, hi)", 13, (("lo", 0.0), ("hi", 6.0))),
    ("y = Clip(c, , hi)", 13, (("hi", 0.5),)),
    ("y = Clip<min=-0.5, max=0.5>(c)", 9, ()),
    ("y = LeakyRelu<alpha=0.2>(c)", 13, ()),
    ("y = LeakyRelu<alpha=1.5>(c)", 13, ()),  # alpha > 1: not max(y, alpha*y)
    ("y = HardSigmoid<alpha=0.3, beta=0.4>(c)", 13, ()),
    ("y = HardSwish(c)", 14, ()),
    ("h = HardSigmoid<alpha=0.16666667, beta=0.5>(c)\n  y = Mul(h, c)", 13, ()),
    ("y = Sigmoid(c)", 13, ()),
    ("y = Tanh(c)", 13, ()),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the inf and NaN inputs are deliberate
@pytest.mark.parametrize("hw", [34, 10])  # 8x32x32 and 8x8x8 outputs (different conv paths)
@pytest.mark.parametrize("lines,opset,inits", ACTIVATIONS)
def test_fused_conv_activation_matches_ort(lines, opset, inits, hw):
    m = model(lines, opset, hw, inits)
    compiled = graphopt.compile(m, level=2, target="graphopt")
    assert [n.op_type for n in compiled.graph.node] == ["FusedConv"], [n.op_type for n in compiled.graph.node]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess = graphopt.Session(compiled)
    rng = np.random.default_rng(0)
    for _ in range(2):  # twice: the in-place writes must not leak into the next run
        x = (rng.standard_normal((1, 3, hw, hw)) * 3).astype(np.float32)
        x[0, 0, 0, :4] = [np.nan, np.inf, -np.inf, 0.0]  # NaN propagates, infinities saturate, as in ORT
        want = ref.run(None, {"x": x})[0]
        got = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
