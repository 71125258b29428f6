"""int8 dynamic: integer paths bit-exact between ORT and graphopt, accuracy vs the float model (ORT).

Measured on these seeded models: cosine error vs float ~1e-5 (MLP) and ~3e-5 (CNN); bounds leave
headroom. Expected values come from ORT on the float model.
"""
from __future__ import annotations

import numpy as np
import onnx

import graphopt
from graphopt import lossy
from graphopt.verify import ort_session as _ort

import quant_models as qm
from quant_models import cosine_err as _cosine_err


def _integer_outputs_agree(q, feed):
    """Every integer tensor (DynamicQuantizeLinear, MatMulInteger, ConvInteger outputs) equal bit for bit."""
    ints = [o for n in q.graph.node if n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
            for o in n.output]
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in ints)
    want = _ort(probe).run(ints, feed)
    got = graphopt.Session(probe).run(ints, feed)
    for name, w, g in zip(ints, want, got):
        assert w.dtype == g.dtype, name
        if w.dtype == np.float32:  # x_scale: the runtime computes (max-min)/255 in float64, ORT in float32
            np.testing.assert_allclose(g, w, rtol=3e-7, err_msg=name)
        else:
            assert np.array_equal(w, g), name
    return len(ints)


def test_mlp_dynamic():
    model = qm.mlp()
    q, report = lossy.int8_dynamic(model)
    onnx.checker.check_model(q, full_check=True)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops and "LayerNormalization" in ops
    assert set(report.weight_sqnr) == {"MatMul:m1", "MatMul:m2", "MatMul:m3"}
    for feed in qm.feeds("x", (8, 16), 3, seed=3):
        assert _integer_outputs_agree(q, feed) == 3 * 4
        want = _ort(model).run(None, feed)[0]
        got = _ort(q, optimize=True).run(None, feed)[0]
        assert _cosine_err(want, got) < 2e-4
        np.testing.assert_allclose(graphopt.Session(q).run(None, feed)[0], got, rtol=1e-4, atol=1e-4)


def test_cnn_dynamic_conv_and_gemm():
    model = qm.cnn()
    q, report = lossy.int8_dynamic(model, exclude=["Gemm"])
    onnx.checker.check_model(q, full_check=True)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("ConvInteger") == 3 and ops.count("Gemm") == 1 and report.kept_float == {
        "Gemm:h": "excluded by --int8-exclude"}
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=4)[0]
    _integer_outputs_agree(q, feed)
    want = _ort(model).run(None, feed)[0]
    assert _cosine_err(want, _ort(q, optimize=True).run(None, feed)[0]) < 2e-4


def test_gemm_alpha_beta_transb_folded():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[4,6] x) => (float[4,5] y) { y = Gemm<alpha=0.5, beta=2.0, transB=1>(x, w, c) }""")
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(rng.normal(size=(5, 6)).astype(np.float32), "w"),
                                    onnx.numpy_helper.from_array(rng.normal(size=(5,)).astype(np.float32), "c")])
    q, _ = lossy.int8_dynamic(model)
    feed = {"x": rng.normal(size=(4, 6)).astype(np.float32)}
    want = _ort(model).run(None, feed)[0]
    got = _ort(q).run(None, feed)[0]
    assert np.abs(want - got).max() < 0.03 * np.abs(want).max()
