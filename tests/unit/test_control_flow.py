"""If, Loop and Scan through graphopt.Session on the corners of their ONNX semantics that the
runtime's per-iteration shortcuts touch (cached iteration counters, the body's compiled function
called directly, scan outputs built in one call): outputs compared with ONNX Runtime on the
unoptimized model, never with graphopt itself."""
import threading

import numpy as np
import onnx
import pytest

from graphopt.errors import GraphoptError
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(3)


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def ort_run(model, feed):
    return ort_session(model).run(None, feed)  # optimizations off: the unoptimized model


def assert_matches_ort(model, feed, sess=None):
    got = (sess or Session(model)).run(None, feed)
    want = ort_run(model, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return got


# the iteration counter comes out as a carried value, a scan output and (via Add) a computed one;
# the carried `a` is also a scan output (the same array: Identity)
COUNTER_LOOP = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (int64 n, float[3] x) => (int64 last, float[3] y, int64[?] iters, float[?, 3] ys, int64[?] plus) {
    c = Constant <value = bool {1}> ()
    zero = Constant <value = int64 {0}> ()
    last, y, iters, ys, plus = Loop(n, c, zero, x) <body = b (int64 i, bool ci, int64 li, float[3] a) =>
            (bool co, int64 lo, float[3] an, int64 io, float[3] so, int64 po) {
        co = Identity(ci)
        lo = Identity(i)
        io = Identity(i)
        one = Constant <value = int64 {1}> ()
        po = Add(i, one)
        an = Add(a, x)
        so = Identity(an)
    }>
}""")


@pytest.mark.parametrize("trips", [0, 1, 3, 300, 5000])  # 300, 5000: past the cached counters
def test_loop_counter_and_aliased_outputs_match_ort(trips):
    feed = {"n": np.array(trips, np.int64), "x": RNG.standard_normal(3).astype(np.float32)}
    got = assert_matches_ort(COUNTER_LOOP, feed)
    # the caller owns what comes out: writable, and not shared with a later run
    assert all(g.flags.writeable for g in got)
    before = got[0].copy()
    got[0][...] = -7
    again = Session(COUNTER_LOOP).run(None, feed)
    np.testing.assert_array_equal(again[0], before)


def test_loop_counters_stay_right_across_threads():
    sess = Session(COUNTER_LOOP)
    x = np.ones(3, np.float32)
    failures = []

    def work(trips):
        for _ in range(5):
            iters = sess.run(None, {"n": np.array(trips, np.int64), "x": x})[2]
            if not np.array_equal(iters, np.arange(trips)):
                failures.append(trips)
    threads = [threading.Thread(target=work, args=(t,)) for t in (70, 300, 900, 2000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# no trip count: the body's cond stops the loop (after the iteration where the sum passes a limit)
COND_LOOP = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[2] x, float lim) => (float[2] y, float[?, 2] ys, int64[?] ids) {
    y, ys, ids = Loop("", c, x) <body = b (int64 i, bool ci, float[2] a) =>
            (bool co, float[2] an, float[2] so, int64 io) {
        an = Add(a, x)
        s = ReduceSum(an)
        co = Less(s, lim)
        so = Identity(a)
        io = Identity(i)
    }>
}""")


@pytest.mark.parametrize("cond,lim", [(True, 9.0), (True, -1.0), (False, 9.0), (True, 700.0)])
def test_loop_without_trip_count_stops_on_cond(cond, lim):
    feed = {"c": np.array(cond), "x": np.array([1.0, 0.5], np.float32), "lim": np.array(lim, np.float32)}
    assert_matches_ort(COND_LOOP, feed)


# a trip count and no cond: exactly n iterations; the body ignores its cond input
TRIP_LOOP = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (int64 n, float[2, 2] x) => (float[2, 2] y, float[?, 2, 2] ys) {
    y, ys = Loop(n, "", x) <body = b (int64 i, bool ci, float[2, 2] a) => (bool co, float[2, 2] an, float[2, 2] so) {
        co = Identity(ci)
        an = MatMul(a, x)
        so = Neg(an)
    }>
}""")


@pytest.mark.parametrize("trips", [0, 2, 7])
def test_loop_with_trip_count_only(trips):
    x = (RNG.standard_normal((2, 2)) * 0.5).astype(np.float32)
    assert_matches_ort(TRIP_LOOP, {"n": np.array(trips, np.int64), "x": x})


def test_loop_scan_output_of_changing_shape_is_an_error_naming_the_node():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64 n) => (int64[?, ?] r) {
        c = Constant <value = bool {1}> ()
        r = Loop(n, c) <body = b (int64 i, bool ci) => (bool co, int64[?] ro) {
            co = Identity(ci)
            zero = Constant <value = int64 {0}> ()
            one = Constant <value = int64 {1}> ()
            ro = Range(zero, i, one)
        }>
    }""")
    with pytest.raises(GraphoptError, match="Loop"):
        Session(model).run(None, {"n": np.array(3, np.int64)})


