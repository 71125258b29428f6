"""The execution plan: build-time folding, prepared (weight-specialized) kernels, in-place reuse of
dying values, per-node profile and peak memory, kernel failures, BLAS thread control.
Expected outputs come from ONNX Runtime on the same model (never from graphopt)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime.host.blas_threads import thread_limiter
from graphopt.errors import GraphoptError
from graphopt.errors import KernelFailed
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(1)


def ort_run(model, feed):
    return ort_session(model).run(None, feed)  # optimizations off: the unoptimized model


def check(model, feed, rtol=1e-4, atol=1e-4):
    onnx.checker.check_model(model)
    sess = Session(model)
    want = ort_run(model, feed)
    for _ in range(2):  # twice: a run must not disturb the constants the next one reads
        got = sess.run(None, feed)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return sess


def single_node_model(op, x_shape, inits, attrs, n_inputs=None, opset=17):
    names = ["x"] + [i.name for i in inits]
    node = helper.make_node(op, names[:n_inputs] if n_inputs else names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in
                                                                                      range(len(x_shape))])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


CONVS = [  # (x shape, w shape, attrs, with bias)
    ((1, 8, 9, 9), (16, 8, 1, 1), {}, True),                                        # pointwise GEMM
    ((2, 8, 9, 9), (16, 8, 1, 1), {}, False),                                       # pointwise, batch 2
    ((1, 8, 9, 9), (12, 2, 1, 1), {"group": 4}, True),                              # grouped pointwise
    ((1, 6, 10, 10), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}, True),       # depthwise
    ((2, 6, 11, 11), (6, 1, 3, 3), {"group": 6, "strides": [2, 2]}, False),         # depthwise, strided
    ((1, 4, 10, 10), (8, 4, 3, 3), {"pads": [1, 0, 2, 1]}, True),                   # asymmetric pads
    ((2, 4, 12, 12), (8, 4, 5, 5), {"strides": [2, 2], "dilations": [2, 1]}, True),
    ((1, 4, 9, 9), (8, 4, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, False),
    ((1, 6, 8, 8), (9, 2, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}, True),         # grouped
    ((1, 32, 14, 14), (32, 32, 3, 3), {"pads": [1, 1, 1, 1]}, True),                # Winograd
    ((2, 40, 9, 11), (36, 40, 3, 3), {"pads": [1, 0, 1, 2]}, False),                # Winograd, odd sizes
    ((1, 3, 20), (5, 3, 4), {"strides": [3], "pads": [1, 2]}, True),                # 1-D
    ((1, 2, 5, 6, 7), (4, 2, 2, 3, 2), {"pads": [0, 1, 1, 1, 0, 0]}, True),         # 3-D
]


@pytest.mark.parametrize("x_shape, w_shape, attrs, bias", CONVS)
def test_prepared_conv_matches_ort(x_shape, w_shape, attrs, bias):
    inits = [numpy_helper.from_array(arr(*w_shape), "w")]
    if bias:
        inits.append(numpy_helper.from_array(arr(w_shape[0]), "b"))
    check(single_node_model("Conv", x_shape, inits, attrs), {"x": arr(*x_shape)})


def test_winograd_path_is_taken_for_3x3_stride_1_with_enough_channels():
    from graphopt.kernels.cpu.prepared import PreparedConv
    model = single_node_model("Conv", (1, 128, 28, 28), [numpy_helper.from_array(arr(128, 128, 3, 3), "w")],
                              {"pads": [1, 1, 1, 1]})
    sess = check(model, {"x": arr(1, 128, 28, 28)})
    conv = sess._plan.steps[0][0]
    assert isinstance(conv, PreparedConv) and conv.winograd is not None
    assert conv.geometry[(1, 128, 28, 28)].wino  # the per-shape choice: Winograd (its GEMMs dominate here)


def test_conv_with_weight_fed_at_run_time_still_works():
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check(model, {"x": arr(1, 3, 6, 6), "w": arr(4, 3, 3, 3)})


@pytest.mark.parametrize("attrs, with_c, c_shape", [
    ({}, True, (5,)), ({"transB": 1}, True, (3, 5)), ({"transA": 1, "alpha": 0.5, "beta": 2.0}, True, (1, 5)),
    ({"transA": 1, "transB": 1}, False, None)])
def test_prepared_gemm_matches_ort(attrs, with_c, c_shape):
    a_shape = (4, 3) if attrs.get("transA") else (3, 4)
    b = arr(5, 4) if attrs.get("transB") else arr(4, 5)
    inits = [numpy_helper.from_array(b, "b")] + ([numpy_helper.from_array(arr(*c_shape), "c")] if with_c else [])
    check(single_node_model("Gemm", a_shape, inits, attrs), {"x": arr(*a_shape)})


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, 1.0, 1.7])
def test_prepared_pow_with_constant_exponent_matches_ort(exponent):
    inits = [numpy_helper.from_array(np.array(exponent, np.float32), "e")]
    x = np.abs(arr(3, 5)) + 0.1  # positive: the 0.5 and 1.7 powers are defined
    check(single_node_model("Pow", (3, 5), inits, {}), {"x": x}, rtol=1e-6, atol=0)


def test_prepared_batch_norm_matches_ort():
    c = 5
    inits = [numpy_helper.from_array(v, n) for v, n in [
        (arr(c), "s"), (arr(c), "bb"), (arr(c), "m"), (RNG.uniform(0.5, 2, c).astype(np.float32), "v")]]
    check(single_node_model("BatchNormalization", (2, c, 4, 3), inits, {"epsilon": 1e-3}), {"x": arr(2, c, 4, 3)})


CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 6] x, float[6] bias) => (float[2, 6] y, float[3, 4] view, float[2, 6] z) {
    a = Add(x, bias)
    view = Reshape(a, shape)
    r = Relu(a)
    s = Sigmoid(r)
    t = Mul(s, bias)
    u = Sub(bias, t)
    y = Div(u, cst)
    c2 = Clip(y, lo, hi)
    z = Sum(c2, t, x)
}"""


