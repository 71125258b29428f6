"""The fast paths of the plan: generated straight-line code (graphopt/runtime/plan/codegen.py), plans
specialized per input-shape signature (specialize.py), inlined local functions
(inline.py) and the small-op prepare hooks (kernels/cpu/prepared_small.py).
Expected outputs come from ONNX Runtime on the same model (never from graphopt)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime.plan.functions import LocalFunctionCall
from graphopt.errors import KernelFailed
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(7)


def ort_run(model, feed):
    return ort_session(model).run(None, feed)  # optimizations off: the unoptimized model


def assert_matches(sess, model, feed, rtol=1e-5, atol=1e-6):
    want = ort_run(model, feed)
    got = sess.run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def test_a_failing_step_in_generated_code_is_named():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[6] x, int64[2] s) => (float[?, ?] y) {
        a = Relu(x)
        b = Neg(a)
        y = Reshape(b, s)
    }""")
    model.graph.node[2].name = "third"
    sess = Session(model)
    np.testing.assert_array_equal(sess.run(None, {"x": arr(6), "s": np.array([2, 3])})[0].shape, (2, 3))
    with pytest.raises(KernelFailed, match=r"third \(Reshape\)"):
        sess.run(None, {"x": arr(6), "s": np.array([4, 4])})


SHAPE_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, C, 4] x) => (float[?, ?] y, float[?, 4] z, int64[?] n) {
    s = Shape(x)
    i0 = Constant <value = int64 {0}> ()
    i1 = Constant <value = int64 {-2}> ()
    b = Gather <axis = 0> (s, i0)
    c = Gather <axis = 0> (s, i1)
    ax = Constant <value = int64[1] {0}> ()
    b1 = Unsqueeze(b, ax)
    c1 = Unsqueeze(c, ax)
    m1 = Constant <value = int64[1] {-1}> ()
    shp = Concat <axis = 0> (b1, m1)
    y = Reshape(x, shp)
    e = Constant <value = float[1, 4] {1, 2, 3, 4}> ()
    shp2 = Concat <axis = 0> (c1, ax)
    four = Constant <value = int64[1] {4}> ()
    shp3 = Max(shp2, four)
    z = Expand(e, shp3)
    n = Identity(shp)
}"""


def test_shape_arithmetic_is_folded_per_input_signature():
    model = onnx.parser.parse_model(SHAPE_CHAIN)
    sess = Session(model)
    assert sess._plan._fixed  # the Shape -> Gather -> ... -> Concat chain
    for shape in [(2, 3, 4), (5, 1, 4), (2, 3, 4), (1, 6, 4), (2, 3, 4), (5, 1, 4), (5, 1, 4)]:
        assert_matches(sess, model, {"x": arr(*shape)})
    assert len(sess._plan._specialized) == 2  # the signatures seen more than once
    specialized = next(iter(sess._plan._specialized.values()))
    assert "Shape" not in specialized.source and specialized.source.count("_a = ") < len(sess._plan.steps)


def test_shape_of_a_data_dependent_value_is_not_folded():
    # NonZero's output shape depends on the data: same feed shape, different counts
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[6] x) => (int64[?] y) {
        nz = NonZero(x)
        y = Shape(nz)
    }""")
    sess = Session(model)
    for x in [np.array([1, 0, 2, 0, 0, 3], np.float32), np.array([1, 1, 1, 1, 0, 1], np.float32)]:
        assert_matches(sess, model, {"x": x})


