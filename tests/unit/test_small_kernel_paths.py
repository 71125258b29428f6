"""The cheap per-call paths of the small kernels (kernels/cpu/elementwise.py, the binary in-place
kernels and Gemm in prepared.py, ReduceSum/Mean, MatMul, Cast, Expand, Unsqueeze in
prepared_small.py, _inplace.reusable). Each model is built so the kernel meets both a dying input
(written in place) and one that lives on (a feed, a constant, a value read again later); the
expected outputs come from ONNX Runtime on the same model, and feeds and constants must come out
of a run untouched (a second run must give the same outputs)."""
import numpy as np
import onnx
import pytest
from graphopt.kernels.cpu._inplace import reusable
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(11)
_TYPES = {np.float16: TensorProto.FLOAT16, np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def check(model, feed, rtol=1e-6, atol=1e-7):
    onnx.checker.check_model(model)
    want = ort_session(model).run(None, feed)  # optimizations off: the unoptimized model
    before = {k: v.copy() for k, v in feed.items()}
    sess = Session(model)
    for _ in range(3):  # the first run, the plan specialized for the shapes, and once more
        got = sess.run(None, feed)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        for k, v in feed.items():
            np.testing.assert_array_equal(v, before[k])  # a feed is never written into


def model_of(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


UNARY = ["Tanh", "Exp", "Neg", "Abs", "Sqrt", "Log", "Floor", "Ceil", "Reciprocal", "Sin", "Cos", "Relu",
         "Sigmoid"]


@pytest.mark.parametrize("shape", [(3, 7), (48, 32)])  # below and above _inplace.INPLACE_MIN_SIZE
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("op", UNARY)
def test_unary_in_place_and_not(op, dtype, shape):
    """a = Mul(x, s) dies in `op` (in place); `op` on the feed x and on b (read again later) must
    leave them alone; a 0-d input takes the path that wraps NumPy's scalar result."""
    if dtype == np.float16 and op in ("Sin", "Cos", "Tanh", "Sqrt", "Log", "Exp", "Reciprocal",
                                      "Floor", "Ceil", "Abs"):
        pytest.skip("ORT has no float16 kernel for this op")
    t = _TYPES[dtype]
    positive = op in ("Sqrt", "Log")
    x = RNG.uniform(0.1 if positive else -3, 3, shape).astype(dtype)
    z = np.asarray(RNG.uniform(0.5, 2)).astype(dtype)
    s = numpy_helper.from_array(np.array(1.5, dtype), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["a"]), helper.make_node(op, ["a"], ["y1"]),
             helper.make_node(op, ["x"], ["y2"]),
             helper.make_node("Mul", ["x", "s"], ["b"]), helper.make_node(op, ["b"], ["c"]),
             helper.make_node("Add", ["b", "c"], ["y3"]),
             helper.make_node(op, ["z"], ["y4"])]
    dims = list(shape)
    model = model_of(nodes, [vi("x", t, dims), vi("z", t, [])],
                     [vi("y1", t, dims), vi("y2", t, dims), vi("y3", t, dims), vi("y4", t, [])], [s])
    tol = 1e-3 if dtype == np.float16 else 1e-6
    check(model, {"x": x, "z": z}, rtol=tol, atol=tol)


def test_sigmoid_far_negative_is_zero_without_warnings():
    x = np.array([[-1000.0, -100.0, -50.0, 0.0, 50.0, 1000.0]], np.float32)
    model = model_of([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
                      helper.make_node("Sigmoid", ["b"], ["y"])],
                     [vi("x", TensorProto.FLOAT, [1, 6])], [vi("y", TensorProto.FLOAT, [1, 6])])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp's overflow is expected and silenced, as in the generic kernel
        check(model, {"x": x})


BINARY = ["Add", "Sub", "Mul", "Div"]


@pytest.mark.parametrize("batch", [1, 8])  # 192 and 1536 values: below and above INPLACE_MIN_SIZE
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("op", BINARY)
def test_binary_operand_roles(op, dtype, batch):
    """Dying big with a broadcast small (written into the big one), dying small with a big live one
    (never written into: the result does not fit), both dying with the small first (the second
    one takes the result), a 0-d constant, two 0-d values, and a live operand used again."""
    t = _TYPES[dtype]
    shape = [batch, 16, 12]
    x = RNG.uniform(0.5, 2, shape).astype(dtype)
    r = RNG.uniform(0.5, 2, (16, 1)).astype(dtype)
    q = np.asarray(RNG.uniform(0.5, 2)).astype(dtype)
    k = numpy_helper.from_array(np.array(1.25, dtype), "k")
    row = numpy_helper.from_array(RNG.uniform(0.5, 2, (12,)).astype(dtype), "row")
    n = helper.make_node
    nodes = [n("Mul", ["x", "k"], ["big"]), n(op, ["big", "row"], ["y1"]),             # big dies
             n("Mul", ["r", "k"], ["small"]), n(op, ["small", "x"], ["y2"]),          # small dies, x lives
             n("Mul", ["r", "k"], ["s2"]), n("Mul", ["x", "k"], ["b2"]), n(op, ["s2", "b2"], ["y3"]),
             n(op, ["x", "k"], ["y4"]), n(op, ["k", "x"], ["y5"]),                    # feed and constant
             n("Mul", ["q", "k"], ["q2"]), n(op, ["q2", "q"], ["y6"]),                # 0-d
             n(op, ["q", "q"], ["y7"]),                                               # two 0-d feeds
             n("Mul", ["x", "k"], ["live"]), n(op, ["live", "row"], ["u"]), n("Add", ["u", "live"], ["y8"]),
             # a big dying operand the result does not fit (batch 8: (1,16,96) against (8,16,1))
             n("Mul", ["m", "k"], ["md"]), n("Mul", ["c", "k"], ["cd"]), n(op, ["md", "cd"], ["y9"]),
             n("Mul", ["x", "k"], ["b3"]), n(op, ["row", "b3"], ["y10"])]                # constant first, big dies
    outs = [vi(f"y{i}", t, []) if i in (6, 7) else vi(f"y{i}", t, shape) for i in range(1, 9)]
    outs += [vi("y9", t, [batch, 16, 96]), vi("y10", t, shape)]
    m = RNG.uniform(0.5, 2, (1, 16, 96)).astype(dtype)
    c = RNG.uniform(0.5, 2, (batch, 16, 1)).astype(dtype)
    model = model_of(nodes, [vi("x", t, shape), vi("r", t, [16, 1]), vi("q", t, []), vi("m", t, [1, 16, 96]),
                             vi("c", t, [batch, 16, 1])], outs, [k, row])
    tol = 2e-3 if dtype == np.float16 else 1e-6
    check(model, {"x": x, "r": r, "q": q, "m": m, "c": c}, rtol=tol, atol=tol)


def test_binary_mixed_dtypes_and_ints_take_the_generic_kernel():
    a = np.arange(1, 13, dtype=np.int64).reshape(3, 4)
    model = model_of([helper.make_node("Add", ["a", "a"], ["b"]), helper.make_node("Div", ["b", "d"], ["y"])],
                     [vi("a", TensorProto.INT64, [3, 4]), vi("d", TensorProto.INT64, [4])],
                     [vi("y", TensorProto.INT64, [3, 4])])
    check(model, {"a": a, "d": np.array([3, -5, 7, 2], np.int64)})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("axes,keep", [([1], 1), ([-1], 0), ([0, 2], 1), ([2, 0], 0), (None, 0), (None, 1)])
def test_reduce_axes(op, dtype, axes, keep):
    t = _TYPES[dtype]
    x = RNG.standard_normal((3, 5, 6)).astype(dtype)
    ins = ["a"] + (["axes"] if axes is not None else [])
    inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")] if axes is not None else []
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node(op, ins, ["y"], keepdims=keep)]
    rank = 3 if keep else 3 - len(axes or [0, 1, 2])
    model = model_of(nodes, [vi("x", t, [3, 5, 6])], [vi("y", t, [f"d{i}" for i in range(rank)])], inits, opset=18)
    check(model, {"x": x}, rtol=1e-6, atol=1e-6)
    # a second input shape through the same session (geometry cached per shape)
    x2 = RNG.standard_normal((2, 5, 4)).astype(dtype)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "m"
    check(model, {"x": x2}, rtol=1e-6, atol=1e-6)