def test_in_place_reuse_never_touches_feeds_constants_outputs_or_live_views():
    # `a` dies at Relu but `view` (a Reshape of it, a graph output) must keep a's values;
    # the feeds, the initializers and the outputs y must come out untouched as well.
    model = onnx.parser.parse_model(CHAIN)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([3, 4], np.int64), "shape"),
        numpy_helper.from_array(np.float32(2.0), "cst"),
        numpy_helper.from_array(np.float32(-0.5), "lo"),
        numpy_helper.from_array(np.float32(0.75), "hi")])
    feed = {"x": arr(2, 6), "bias": arr(6)}
    before = {k: v.copy() for k, v in feed.items()}
    check(model, feed)
    for k in feed:
        np.testing.assert_array_equal(feed[k], before[k])


def test_in_place_reuse_of_views_only_when_their_base_is_dead():
    # v is a view of a; v dies at Relu while a lives on (Mul): Relu must not write into v.
    # w is a view of a dead temporary: Relu may reuse it. Either way outputs match ORT.
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 6] x, float[6] bias) => (float[3, 4] rv, float[2, 6] m, float[3, 4] rw) {
        a = Add(x, bias)
        v = Reshape(a, shape)
        rv = Relu(v)
        m = Mul(a, bias)
        t = Sub(x, bias)
        w = Reshape(t, shape)
        rw = Relu(w)
    }""")
    model.graph.initializer.append(numpy_helper.from_array(np.array([3, 4], np.int64), "shape"))
    check(model, {"x": arr(2, 6), "bias": arr(6)})


def test_constant_subgraphs_are_folded_at_build_but_random_ops_are_not():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y, float[2, 3] r) {
        shape = Constant<value = int64[2] {2, 3}>()
        w = ConstantOfShape<value = float[1] {0.5}>(shape)
        w2 = Mul(w, w)
        y = Add(x, w2)
        r = RandomUniformLike(w)
    }""")
    sess = Session(model)
    assert sess.folded_nodes == 2  # ConstantOfShape and Mul, not RandomUniformLike
    x = arr(2, 3)
    np.testing.assert_allclose(sess.run(["y"], {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-6)
    r1, r2 = sess.run(["r"], {"x": x})[0], sess.run(["r"], {"x": x})[0]
    assert r1.shape == (2, 3) and not np.array_equal(r1, r2)


def test_nodes_with_subgraphs_are_not_folded():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        c = Constant<value = bool {1}>()
        r = If(c) <then_branch = t () => (float[2] a) { a = RandomUniform<shape = [2]>() },
                   else_branch = e () => (float[2] b) { b = RandomUniform<shape = [2]>() }>
        y = Add(x, r)
    }""")
    sess = Session(model)
    assert sess.folded_nodes == 0
    x = np.zeros(2, np.float32)
    assert not np.array_equal(sess.run(None, {"x": x})[0], sess.run(None, {"x": x})[0])


@pytest.mark.parametrize("x_shape, shape, allowzero", [
    ((3, 4), [0, -1], 0), ((3, 4, 1), [3, 0, 1], 0), ((3, 4), [2, 6], 1), ((0, 4, 3), [0, 4, 3], 1)])
def test_prepared_reshape_matches_ort(x_shape, shape, allowzero):
    node = helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=allowzero)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(shape, np.int64), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": arr(*x_shape)}
    got = Session(model).run(None, feed)[0]
    want = ort_run(model, feed)[0]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_folded_graph_output_is_a_fresh_array_each_run():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[3] k) {
        s = Constant<value = int64[1] {3}>()
        k = ConstantOfShape<value = float[1] {1.0}>(s)
        y = Neg(x)
    }""")
    sess = Session(model)
    k = sess.run(["k"], {"x": arr(2)})[0]
    k[:] = 7
    np.testing.assert_array_equal(sess.run(["k"], {"x": arr(2)})[0], np.ones(3, np.float32))


