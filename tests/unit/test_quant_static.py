"""int8 static QDQ: structure, ORT and graphopt agreement, accuracy vs the float model (ORT),
calibration methods and the streaming histogram.

Measured on these seeded models (minmax): cosine error vs float ~3e-5, max relative error ~1e-2;
the bounds below leave ~5x headroom. Expected values come from ORT on the float model.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import lossy
from graphopt.verify import ort_session as _ort
from graphopt.lossy.calibrate import BINS, TensorStats, calibrate
from graphopt.passes.quantize import plan_static

import quant_models as qm
from quant_models import cosine_err as _cosine_err


@pytest.fixture(scope="module")
def cnn_int8():
    model = qm.cnn()
    q, report = lossy.int8_static(model, qm.feeds("x", (4, 3, 8, 8), 8, seed=1), activations="int8")
    return model, q, report


def test_structure_weights_int8_and_float_ops_kept(cnn_int8):
    model, q, report = cnn_int8
    onnx.checker.check_model(q, full_check=True)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("Conv") == 3 and "Relu" not in ops  # Relus after quantized Convs become the Q's clamp
    assert "Softmax" in ops and ops.count("Gemm") == 1
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] == "w4"  # the classifier stays float
    inits = {t.name: t for t in q.graph.initializer}
    dq_w = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    dtypes = sorted(onnx.helper.tensor_dtype_to_np_dtype(inits[n.input[0]].data_type).name for n in dq_w)
    assert dtypes == ["int32"] * 3 + ["int8"] * 3  # 3 weights per-channel int8, 3 biases int32
    assert all(onnx.numpy_helper.to_array(inits[n.input[1]]).shape == (onnx.numpy_helper.to_array(
        inits[n.input[0]]).shape[0],) for n in dq_w)  # one scale per output channel
    assert report.kept_float == {"Gemm:h": "final layer (classifier) kept float"}
    assert all(db > 35 for db in report.weight_sqnr.values())
    assert set(report.activation_sqnr) >= {"x", "r1", "r3"} and all(db > 25 for db in report.activation_sqnr.values())


def test_ort_and_graphopt_agree_bit_exact_on_quantized_tensors(cnn_int8):
    _, q, _ = cnn_int8
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=7)[0]
    qouts = [n.output[0] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in qouts)
    names = [o.name for o in probe.graph.output]
    want = _ort(probe).run(names, feed)
    got = graphopt.Session(probe).run(names, feed)
    for name, w, g in zip(names, want, got):
        if name in qouts:
            assert w.dtype == np.int8 and np.array_equal(w, g), name
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_accuracy_vs_float_model_on_held_out_data(cnn_int8):
    model, q, _ = cnn_int8
    ref, fused = _ort(model), _ort(q, optimize=True)  # ORT fuses the QDQ islands into integer kernels
    for feed in qm.feeds("x", (4, 3, 8, 8), 4, seed=2):
        want, got = ref.run(None, feed)[0], fused.run(None, feed)[0]
        assert _cosine_err(want, got) < 2e-4
        assert np.abs(want - got).max() / np.abs(want).max() < 0.05
        assert (want.argmax(1) == got.argmax(1)).mean() >= 0.75


def test_transformer_style_mlp_layernorm_stays_float():
    model = qm.mlp()
    q, report = lossy.int8_static(model, qm.feeds("x", (8, 16), 8, seed=1), activations="int8")
    onnx.checker.check_model(q, full_check=True)
    assert "LayerNormalization" in [n.op_type for n in q.graph.node]
    assert set(report.quantized) >= {"MatMul:m1", "MatMul:m2"} and "MatMul:m3" in report.kept_float
    feed = qm.feeds("x", (8, 16), 1, seed=5)[0]
    want = _ort(model).run(None, feed)[0]
    got_ort, got_go = _ort(q, optimize=True).run(None, feed)[0], graphopt.Session(q).run(None, feed)[0]
    assert _cosine_err(want, got_ort) < 1e-3
    np.testing.assert_allclose(got_go, _ort(q).run(None, feed)[0], rtol=1e-4, atol=1e-5)


def test_exclude_by_op_type_and_by_node_name():
    model = qm.cnn()
    data = qm.feeds("x", (2, 3, 8, 8), 2, seed=1)
    _, rep = lossy.int8_static(model, data, exclude=["Conv"], activations="int8")
    assert not any(n.startswith("Conv") for n in rep.quantized)
    _, rep = lossy.int8_static(model, data, exclude=["Conv:c2"], activations="int8")
    assert "Conv:c2" in rep.kept_float and "Conv:c1" in rep.quantized
    with pytest.raises(graphopt.UsageError, match="'Cnov'"):
        lossy.int8_static(model, data, exclude=["Cnov"])


def test_calibration_methods_order_ranges():
    model = qm.cnn()
    data = qm.feeds("x", (4, 3, 8, 8), 8, seed=1)
    tensors = plan_static(model).tensors
    mm = calibrate(model, tensors, data, "minmax")
    pc = calibrate(model, tensors, data, "percentile", percentile=99.0)
    en = calibrate(model, tensors, data, "entropy")
    # minmax is the true extreme (checked against ORT's own outputs for the input tensor)
    xs = np.concatenate([d["x"].ravel() for d in data])
    assert mm["x"] == (float(xs.min()), float(xs.max()))
    for t in tensors:
        assert mm[t][0] <= pc[t][0] <= pc[t][1] <= mm[t][1]
        assert mm[t][0] <= en[t][0] <= en[t][1] <= mm[t][1]
    # 99% keeps ~99% of the input values (histogram bin edges, so within a bin or two)
    inside = np.mean((xs >= pc["x"][0]) & (xs <= pc["x"][1]))
    assert 0.985 <= inside <= 0.995


def test_streaming_histogram_rebins_exactly():
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, 1000).astype(np.float32) for s in (0.1, 1.0, 30.0)]  # the range grows twice
    st = TensorStats(with_hist=True)
    for b in batches:
        st.update(b)
    everything = np.concatenate(batches)
    want, _ = np.histogram(everything, bins=BINS, range=(-st.radius, st.radius))
    assert st.radius >= np.abs(everything).max() and st.hist.sum() == everything.size
    # re-binning merges whole bins, so only values within float rounding of an edge may move one bin
    assert np.abs(st.hist - want).sum() <= 4


def test_calibration_from_a_generator_streams_once():
    model = qm.cnn()
    seen = []

    def feeds():
        for feed in qm.feeds("x", (2, 3, 8, 8), 3, seed=1):
            seen.append(1)
            yield feed
    q, report = lossy.int8_static(model, feeds(), activations="int8")
    assert len(seen) == 3 and report.quantized and not report.activation_sqnr
    onnx.checker.check_model(q, full_check=True)


def test_qoperator_format_matches_qdq(cnn_int8):
    model, qdq, _ = cnn_int8
    qop, _ = lossy.int8_static(model, qm.feeds("x", (4, 3, 8, 8), 8, seed=1), fmt="qoperator", activations="int8")
    onnx.checker.check_model(qop, full_check=True)
    ops = [n.op_type for n in qop.graph.node]
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=7)[0]
    want = _ort(qdq).run(None, feed)[0]  # the QDQ form, run op by op by ORT
    np.testing.assert_allclose(_ort(qop).run(None, feed)[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(graphopt.Session(qop).run(None, feed)[0], want, rtol=1e-5, atol=1e-6)


def test_uint8_activations_u8s8():
    model = qm.cnn()
    q, report = lossy.int8_static(model, qm.feeds("x", (4, 3, 8, 8), 8, seed=1), activations="uint8")
    onnx.checker.check_model(q, full_check=True)
    assert "U8S8" in report.mode
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=7)[0]
    qouts = [n.output[0] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in qouts)
    want, got = _ort(probe).run(qouts, feed), graphopt.Session(probe).run(qouts, feed)
    assert all(w.dtype == np.uint8 and np.array_equal(w, g) for w, g in zip(want, got))
    ref, fused = _ort(model).run(None, feed)[0], _ort(q, optimize=True).run(None, feed)[0]
    assert _cosine_err(ref, fused) < 2e-4


def test_constant_operands_quantized_only_with_uint8_activations():
    model = qm.mlp()
    data = qm.feeds("x", (8, 16), 4, seed=1)
    _, s8 = lossy.int8_static(model, data, activations="int8")
    q, u8 = lossy.int8_static(model, data, activations="uint8")
    assert "Add:a1" in s8.kept_float and "Add:a1" in u8.quantized
    add = next(n for n in q.graph.node if n.output[0] == "a1")
    dq = next(n for n in q.graph.node if n.output[0] == add.input[1])
    bias = next(t for t in q.graph.initializer if t.name == dq.input[0])
    assert dq.op_type == "DequantizeLinear" and bias.data_type == onnx.TensorProto.UINT8
    feed = qm.feeds("x", (8, 16), 1, seed=5)[0]
    np.testing.assert_allclose(graphopt.Session(q).run(None, feed)[0], _ort(q).run(None, feed)[0],
                               rtol=1e-4, atol=1e-5)
    assert _cosine_err(_ort(model).run(None, feed)[0], _ort(q, optimize=True).run(None, feed)[0]) < 1e-3


def _weight_dq_dtype(q: onnx.ModelProto, node_output: str):
    """Element type of the initializer behind the weight of the node writing `node_output` (through
    its DequantizeLinear), or None when the weight is a plain float initializer."""
    node = next(n for n in q.graph.node if n.output[0] == node_output)
    inits = {t.name: t for t in q.graph.initializer}
    if node.input[1] in inits:
        return None
    dq = next(n for n in q.graph.node if n.output[0] == node.input[1])
    assert dq.op_type == "DequantizeLinear"
    return inits[dq.input[0]].data_type


def test_detector_head_conv_before_conv_transpose_is_quantized():
    # the head of a detector is its ConvTranspose (no quantizer here quantizes it); the Conv feeding
    # it is a feature layer and gets int8 per-channel weights like the others
    model = qm.det()
    q, report = lossy.int8_static(model, qm.feeds("x", (4, 3, 8, 8), 8, seed=1), activations="int8")
    onnx.checker.check_model(q, full_check=True)
    assert _weight_dq_dtype(q, "c2") == onnx.TensorProto.INT8 and _weight_dq_dtype(q, "c1") == onnx.TensorProto.INT8
    assert _weight_dq_dtype(q, "t1") is None and _weight_dq_dtype(q, "t2") is None
    assert not any(k.startswith("Conv") for k in report.kept_float)
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=7)[0]
    want = _ort(model).run(None, feed)[0]
    got = _ort(q, optimize=True).run(None, feed)[0]
    assert _cosine_err(want, got) < 1e-3 and np.abs(want - got).max() < 0.05


def test_float_layers_get_no_q_on_their_output(tmp_path):
    # A Conv/ConvTranspose/Gemm left float must not sit between a DQ and a Q (Relu/Clip between
    # allowed): ORT would quantize its weight per tensor itself (WeightBiasQuantization).
    model = qm.cnn()
    data = qm.feeds("x", (4, 3, 8, 8), 8, seed=1)
    q, report = lossy.int8_static(model, data, exclude=["Conv:c3"], activations="uint8")
    assert "Conv:c3" in report.kept_float and _weight_dq_dtype(q, "c3") is None
    readers = {i for n in q.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    assert not readers & {"c3", "r3"}
    # what ORT runs: c1 and c2 as QLinearConv (U8S8 fuses on every CPU), c3 in float
    ops = [n.op_type for n in qm.ort_optimized_ops(q, tmp_path / "opt.onnx")]
    assert ops.count("QLinearConv") == 2 and ops.count("Conv") + ops.count("FusedConv") == 1
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=7)[0]
    assert _cosine_err(_ort(model).run(None, feed)[0], _ort(q, optimize=True).run(None, feed)[0]) < 2e-4
    # same on the detector: the ConvTranspose pair stays float, the Relu between them unquantized
    q, _ = lossy.int8_static(qm.det(), data, activations="uint8")
    readers = {i for n in q.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    assert readers == {"x", "c1", "c2"}  # the Relus after c1, c2 fold into their Qs; nothing after t1
    ops = [n.op_type for n in qm.ort_optimized_ops(q, tmp_path / "det.onnx")]
    assert ops.count("QLinearConv") == 2 and ops.count("ConvTranspose") == 2


def test_detector_ort_and_graphopt_agree_bit_exact():
    q, _ = lossy.int8_static(qm.det(), qm.feeds("x", (4, 3, 8, 8), 8, seed=1), activations="int8")
    feed = qm.feeds("x", (2, 3, 8, 8), 1, seed=7)[0]
    qouts = [n.output[0] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in qouts)
    want, got = _ort(probe).run(qouts, feed), graphopt.Session(probe).run(qouts, feed)
    assert qouts and all(w.dtype == np.int8 and np.array_equal(w, g) for w, g in zip(want, got))
    np.testing.assert_allclose(graphopt.Session(q).run(None, feed)[0], _ort(q).run(None, feed)[0],
                               rtol=1e-5, atol=1e-6)


def _weight_ints(q: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: t for t in q.graph.initializer}
    return [onnx.numpy_helper.to_array(inits[n.input[0]]) for n in q.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]


def test_uint8_activations_get_7bit_weights():
    model = qm.cnn()
    data = qm.feeds("x", (4, 3, 8, 8), 8, seed=1)
    u8, _ = lossy.int8_static(model, data, activations="uint8")
    s8, _ = lossy.int8_static(model, data, activations="int8")
    assert max(int(w.max()) for w in _weight_ints(u8)) == 63 and min(int(w.min()) for w in _weight_ints(u8)) >= -64
    assert max(int(np.abs(w).max()) for w in _weight_ints(s8)) == 127


def test_uint8_model_with_saturating_products_stays_accurate():
    # u8 inputs near 255 times s8 weights near 127: x86 U8S8 kernels without VNNI sum pairs of such
    # products in int16 with saturation (8-bit weights: 39% error on such a machine); 7-bit weights
    # keep every pair sum below 32767
    rng = np.random.default_rng(3)
    w = rng.uniform(0.5, 1.0, (8, 16, 1, 1)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["c"]), onnx.helper.make_node("Relu", ["c"], ["y"])], "sat",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16, 16, 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 16, 16])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    feeds = [{"x": rng.uniform(0.9, 1.0, (1, 16, 16, 16)).astype(np.float32)} for _ in range(4)]
    q, report = lossy.int8_static(model, feeds[:2], activations="uint8", keep_final=False)
    assert "Conv:c" in report.quantized
    for feed in feeds[2:]:
        want, got = _ort(model).run(None, feed)[0], _ort(q, optimize=True).run(None, feed)[0]
        assert np.abs(got - want).max() / np.abs(want).max() < 0.02