def test_an_initializer_a_feed_overrides_is_not_folded():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 6] x, int64[2] shp) => (float[?, ?] y) {
        s = Shape(x)
        t = Mul(s, shp)
        y = Expand(x, t)
    }""")
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1], np.int64), "shp"))
    sess = Session(model)
    x = arr(1, 6)
    for feed in [{"x": x}, {"x": x, "shp": np.array([3, 1], np.int64)}, {"x": x}]:
        assert_matches(sess, model, feed)
    assert sess.run(None, {"x": x, "shp": np.array([3, 1], np.int64)})[0].shape == (3, 6)


LOCAL = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] p) {
    a = local.Swish(x)
    b = local.Scaled <alpha = 3.0> (a)
    y = local.Scaled (b)
    p = local.Swish(y)
}
<domain: "local", opset_import: ["" : 17]>
Swish (v) => (w) {
    s = Sigmoid(v)
    w = Mul(v, s)
}
<domain: "local", opset_import: ["" : 17, "local" : 1]>
Scaled <alpha: float = 0.5> (v) => (w) {
    k = Constant <value_float: float = @alpha> ()
    t = local.Swish(v)
    w = Mul(t, k)
}
"""


def test_local_functions_are_inlined_and_match_ort():
    model = onnx.parser.parse_model(LOCAL)
    sess = Session(model)
    assert not any(isinstance(st[0], LocalFunctionCall) for st in sess._plan.steps)
    x = arr(2, 3)
    before = x.copy()
    for _ in range(2):
        assert_matches(sess, model, {"x": x})
    np.testing.assert_array_equal(x, before)  # in-place reuse inside inlined bodies never touches the feed


def test_a_function_with_another_opset_stays_a_nested_call():
    model = onnx.parser.parse_model(LOCAL.replace('<domain: "local", opset_import: ["" : 17]>\nSwish',
                                                  '<domain: "local", opset_import: ["" : 13]>\nSwish'))
    sess = Session(model)
    assert any(isinstance(st[0], LocalFunctionCall) for st in sess._plan.steps)
    assert_matches(sess, model, {"x": arr(2, 3)})


def single(op, x, inits, attrs=None, opset=17, out_type=TensorProto.FLOAT):
    names = ["x"] + [i.name if i is not None else "" for i in inits]
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [helper.make_tensor_value_info("y", out_type, None)], [i for i in inits if i is not None])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def c(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


SMALL_OPS = [  # (op, x, constant inputs, attrs, opset, output type)
    ("Cast", arr(3, 4), [], {"to": TensorProto.INT32}, 17, TensorProto.INT32),
    ("Cast", arr(3, 4), [], {"to": TensorProto.FLOAT16}, 17, TensorProto.FLOAT16),
    ("Cast", np.array([0, 3, -1], np.int64), [], {"to": TensorProto.BOOL}, 17, TensorProto.BOOL),
    ("Cast", arr(2, 2), [], {"to": TensorProto.DOUBLE}, 17, TensorProto.DOUBLE),
    ("Unsqueeze", arr(3, 4), [c("a", np.array([0, -1], np.int64))], {}, 17, TensorProto.FLOAT),
    ("Unsqueeze", arr(3, 4), [c("a", np.array([3, 1], np.int64))], {}, 17, TensorProto.FLOAT),
    ("Unsqueeze", arr(3, 4), [], {"axes": [1]}, 11, TensorProto.FLOAT),
    ("Gather", arr(5, 4), [c("i", np.array([[0, -1], [4, 2]], np.int64))], {"axis": 0}, 17, TensorProto.FLOAT),
    ("Gather", arr(5, 4), [c("i", np.array(-2, np.int64))], {"axis": 1}, 17, TensorProto.FLOAT),
    ("Gather", arr(5, 4), [c("i", np.array([3, 1], np.int32))], {"axis": -1}, 17, TensorProto.FLOAT),
    ("ReduceSum", arr(3, 4, 5), [c("a", np.array([-1, 0], np.int64))], {"keepdims": 0}, 17, TensorProto.FLOAT),
    ("ReduceSum", arr(3, 4, 5), [], {}, 17, TensorProto.FLOAT),
    ("ReduceMean", arr(3, 4, 5), [], {"axes": [1], "keepdims": 1}, 17, TensorProto.FLOAT),
    ("ReduceMean", arr(3, 4, 5).astype(np.float64), [], {"keepdims": 0}, 17, TensorProto.DOUBLE),
    ("ReduceMean", arr(3, 4, 5), [c("a", np.array([2], np.int64))], {}, 18, TensorProto.FLOAT),
    ("Expand", arr(3, 1), [c("s", np.array([2, 1, 4], np.int64))], {}, 17, TensorProto.FLOAT),
    ("Slice", arr(6, 5), [c("b", np.array([1, -1], np.int64)), c("e", np.array([100, -6], np.int64)),
                          c("a", np.array([0, 1], np.int64)), c("st", np.array([2, -2], np.int64))], {}, 17,
     TensorProto.FLOAT),
    ("Slice", arr(6, 5), [c("b", np.array([-3], np.int64)), c("e", np.array([-1], np.int64))], {}, 17,
     TensorProto.FLOAT),
    ("MatMul", arr(4, 16, 24), [c("w", arr(24, 8))], {}, 17, TensorProto.FLOAT),      # one GEMM over 64 rows
    ("MatMul", arr(2, 3, 16, 24), [c("w", arr(24, 8))], {}, 17, TensorProto.FLOAT),
    ("MatMul", arr(2, 3, 4), [c("w", arr(4, 5))], {}, 17, TensorProto.FLOAT),         # small: NumPy's matmul
]


@pytest.mark.parametrize("op, x, inits, attrs, opset, out_type", SMALL_OPS,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(SMALL_OPS)])
def test_small_op_prepare_hooks_match_ort(op, x, inits, attrs, opset, out_type):
    from graphopt.kernels import registry
    model = single(op, x, inits, attrs, opset, out_type)  # output shape left open: ORT validates the model
    sess = Session(model)
    assert sess._plan.steps[0][0] is not registry.lookup("", op, opset, "cpu")  # the prepared kernel runs
    for _ in range(2):
        got, want = sess.run(None, {"x": x})[0], ort_run(model, {"x": x})[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        if op.startswith("Reduce") or op == "MatMul":  # summation order differs from ORT's by an ulp or so
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, want)


