"""The README's worked example of a new fused op (examples/fused_op: a rule file and a kernel file),
loaded the way a user loads them, checked against ONNX Runtime on the original model."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import parser

import graphopt
from graphopt.compiler.pass_manager import REGISTRY
from graphopt.kernels import registry
from graphopt.pipeline import load_builtin_passes
from graphopt.verify import run_ort

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fused_op"
MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4, 5] x) => (float[2, 3, 4, 5] y) {
    t = Mul(x, a)
    y = Add(t, b)
}"""


def _model(a_shape=(3, 1, 1), b_shape=(3, 1, 1)):
    m = parser.parse_model(MODEL)
    rng = np.random.default_rng(0)
    for name, shape in (("a", a_shape), ("b", b_shape)):
        m.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return m


@pytest.fixture
def example_loaded():
    """The example's pass and kernel, removed again afterwards (the registries are process-wide)."""
    load_builtin_passes()  # before the snapshot: they register once per process
    passes = dict(REGISTRY)
    graphopt.load_plugin(EXAMPLE / "muladd_rule.py")
    graphopt.load_plugin(EXAMPLE / "muladd_kernel.py")
    yield
    REGISTRY.clear()
    REGISTRY.update(passes)
    registry.unregister("MulAdd", domain="ai.graphopt")


def test_fuses_for_the_graphopt_target_and_matches_ort(example_loaded):
    original = _model()
    fused = graphopt.compile(original, target="graphopt")
    onnx.checker.check_model(fused)
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [("ai.graphopt", "MulAdd")]
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = run_ort(original, {"x": x})["y"]
    got = graphopt.Session(fused).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_other_targets_keep_the_graph_and_trace_says_why(example_loaded):
    result = graphopt.compile_model(_model(), target="onnx", trace=["mul-add"])
    assert [n.op_type for n in result.model.graph.node] == ["Mul", "Add"]
    assert "has no fused MulAdd" in str(result.report.near_misses.get("mul-add"))


def test_refuses_a_constant_that_would_broadcast_x(example_loaded):
    wide = _model(b_shape=(1, 1, 1, 1, 1))  # x * a + b has rank 5: MulAdd would return x's rank 4
    wide.graph.output[0].type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    result = graphopt.compile_model(wide, target="graphopt", trace=["mul-add"])
    assert [n.op_type for n in result.model.graph.node] == ["Mul", "Add"]
    assert "could broadcast x" in str(result.report.near_misses.get("mul-add"))