def test_kernel_failure_names_node_and_op():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[6] x, int64[2] s) => (float[?, ?] y) {
        y = Reshape <allowzero = 0> (x, s)
    }""")
    model.graph.node[0].name = "bad_reshape"
    with pytest.raises(KernelFailed) as info:
        Session(model).run(None, {"x": arr(6), "s": np.array([4, 4], np.int64)})
    assert isinstance(info.value, GraphoptError)
    assert "bad_reshape" in str(info.value) and "Reshape" in str(info.value)


def test_profile_times_every_node_and_measures_peak_activation_memory():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[64, 64] x) => (float[64] y) {
        a = Exp(x)
        b = Concat<axis = 0>(a, a)
        c = Tanh(b)
        y = ReduceSum<keepdims = 0>(c, axes)
    }""")
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    sess = Session(model)
    x = arr(64, 64)
    assert sess.peak_activation_bytes is None
    (y,) = sess.run(None, {"x": x}, profile=True)
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    prof = sess.last_profile
    assert [op for op, _, _ in prof.steps] == ["Exp", "Concat", "Tanh", "ReduceSum"]
    # the most held at once: a (16 KiB) and b (32 KiB) while Concat runs (Tanh then writes c into b,
    # which dies there); x is a feed, not counted
    assert sess.peak_activation_bytes == 64 * 64 * 4 * 3
    assert "peak activation memory" in prof.format()


def test_threads_option_never_fails_and_caps_blas_when_possible():
    x = arr(8, 8)
    model = single_node_model("Gemm", (8, 8), [numpy_helper.from_array(arr(8, 8), "b")], {})
    sess = Session(model, threads=1)
    assert isinstance(sess.threads_applied, bool)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    limit = thread_limiter(1)
    assert (limit is not None) == sess.threads_applied
    if limit is not None:
        from graphopt.runtime.host.blas_threads import _find_openblas
        found = _find_openblas()
        if found is not None:  # the cap really reaches OpenBLAS
            get, put = found
            put(2)
            limit()
            assert get() == 1
    assert thread_limiter(None) is None
