"""ONNX Runtime's com.microsoft fused ops run by graphopt.Session (kernels/cpu/gelu.py, layernorm.py, conv_activation.py, linalg.py, resize.py), against ORT
itself on the same model, the attribute defaults included (the contrib schemas are not in onnx)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import golden
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

MS = "com.microsoft"
RNG = np.random.default_rng(5)


def model(node, feeds: dict, consts: dict, n_out=1):
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o][:n_out]
    graph = helper.make_graph([node], "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def check(node, feeds, consts=None, n_out=1, rtol=1e-5, atol=1e-6):
    m = model(node, feeds, consts or {}, n_out)
    want = ort_session(m).run(None, feeds)
    sess = Session(m)
    for _ in range(2):  # the second run takes the prepared/specialized path
        got = sess.run(None, feeds)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def data(*shape, scale=2.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("op,extra", [("Gelu", {}), ("QuickGelu", {}), ("QuickGelu", {"alpha": 1.0}),
                                      ("FastGelu", {})])
def test_gelus(op, extra):
    check(helper.make_node(op, ["x"], ["y"], domain=MS, **extra), {"x": data(3, 5, 16)})


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])
def test_gelus_with_bias(op):
    check(helper.make_node(op, ["x", "b"], ["y"], domain=MS), {"x": data(3, 5, 16)}, {"b": data(16)})


@pytest.mark.parametrize("beta,bias,sum_out,eps", [(False, False, False, None), (True, False, False, 1e-5),
                                                   (True, True, True, None), (False, True, True, 1e-6)])
def test_skip_layer_norm(beta, bias, sum_out, eps):
    """epsilon left out takes ORT's default (1e-12): rows of tiny spread tell it from 1e-5."""
    x = data(2, 5, 8, scale=1e-3)
    ins = ["x", "r", "g", "beta" if beta else "", "bias" if bias else ""]
    while ins[-1] == "":
        ins.pop()
    consts = {"g": data(8), "beta": data(8), "bias": data(8, scale=1e-3)}
    consts = {k: v for k, v in consts.items() if k in ins}
    outs = ["y", "", "", "s"] if sum_out else ["y"]
    node = helper.make_node("SkipLayerNormalization", ins, outs, domain=MS,
                            **({} if eps is None else {"epsilon": eps}))
    check(node, {"x": x, "r": data(2, 5, 8, scale=1e-3)}, consts, n_out=2 if sum_out else 1, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation,params", [("Relu", None), ("LeakyRelu", [0.1]), ("HardSigmoid", [0.2, 0.5]),
                                               ("Clip", [-1.0, 1.0]), ("Tanh", None)])
def test_fused_conv(activation, params):
    extra = {"activation_params": params} if params else {}
    node = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], domain=MS, activation=activation,
                            kernel_shape=[3, 3], pads=[1, 1, 1, 1], **extra)
    check(node, {"x": data(1, 3, 8, 8)}, {"w": data(4, 3, 3, 3, scale=0.5), "b": data(4)}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid", "LeakyRelu"])
def test_fused_gemm(activation):
    node = helper.make_node("FusedGemm", ["a", "w", "c"], ["y"], domain=MS, activation=activation, transB=1,
                            activation_alpha=0.2)
    check(node, {"a": data(4, 8)}, {"w": data(6, 8), "c": data(6)}, rtol=1e-4, atol=1e-5)


def test_unsupported_contrib_op_is_listed_at_build():
    node = helper.make_node("SparseAttention", ["x"], ["y"], domain=MS)
    with pytest.raises(Exception, match="com.microsoft::SparseAttention"):
        Session(model(node, {"x": data(2, 3)}, {}))


@pytest.mark.parametrize("op", ["SimplifiedLayerNormalization", "LayerNormalization"])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_default_domain_norms_below_opset_17(op, eps):
    """ORT's own LayerNormalization / SimplifiedLayerNormalization in the default domain at opset 14
    (what its transformer optimizer writes); epsilon left out is ORT's default, 1e-5: rows of tiny
    magnitude tell it apart."""
    node = helper.make_node(op, ["x", "g"] + (["b"] if op == "LayerNormalization" else []), ["y"],
                            **({} if eps is None else {"epsilon": eps}))
    consts = {"g": data(8), **({"b": data(8)} if op == "LayerNormalization" else {})}
    m = model(node, {"x": data(2, 5, 8, scale=1e-3)}, consts)
    del m.opset_import[:]
    m.opset_import.extend([helper.make_opsetid("", 14)])
    x = {"x": data(2, 5, 8, scale=1e-3)}
    np.testing.assert_allclose(Session(m).run(None, x)[0], ort_session(m).run(None, x)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bias,sum_out,eps", [(False, False, None), (True, True, None), (True, False, 1e-5)])
def test_skip_simplified_layer_norm(bias, sum_out, eps):
    ins = ["x", "r", "g"] + (["b"] if bias else [])
    consts = {"g": data(8), **({"b": data(8, scale=1e-3)} if bias else {})}
    outs = ["y", "", "", "s"] if sum_out else ["y"]
    node = helper.make_node("SkipSimplifiedLayerNormalization", ins, outs, domain=MS,
                            **({} if eps is None else {"epsilon": eps}))
    check(node, {"x": data(2, 5, 8, scale=1e-3), "r": data(2, 5, 8, scale=1e-3)}, consts,
          n_out=2 if sum_out else 1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.125}, {"transA": 1, "transB": 1, "alpha": 2.0}])
def test_fused_matmul(attrs):
    """What ORT writes for MatMul + Transpose/Mul when it saves an optimized model."""
    a = data(2, 3, 4, 5) if attrs.get("transA") else data(2, 3, 5, 4)
    b = data(3, 6, 4) if attrs.get("transB") else data(3, 4, 6)
    check(helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain=MS, **attrs), {"a": a}, {"b": b}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [{}, {"mode": "nearest", "padding_mode": "border"},
                                   {"mode": "bilinear", "padding_mode": "reflection", "align_corners": 1},
                                   {"mode": "bicubic"}])
def test_grid_sample(attrs):
    """PyTorch's grid_sample exported below opset 16 (com.microsoft GridSample)."""
    grid = (RNG.random((2, 4, 5, 2)) * 2.4 - 1.2).astype(np.float32)  # some samples fall outside
    check(helper.make_node("GridSample", ["x", "g"], ["y"], domain=MS, **attrs), {"x": data(2, 3, 6, 7)}, {"g": grid},
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["bert_encoder", "transformer_block", "convnet", "custom_domain"])
@pytest.mark.parametrize("level", ["BASIC", "EXTENDED"])
def test_models_saved_by_onnxruntime_after_its_optimizations_run(name, level, tmp_path):
    """SessionOptions.optimized_model_filepath: what ORT writes after its own fusions (FusedMatMul,
    FusedGemm, FusedConv, QuickGelu, BiasGelu, ...) runs in graphopt.Session, with ORT's outputs on the
    original model."""
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    so.optimized_model_filepath = str(tmp_path / "saved.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(golden.model_path(name)), so, providers=["CPUExecutionProvider"])
    feed = golden.load_golden(name).inputs
    want = ort_session(onnx.load(golden.model_path(name))).run(None, feed)
    got = Session(onnx.load(tmp_path / "saved.onnx")).run(None, feed)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(w).max())))
