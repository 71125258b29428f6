"""Session.run's generated fast path (graphopt/runtime/fast_run.py): it must give ONNX Runtime's outputs
on every feed it accepts, step aside (to the general path's conversion or error) on every feed it
does not, also after it has bound a static model's specialized plan, and never reuse a result."""
import numpy as np
import onnx
import pytest

from graphopt.errors import UsageError
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(11)

# shape arithmetic (folded per signature) feeding a Reshape, and an overridable initializer `bias`
STATIC = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] xq, int64[2] s) => (float[3, 2] y, int64[2] n) <float[3] bias = {1.0, 2.0, 3.0}> {
    a = Add(xq, bias)
    n = Shape(a)
    zero = Constant <value = int64[1] {0}> ()
    one = Constant <value = int64[1] {1}> ()
    two = Constant <value = int64[1] {2}> ()
    d1 = Slice(n, one, two)
    d0 = Slice(n, zero, one)
    r = Concat <axis = 0> (d1, d0)
    h = Relu(a)
    y = Reshape(h, r)
}""")
STATIC.graph.input[0].name = STATIC.graph.node[0].input[0] = 'x"q'  # a name generated code must quote
STATIC.graph.input.append(onnx.helper.make_tensor_value_info("bias", onnx.TensorProto.FLOAT, [3]))  # overridable
DYNAMIC = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y) {
    y = Sigmoid(x)
}""")


def check(sess, model, feed):
    want = ort_session(model).run(None, feed)
    got = sess.run(None, feed)
    for g, w in zip(got, want):
        assert type(g) is np.ndarray and g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    return got


def static_feed():
    return {'x"q': RNG.standard_normal((2, 3)).astype(np.float32), "s": np.zeros(2, np.int64)}


def test_static_model_binds_its_specialized_plan_and_matches_ort_on_every_feed():
    sess = Session(STATIC)
    seen = []
    for _ in range(5):
        got = check(sess, STATIC, static_feed())
        assert all(got[0] is not earlier for earlier in seen)  # a fresh result per run
        seen.append(got[0])
    # the feed checks and the plan call happen in the generated function, which has bound the plan's
    # function specialized for the one signature (the Shape/Slice/Concat steps folded)
    assert sess._fast_run.__globals__["_run"] in sess._plan._specialized.values()


@pytest.mark.parametrize("bad, words", [
    ({'x"q': np.zeros((3, 2), np.float32)}, ['x"q', "dimension 0 must be 2"]),
    ({'x"q': np.zeros((2, 3), np.float64)}, ["tensor(float)", "tensor(double)"]),
    ({'x"q': np.zeros((2, 3, 1), np.float32)}, ["rank 2", "rank 3"]),
    ({"s": np.zeros(3, np.int64)}, ["'s'", "[3]"]),
    ({"z": np.zeros(1, np.float32)}, ["unknown", "'z'"]),
])
def test_bad_feeds_after_the_plan_is_bound_still_get_the_general_paths_error(bad, words):
    sess = Session(STATIC)
    for _ in range(3):
        check(sess, STATIC, static_feed())
    with pytest.raises(UsageError) as info:
        sess.run(None, {**static_feed(), **bad})
    for w in words:
        assert w in str(info.value)


def test_feeds_the_fast_path_declines_are_converted_or_overridden_as_before():
    sess = Session(STATIC)
    for _ in range(3):
        check(sess, STATIC, static_feed())
    feed = static_feed()
    as_list = {'x"q': feed['x"q'].tolist(), "s": feed["s"]}  # converted by the general path
    np.testing.assert_allclose(sess.run(None, as_list)[0], check(sess, STATIC, feed)[0], rtol=1e-6)
    bias = np.array([-5.0, 0.5, 9.0], np.float32)  # the overridable initializer, fed
    check(sess, STATIC, {**feed, "bias": bias})
    check(sess, STATIC, static_feed())  # and back to the default


def test_symbolic_dims_are_checked_per_run_and_match_ort_at_every_size():
    sess = Session(DYNAMIC)
    for n in (1, 4, 4, 4, 2, 7, 1):
        check(sess, DYNAMIC, {"x": RNG.standard_normal((n, 3)).astype(np.float32)})
    with pytest.raises(UsageError, match="dimension 1 must be 3"):
        sess.run(None, {"x": np.zeros((2, 4), np.float32)})


def test_a_sequence_output_comes_back_as_ort_gives_it():
    """Outputs the generated function does not pass as they are (a sequence here) go through the
    general conversion, on the first runs and once the plan is bound."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (seq(float[2, 3]) s, float[2, 3] y) {
        y = Relu(x)
        s = SequenceConstruct(x, y)
    }""")
    sess = Session(model)
    for _ in range(4):
        x = RNG.standard_normal((2, 3)).astype(np.float32)
        (seq, y), (want_seq, want_y) = sess.run(None, {"x": x}), ort_session(model).run(None, {"x": x})
        assert type(seq) is list and len(seq) == len(want_seq) == 2
        for g, w in zip(seq + [y], want_seq + [want_y]):
            assert type(g) is np.ndarray
            np.testing.assert_array_equal(g, w)
