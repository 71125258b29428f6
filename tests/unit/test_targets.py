"""Output targets (`--target onnx|ort|graphopt`, `--opset N`): the CLI and API options, the opset
rule (a fused standard op never appears below the opset that defines it), and the ai.graphopt
kernels checked against ONNX Runtime's own contrib ops on the same inputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphopt
from graphopt import golden
from graphopt.cli.main import main
from graphopt.errors import UsageError
from graphopt.verify import run_ort
from target_check import ops

BERT = golden.model_path("bert_encoder")
BLOCK = golden.model_path("transformer_block")
OPSET_OF = {"Gelu": 20, "LayerNormalization": 17, "Attention": 23, "RMSNormalization": 23}


def _opset(model):
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _matches_golden(name, model, target):
    g = golden.load_golden(name)
    if target == "graphopt":
        got = dict(zip([o.name for o in model.graph.output], graphopt.Session(model).run(None, g.inputs)))
    else:
        got = golden.reference_outputs(model, g.inputs)
    assert not golden.compare(g.outputs, got)


@pytest.mark.parametrize("opset", [None, 20, 23])
def test_onnx_target_uses_fused_standard_ops_only_from_their_opset(opset):
    model = graphopt.compile_model(BERT, level=2, target="onnx", opset=opset).model
    have = _opset(model)
    assert have == (opset or 17)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    for op, since in OPSET_OF.items():
        if have < since:
            assert op not in ops(model), f"{op} below opset {since}"
    assert ("Gelu" in ops(model)) == (have >= 20)
    assert ("Attention" in ops(model)) == (have >= 23)
    onnx.checker.check_model(model, full_check=True)
    _matches_golden("bert_encoder", model, "onnx")


def test_ort_target_uses_contrib_ops_and_runs_in_ort():
    model = graphopt.compile_model(BERT, level=2, target="ort").model
    got = set(ops(model))
    assert {"ms:Attention", "ms:SkipLayerNormalization", "ms:BiasGelu", "ms:FastGelu"} <= got, got
    assert not any(o.startswith("go:") for o in got)
    _matches_golden("bert_encoder", model, "ort")


def test_graphopt_target_runs_in_graphopt_session():
    model = graphopt.compile_model(BERT, level=2, target="graphopt").model
    assert {"go:Attention", "go:SkipLayerNormalization", "go:BiasGelu"} <= set(ops(model))
    assert "ai.graphopt" in {o.domain for o in model.opset_import}
    _matches_golden("bert_encoder", model, "graphopt")


def test_cli_target_and_opset(tmp_path, capsys):
    out = tmp_path / "block.onnx"
    assert main(["compile", str(BLOCK), "-o", str(out), "--target", "ort", "--opset", "20", "-q"]) == 0
    model = onnx.load_model(str(out))
    assert _opset(model) == 20 and "com.microsoft" in {n.domain for n in model.graph.node}
    _matches_golden("transformer_block", model, "ort")


@pytest.mark.parametrize("args,message", [
    (["--opset", "12"], "below the model's opset 17"),
    (["--opset", "999"], "outside 1.."),
])
def test_cli_refuses_bad_opset_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "x.onnx"
    assert main(["compile", str(BLOCK), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_refuses_unknown_target(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["compile", str(BLOCK), "-o", str(tmp_path / "x.onnx"), "--target", "tensorrt"])
    assert e.value.code == 2


def test_api_refuses_unknown_target():
    with pytest.raises(UsageError, match="unknown target"):
        graphopt.compile_model(BLOCK, target="tensorrt")


def test_opset_raise_keeps_outputs_and_options_reach_passes():
    result = graphopt.compile_model(BLOCK, level=0, opset=21)
    assert _opset(result.model) == 21
    _matches_golden("transformer_block", result.model, "onnx")


# ---------------------------------------------------------------- ai.graphopt kernels vs ORT's contrib ops

def _single(op, domain, inputs, attrs, opset=17, extra_domain=None):
    vi = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape)) for name, a in inputs.items()]
    node = helper.make_node(op, list(inputs), ["y"], domain=domain, **attrs)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


R = np.random.default_rng(5)
X = R.standard_normal((2, 5, 8)).astype(np.float32)
V8 = R.standard_normal(8).astype(np.float32)
MASK = np.where(R.random((2, 1, 5, 5)) < 0.3, -10000.0, 0.0).astype(np.float32)

CASES = {  # name -> (ORT op, ORT domain, graphopt op, inputs, ORT attrs, graphopt attrs, ORT opset)
    "gelu": ("Gelu", "com.microsoft", "Gelu", {"x": X}, {}, {}, 17),
    "fast-gelu": ("FastGelu", "com.microsoft", "Gelu", {"x": X}, {}, {"approximate": "tanh"}, 17),
    "bias-gelu": ("BiasGelu", "com.microsoft", "BiasGelu", {"x": X, "b": V8}, {}, {}, 17),
    "fast-gelu-bias": ("FastGelu", "com.microsoft", "BiasGelu", {"x": X, "b": V8}, {}, {"approximate": "tanh"}, 17),
    "layernorm": ("LayerNormalization", "", "LayerNormalization", {"x": X, "s": V8, "b": V8[::-1].copy()},
                  {"epsilon": 1e-5}, {"epsilon": 1e-5, "axis": -1}, 17),
    "skip-layernorm": ("SkipLayerNormalization", "com.microsoft", "SkipLayerNormalization",
                       {"x": X, "r": X[::-1].copy(), "s": V8, "b": V8 * 0.5}, {"epsilon": 1e-6}, {"epsilon": 1e-6}, 17),
    "rmsnorm": ("RMSNormalization", "", "RMSNormalization", {"x": X, "s": V8}, {"epsilon": 1e-6},
                {"epsilon": 1e-6, "axis": -1}, 23),
    "attention": ("MultiHeadAttention", "com.microsoft", "Attention", {"q": X, "k": X * 0.5, "v": X[::-1].copy(),
                  "": None, " ": None, "m": MASK}, {"num_heads": 2, "scale": 0.3}, {"num_heads": 2, "scale": 0.3}, 17),
}


@pytest.mark.parametrize("case", CASES)
def test_graphopt_kernel_matches_ort(case):
    ort_op, ort_domain, go_op, inputs, ort_attrs, go_attrs, opset = CASES[case]
    present = {k: v for k, v in inputs.items() if v is not None}
    ref = _single(ort_op, ort_domain, present, ort_attrs, opset)
    if any(v is None for v in inputs.values()):  # optional inputs left empty in ORT's op
        ref.graph.node[0].input[:] = [k if v is not None else "" for k, v in inputs.items()]
    want = run_ort(ref, present)["y"]
    mine = _single(go_op, "ai.graphopt", present, go_attrs, opset)
    got = graphopt.Session(mine).run(None, present)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_verify_each_is_refused_for_target_graphopt():
    with pytest.raises(UsageError, match="cannot run --target graphopt"):
        graphopt.compile_model(BLOCK, target="graphopt", verify_each=True)


def test_verify_each_runs_for_target_ort():
    result = graphopt.compile_model(BLOCK, level=2, target="ort", verify_each=True)
    assert "com.microsoft" in {n.domain for n in result.model.graph.node}


@pytest.mark.parametrize("dims", [{"batch": 1, "seq": 1}, {"batch": 3, "seq": 9}])
@pytest.mark.parametrize("target", ["ort", "graphopt"])
@pytest.mark.parametrize("name", ["bert_encoder", "transformer_block"])
def test_fused_targets_keep_symbolic_dims(name, target, dims):
    """The fused attention (mask rows expanded at run time, packed QKV) holds at other batch/seq sizes."""
    from graphopt.verify import random_feed
    path = golden.model_path(name)
    original = onnx.load_model(str(path))
    compiled = graphopt.compile_model(path, level=3, target=target).model
    feed = random_feed(original, seed=2, dims=dims)
    if "input_ids" in feed:
        feed["input_ids"] = np.random.default_rng(2).integers(0, 120, feed["input_ids"].shape).astype(np.int64)
    want = golden.reference_outputs(original, feed)
    if target == "graphopt":
        got = dict(zip([o.name for o in compiled.graph.output], graphopt.Session(compiled).run(None, feed)))
    else:
        got = golden.reference_outputs(compiled, feed)
    assert not golden.compare(want, got)


def test_opset_raise_refuses_model_local_functions(tmp_path, capsys):
    """onnx.version_converter drops model-local functions: refused in one line, nothing written."""
    out = tmp_path / "x.onnx"
    assert main(["compile", str(golden.model_path("custom_domain")), "-o", str(out), "--opset", "21"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model-local functions" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("name", ["convnet", "if_subgraph", "loop_subgraph", "shape_chain", "redundant_ops"])
def test_opset_raise_keeps_golden_outputs(name):
    g = golden.load_golden(name)
    model = graphopt.compile_model(golden.model_path(name), level=2, opset=21).model
    assert _opset(model) == 21
    assert not golden.compare(g.outputs, golden.reference_outputs(model, g.inputs))


def _conv_gemm_model(op, domain, attrs, with_z=False):
    """Y = op(X, W, B[, Z]) with W and B initializers (graphopt's build-time weight layout applies)."""
    r = np.random.default_rng(9)
    if op == "FusedConv":
        x_shape, w, b = [2, 6, 9, 9], r.standard_normal((8, 6, 3, 3)).astype(np.float32) * 0.3, \
            r.standard_normal(8).astype(np.float32)
        attrs = {"pads": [1, 1, 1, 1], **attrs}
    else:
        x_shape, w, b = [4, 6], r.standard_normal((8, 6)).astype(np.float32), r.standard_normal(8).astype(np.float32)
        attrs = {"transB": 1, "alpha": 0.5, "beta": 2.0, **attrs}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    names = ["x", "w", "b"]
    if with_z:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8, 9, 9]))
        names.append("z")
    node = helper.make_node(op, names, ["y"], domain=domain, **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    model.ir_version = 8
    return model


CONV_ACTS = [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"activation_params": [0.2]}),
             ("Clip", {"activation_params": [0.0, 6.0]}), ("HardSigmoid", {"activation_params": [0.2, 0.5]}),
             ("HardSwish", {})]


@pytest.mark.parametrize("op,activation,params,with_z", [
    *[("FusedConv", a, p, False) for a, p in CONV_ACTS], *[("FusedConv", a, p, True) for a, p in CONV_ACTS],
    ("FusedGemm", "Relu", {}, False), ("FusedGemm", "LeakyRelu", {"activation_alpha": 0.1}, False),
    ("FusedGemm", "Tanh", {}, False),
])
def test_fused_conv_gemm_kernels_match_ort(op, activation, params, with_z):
    """graphopt's FusedConv/FusedGemm (prepared weights) against ORT's com.microsoft ops."""
    attrs = {"activation": activation, **params}
    feed = {"x": np.random.default_rng(1).standard_normal([2, 6, 9, 9] if op == "FusedConv" else [4, 6])
            .astype(np.float32)}
    if with_z:
        feed["z"] = np.random.default_rng(2).standard_normal([2, 8, 9, 9]).astype(np.float32)
    want = run_ort(_conv_gemm_model(op, "com.microsoft", attrs, with_z), feed)["y"]
    got = graphopt.Session(_conv_gemm_model(op, "ai.graphopt", attrs, with_z)).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