EXTREMES = [-1e4, -700.0, -100.0, -89.0, -87.0, -30.0, -1.0, 0.0, 1e-3, 5.0, 30.0, 100.0, 800.0, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [15, 2048])  # the small-tensor path (exp input clipped) and the in-place one
def test_sigmoid_matches_ort_at_the_extremes(dtype, size):
    x = np.resize(np.array(EXTREMES, dtype), size)
    model = single("Sigmoid", x, [], {}, 17, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    with np.errstate(over="raise"):  # an overflow in exp may not escape the kernel as an error
        got = Session(model).run(None, {"x": x})[0]
    want = ort_run(model, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-8)  # ORT clamps float32 inputs at -18 (1.5e-8)
    assert np.isnan(Session(model).run(None, {"x": np.full(size, np.nan, dtype)})[0]).all()


def test_generated_code_lets_a_kernel_reuse_only_values_that_die_at_it():
    from graphopt.kernels.cpu._inplace import reusable
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y, float[4] z, float[4] w) {
        a = Add(x, x)
        y = Relu(a)
        z = Neg(x)
        w = Exp(z)
    }""")
    sess = Session(model)
    seen = {}
    code = sess._plan._compiled
    for i, (fn, *_rest, desc) in enumerate(sess._plan.steps):
        def probe(args, at, fn=fn, desc=desc):
            seen[desc.split()[-1]] = reusable(args, 0)
            return fn(args, at)
        code.__globals__[f"f{i}"] = probe
    assert_matches(sess, model, {"x": arr(4)})
    assert seen == {"(Add)": False, "(Relu)": True, "(Neg)": False, "(Exp)": False}  # feed / dying / output


def test_subgraphs_fold_the_enclosing_scope_constants_they_read():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3] x, int64 n) => (float[1, 3] y, float[?, 1, 3] ys) {
        half = Constant <value = float {0.5}> ()
        t = Relu(x)
        keep = Constant <value = bool {1}> ()
        y, ys = Loop(n, keep, x) <body = body (int64 i, bool c, float[1, 3] v) => (bool co, float[1, 3] vo, float[1, 3] so) {
            co = Identity(c)
            wb = Mul(w, half)
            m = MatMul(v, wb)
            a = Add(m, t)
            vo = Tanh(a)
            so = Identity(vo)
        }>
    }""")
    model.graph.initializer.append(numpy_helper.from_array(arr(3, 3), "w"))
    sess = Session(model)
    loop = sess._plan.steps[-1]
    body = loop[3]["body"]
    assert "w" not in body.free_names and "half" not in body.free_names and body.folded == 1  # Mul(w, half)
    for n in (0, 1, 4):
        assert_matches(sess, model, {"x": arr(1, 3), "n": np.array(n, np.int64)})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_table_matches_ort_across_its_range(dtype):
    import math
    x = np.concatenate([RNG.standard_normal(5000) * 3, np.linspace(-7, 7, 2001), np.logspace(-20, 1, 300),
                        -np.logspace(-20, 1, 300), [0.0, -0.0, 5.999, 6.0, 6.001, 1e30, -np.inf, np.inf, np.nan]])
    x = x.astype(dtype)
    model = single("Erf", x, [], {}, 17, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    got = Session(model).run(None, {"x": x})[0]
    if dtype == np.float32:
        want = ort_run(model, {"x": x})[0]
    else:  # ORT has no double Erf: the definition itself (math.erf), to float32-level accuracy like ORT's
        want = np.array([math.erf(v) for v in x.tolist()])
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-7)  # NaN in, NaN out (equal_nan)