SCAN_AXES = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] s0, float[3, 4] a, float[4, 3] b) => (float[3] s, float[3, 4] ya, float[4, 3] yb) {
    s, ya, yb = Scan(s0, a, b) <body = sb (float[3] st, float[3] at, float[3] bt) =>
            (float[3] sn, float[3] oa, float[3] ob) {
        m = Mul(at, bt)
        sn = Add(st, m)
        oa = Identity(sn)
        ob = Sub(st, at)
    }, num_scan_inputs = 2, scan_input_axes = [1, 0], scan_input_directions = [1, 0],
       scan_output_axes = [-1, 0], scan_output_directions = [0, 1]>
}""")


def test_scan_axes_and_directions_match_ort():
    feed = {"s0": RNG.standard_normal(3).astype(np.float32), "a": RNG.standard_normal((3, 4)).astype(np.float32),
            "b": RNG.standard_normal((4, 3)).astype(np.float32)}
    assert_matches_ort(SCAN_AXES, feed)


def test_scan_over_zero_steps_gives_empty_scan_outputs():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] s0, float[N, 2] xs) => (float[2] s, float[N, 2] ys) {
        s, ys = Scan(s0, xs) <body = sb (float[2] st, float[2] xt) => (float[2] sn, float[2] o) {
            sn = Add(st, xt)
            o = Identity(sn)
        }, num_scan_inputs = 1>
    }""")
    for n in (1, 6):
        feed = {"s0": np.ones(2, np.float32), "xs": RNG.standard_normal((n, 2)).astype(np.float32)}
        assert_matches_ort(model, feed)
    # ORT and onnx.reference both reject a zero-length scan axis; by the spec no iteration runs: the
    # state comes out as it went in and each scan output is empty along the scan axis, typed as the body's
    s0 = np.array([1.0, 2.0], np.float32)
    s, ys = Session(model).run(None, {"s0": s0, "xs": np.zeros((0, 2), np.float32)})
    np.testing.assert_array_equal(s, s0)
    assert ys.shape == (0, 2) and ys.dtype == np.float32


IF_MODEL = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (bool[1] c, float[2] x) => (float[2] y, float[2] z) {
    t = Relu(x)
    y = If(c) <then_branch = th () => (float[2] r) { r = Identity(x) },
               else_branch = el () => (float[2] r) { r = Neg(t) }>
    z = If(c) <then_branch = th2 () => (float[2] r2) { r2 = Add(t, x) },
               else_branch = el2 () => (float[2] r2) { r2 = Identity(t) }>
}""")


@pytest.mark.parametrize("cond", [True, False])
def test_if_on_a_one_element_tensor_cond_reads_outer_values(cond):
    sess = Session(IF_MODEL)
    for _ in range(2):  # a second run goes through the specialized plan
        assert_matches_ort(IF_MODEL, {"c": np.array([cond]), "x": np.array([1.5, -2.0], np.float32)}, sess)


def test_branches_read_outer_values_with_any_name():
    from onnx import TensorProto, helper
    odd = ["q'uote", 'dq"uote', "back\\slash\nline", "ünï {x}"]  # names the wrappers must quote
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in odd]
    out = helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])
    then = helper.make_graph([helper.make_node("Sum", odd, ["r"])], "th", [], [out])
    other = helper.make_graph([helper.make_node("Sub", [odd[0], odd[3]], ["r"])], "el", [], [out])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])] + vi,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    for cond in (True, False):
        feed = {"c": np.array(cond), **{n: RNG.standard_normal(2).astype(np.float32) for n in odd}}
        assert_matches_ort(model, feed)


# branches that test the shape of an outer value, nested, as PyTorch exports do (squeeze a dim
# when it is 1, ...): each branch is specialized on the shapes of the outer values it reads
SHAPE_TESTING_IF = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[?, ?] x) => (float[?, ?] y) {
    y = If(c) <then_branch = th () => (float[?, ?] r) {
        s = Shape(x)
        zero = Constant <value = int64[1] {0}> ()
        one = Constant <value = int64[1] {1}> ()
        d0 = Gather(s, zero)
        d1 = Gather(s, one)
        single = Equal(d0, one)
        swapped = Concat <axis = 0> (d1, d0)
        t = Reshape(x, swapped)
        r = If(single) <then_branch = a () => (float[?, ?] ra) { two = Constant <value = float {2}> ()
                                                                  ra = Mul(t, two) },
                        else_branch = b () => (float[?, ?] rb) { rb = ReduceSum <keepdims = 1> (t, one) }>
    }, else_branch = el () => (float[?, ?] r) { r = Neg(x) }>
}""")


def test_if_branches_specialized_on_outer_shapes_match_ort():
    sess = Session(SHAPE_TESTING_IF)
    for shape in [(1, 3), (4, 3), (1, 3), (4, 3), (1, 5), (4, 3), (1, 3), (2, 2), (1, 5)]:
        for cond in (True, False):
            assert_matches_ort(SHAPE_TESTING_IF, {"c": np.array(cond), "x": RNG.standard_normal(shape).astype(np.float32)}, sess)
    outer_if = next(st for st in sess._plan.steps if "then_branch" in st[3])
    branch = outer_if[3]["then_branch"]
    assert len(branch._specialized) == 3  # the shapes seen twice or more; (2, 2) was seen once


def _scan8_model(directions):
    from onnx import TensorProto, helper
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x"], ["sn"]), helper.make_node("Mul", ["sn", "x"], ["o"])], "b",
        [helper.make_tensor_value_info("s", f, [2]), helper.make_tensor_value_info("x", f, [2])],
        [helper.make_tensor_value_info("sn", f, [2]), helper.make_tensor_value_info("o", f, [2])])
    node = helper.make_node("Scan", ["lens", "s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1,
                            directions=directions)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("lens", TensorProto.INT64, [3]), helper.make_tensor_value_info("s0", f, [3, 2]),
         helper.make_tensor_value_info("xs", f, [3, 4, 2])],
        [helper.make_tensor_value_info("s", f, [3, 2]), helper.make_tensor_value_info("ys", f, [3, 4, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("directions", [[0], [1]])
@pytest.mark.parametrize("lens", [[4, 4, 4], [2, 4, 1]])
def test_opset8_scan_honours_sequence_lens(directions, lens):
    feed = {"lens": np.array(lens, np.int64), "s0": RNG.standard_normal((3, 2)).astype(np.float32),
            "xs": RNG.standard_normal((3, 4, 2)).astype(np.float32)}
    assert_matches_ort(_scan8_model(directions), feed)