def test_reduce_mean_matches_numpy_mean_bit_for_bit():
    """The mean divides by the count in the input's dtype; np.mean (the generic kernel's operation)
    divides in float64 and rounds: the two must agree exactly."""
    x = RNG.standard_normal((4, 7, 9)).astype(np.float32) * 1000
    model = model_of([helper.make_node("Neg", ["x"], ["a"]), helper.make_node("ReduceMean", ["a"], ["y"], axes=[1, 2])],
                     [vi("x", TensorProto.FLOAT, [4, 7, 9])], [vi("y", TensorProto.FLOAT, [4, 1, 1])], opset=13)
    (y,) = Session(model).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.mean(-x, axis=(1, 2), keepdims=True))


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta,bias", [
    (0, 0, 1.0, 1.0, (6,)), (0, 1, 1.0, 1.0, (1, 6)), (1, 0, 0.5, 2.0, (3, 6)), (0, 0, 1.0, 1.0, (3, 1)),
    (0, 1, 1.0, 0.5, ()), (1, 1, 1.0, 1.0, None)])
def test_gemm_with_constant_weight(trans_a, trans_b, alpha, beta, bias):
    a = RNG.standard_normal((4, 3) if trans_a else (3, 4)).astype(np.float32)
    w = RNG.standard_normal((6, 4) if trans_b else (4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["a2", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(RNG.standard_normal(bias).astype(np.float32), "c"))
        ins.append("c")
    nodes = [helper.make_node("Relu", ["a"], ["a2"]),
             helper.make_node("Gemm", ins, ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)]
    model = model_of(nodes, [vi("a", TensorProto.FLOAT, list(a.shape))], [vi("y", TensorProto.FLOAT, [3, 6])], inits)
    check(model, {"a": a}, rtol=1e-5, atol=1e-5)


def test_gemm_bias_per_batch_size():
    """The bias tiled to the output's shape is kept per shape: batches of other sizes through one
    session each get their own."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 6)).astype(np.float32), "w")
    c = numpy_helper.from_array(RNG.standard_normal(6).astype(np.float32), "c")
    model = model_of([helper.make_node("Gemm", ["a", "w", "c"], ["y"])], [vi("a", TensorProto.FLOAT, ["n", 4])],
                     [vi("y", TensorProto.FLOAT, ["n", 6])], [w, c])
    sess, ref = Session(model), ort_session(model)
    for n in (3, 1, 5, 3):
        feed = {"a": RNG.standard_normal((n, 4)).astype(np.float32)}
        np.testing.assert_allclose(sess.run(None, feed)[0], ref.run(None, feed)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5), (40, 30, 5)])
def test_matmul_by_constant_small_and_stacked(shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    w = numpy_helper.from_array(RNG.standard_normal((5, 4)).astype(np.float32), "w")
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["y"])],
                     [vi("x", TensorProto.FLOAT, list(shape))],
                     [vi("y", TensorProto.FLOAT, list(shape[:-1]) + [4])], [w])
    check(model, {"x": x}, rtol=1e-5, atol=1e-5)


def test_cast_to_same_dtype_expand_and_unsqueeze():
    x = RNG.standard_normal((1, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([3, 6], np.int64), "shape"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "axes")]
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Expand", ["c", "shape"], ["e"]),
             helper.make_node("Unsqueeze", ["e", "axes"], ["u"]),
             helper.make_node("Mul", ["u", "u"], ["y1"]),
             helper.make_node("Cast", ["x"], ["y2"], to=TensorProto.FLOAT16)]
    model = model_of(nodes, [vi("x", TensorProto.FLOAT, [1, 6])],
                     [vi("y1", TensorProto.FLOAT, [1, 3, 6, 1]), vi("y2", TensorProto.FLOAT16, [1, 6])], inits)
    check(model, {"x": x})


def test_reusable_decisions():
    """Sole owner: yes; another holder, a read-only array, a partial view, a view whose base is held,
    a non-array: no; a full view that alone holds its base: yes."""
    held = np.ones(4)
    ro = np.ones(4)
    ro.flags.writeable = False
    base = np.ones(8)
    args = [np.ones(4), held, ro, np.ones(8)[2:6], base.reshape(2, 4), np.ones(8).reshape(2, 4), 3.0, None]
    got = [reusable(args, i) for i in range(len(args))]
    assert got == [True, False, False, False, False, True, False, False]


@pytest.mark.parametrize("idx_type", [np.int32, np.int64])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("constant_index", [False, True])  # the generic kernel, prepare_gather
def test_gather_negative_indices(idx_type, axis, constant_index):
    idx = np.array([[-1, 0], [2, -3]], idx_type)
    data = RNG.standard_normal((4, 3)).astype(np.float32)
    ins = [vi("x", TensorProto.FLOAT, [4, 3])]
    inits = [numpy_helper.from_array(idx, "i")] if constant_index else []
    if not constant_index:
        ins.append(vi("i", TensorProto.INT32 if idx_type is np.int32 else TensorProto.INT64, [2, 2]))
    model = model_of([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], ins,
                     [vi("y", TensorProto.FLOAT, [None] * 3)], inits)
    check(model, {"x": data} if constant_index else {"x": data, "i": idx})


@pytest.mark.parametrize("bad", [3, -4])
def test_gather_index_out_of_range_is_an_error_naming_the_node(bad):
    from graphopt.errors import KernelFailed
    model = model_of([helper.make_node("Gather", ["x", "i"], ["y"], axis=1, name="lookup")],
                     [vi("x", TensorProto.FLOAT, [2, 3]), vi("i", TensorProto.INT64, [1])],
                     [vi("y", TensorProto.FLOAT, [2, 1])])
    with pytest.raises(KernelFailed, match="lookup"):
        Session(model).run(None, {"x": np.zeros((2, 3), np.float32), "i": np.array([bad], np.int64)})


@pytest.mark.parametrize("opset, axes", [(13, [1, -1]), (13, [-4]), (11, [1, 3]), (11, [0])])
def test_squeeze_by_constant_axes(opset, axes):
    x = RNG.standard_normal((1, 1, 5, 1)).astype(np.float32)
    if opset >= 13:
        node = helper.make_node("Squeeze", ["x", "axes"], ["y"])
        inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    else:
        node, inits = helper.make_node("Squeeze", ["x"], ["y"], axes=axes), []
    rank = 4 - len(axes)
    model = model_of([node, helper.make_node("Relu", ["y"], ["z"])], [vi("x", TensorProto.FLOAT, [1, 1, 5, 1])],
                     [vi("z", TensorProto.FLOAT, [None] * rank)], inits, opset=opset)
    check(model, {"x": x})


@pytest.mark.parametrize("axes", [[2], [0, -4]])  # a dim of size 5; the same axis twice
def test_squeeze_of_a_wrong_axis_is_an_error_naming_the_node(axes):
    from graphopt.errors import KernelFailed
    model = model_of([helper.make_node("Squeeze", ["x", "axes"], ["y"], name="drop")],
                     [vi("x", TensorProto.FLOAT, [None, 1, None, 1])], [vi("y", TensorProto.FLOAT, None)],
                     [numpy_helper.from_array(np.array(axes, np.int64), "axes")])
    with pytest.raises(KernelFailed, match="drop"):
        Session(model).run(None, {"x": np.zeros((1, 1, 5, 1), np.float32)})