def test_a_subgraph_reading_an_overridable_initializer_sees_the_fed_value():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[3] k) => (float[3] y) {
        y = If(c) <then_branch = t () => (float[3] r) { r = Neg(k) },
                   else_branch = e () => (float[3] r) { r = Identity(k) }>
    }""")
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], np.float32), "k"))
    sess = Session(model)
    for feed in [{"c": np.array(True)}, {"c": np.array(True), "k": arr(3)}, {"c": np.array(False), "k": arr(3)}]:
        assert_matches(sess, model, feed)


def test_signatures_cycling_past_the_kept_ones_do_not_compile_at_every_run(monkeypatch):
    # a KV-cache decode loop: each generation walks the same growing lengths once, more of them than
    # a plan keeps specialized (SIGNATURES_KEPT). Evicting one doubles the runs a signature needs, so
    # the compiles thin out instead of one per run; the outputs stay ORT's on every run.
    import graphopt.runtime.plan.build as build
    from graphopt.runtime.plan.specialize import SIGNATURES_KEPT
    compiles = []
    real = build.specialize
    monkeypatch.setattr(build, "specialize", lambda *a: compiles.append(a[1][0].shape) or real(*a))
    model = onnx.parser.parse_model(SHAPE_CHAIN)
    sess, ref = Session(model), ort_session(model)
    lengths, generations = range(1, 2 * SIGNATURES_KEPT + 1), 8
    for _ in range(generations):
        for n in lengths:
            x = arr(2, n, 4)
            for w, g in zip(ref.run(None, {"x": x}), sess.run(None, {"x": x})):
                np.testing.assert_allclose(g, w, rtol=1e-6)
    runs = generations * len(lengths)
    assert SIGNATURES_KEPT <= len(compiles) <= runs // 4  # the old clear-all cache: one per run after the first walk
    assert len(sess._plan._specialized) <= SIGNATURES_KEPT
    for _ in range(200):  # a signature that keeps repeating still earns its specialization
        sess.run(None, {"x": arr(3, 7, 4)})
    assert sess._plan.compiled_for((((3, 7, 4), np.dtype(np.float32)),)) is not None
