"""fold-shapes: Shape/Size/Gather/Slice over known dims become constants; symbolic dims stay."""
import numpy as np
import onnx.numpy_helper

from passcheck import assert_same_outputs, check, check_pass, hits, ops, optimize, parse

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
FOLD = ["fold-shapes"]
INFER_FOLD = ["infer-shapes", "fold-shapes"]


def constants(model):
    return [onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer]


def input_dims(model, name):
    vi = next(i for i in model.graph.input if i.name == name)
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_static_shape_folded():
    # y = Reshape(z, Shape(x)) with x:[2,3]  ->  y = Reshape(z, [2, 3])
    result = check_pass(H17 + """
        g (float[2,3] x, float[6] z) => (float[2,3] y) {
            s = Shape(x)
            y = Reshape(z, s)
        }""", FOLD, expect_ops=["Reshape"])
    assert constants(result.model) == [[2, 3]]


def test_shape_of_intermediate_needs_inferred_shape():
    text = H17 + """
        g (float[2,3] x, float[6] z) => (float[2,3] y) {
            r = Relu(x)
            s = Shape(r)
            y = Reshape(z, s)
        }"""
    check_pass(text, FOLD, expect_ops=["Relu", "Reshape", "Shape"])  # r's shape is not known yet
    check_pass(text, INFER_FOLD, expect_ops=["Relu", "Reshape"])


def test_symbolic_batch_dim_stays_known_dim_folds():
    # Shape(x)[0] with dim 'N' stays a node; Shape(x)[1] with dim 3 becomes the constant 3
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,3] y) <int64[1] i0 = {0}, int64[1] i1 = {1}> {
            s = Shape(x)
            d0 = Gather<axis = 0>(s, i0)
            d1 = Gather<axis = 0>(s, i1)
            t = Concat<axis = 0>(d0, d1)
            r = Reshape(x, t)
            y = Relu(r)
        }""")
    result = optimize(model, FOLD)
    assert ops(result.model) == ["Concat", "Gather", "Relu", "Reshape", "Shape"]
    gather = next(n for n in result.model.graph.node if n.op_type == "Gather")
    assert gather.input[1] == "i0"
    assert [3] in constants(result.model)
    assert input_dims(result.model, "x") == ["N", 3]
    check(result.model)
    # several batch sizes: a baked-in N would break all but one
    assert_same_outputs(model, result.model, feeds=[{"x": np.arange(3 * n, dtype=np.float32).reshape(n, 3) - 4}
                                                    for n in (1, 2, 5)])
    assert hits(result, "fold-shapes")["gather-known-dim"] == 1


def test_symbolic_dims_stay_symbolic_through_infer_and_fold():
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,3] y) <int64 i1 = {1}> {
            r = Relu(x)
            s = Shape(r)
            d1 = Gather(s, i1)
            c = Cast<to = 1>(d1)
            y = Mul(r, c)
        }""")
    result = optimize(model, INFER_FOLD)
    # only the known dim 1 is read, so Gather(Shape(r), 1) folds and Shape(r) loses its last user
    assert ops(result.model) == ["Cast", "Mul", "Relu"]
    assert input_dims(result.model, "x") == ["N", 3]
    out = result.model.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_param == "N"
    check(result.model)
    assert_same_outputs(model, result.model, feeds=[{"x": np.ones((n, 3), np.float32)} for n in (1, 4)])


def test_shape_of_symbolic_input_stays():
    check_pass(H17 + """
        g (float[N,3] x, float[M] z) => (float[N,3] y) {
            s = Shape(x)
            y = Reshape(z, s)
        }""", FOLD, expect_ops=["Reshape", "Shape"],
        feeds=[{"x": np.zeros((n, 3), np.float32), "z": np.arange(3 * n, dtype=np.float32)} for n in (2, 3)])


def test_negative_gather_index():
    result = check_pass(H17 + """
        g (float[N,3,4] x) => (float[N,3,4] y) <int64 last = {-1}> {
            s = Shape(x)
            d = Gather(s, last)
            c = Cast<to = 1>(d)
            y = Mul(x, c)
        }""", FOLD, expect_ops=["Cast", "Mul"], dims={"N": 2})
    assert 4 in constants(result.model)


def test_gather_of_symbolic_dim_by_negative_index_stays():
    check_pass(H17 + """
        g (float[3,N] x) => (float[3,N] y) <int64 last = {-1}> {
            s = Shape(x)
            d = Gather(s, last)
            c = Cast<to = 1>(d)
            y = Mul(x, c)
        }""", FOLD, expect_ops=["Cast", "Gather", "Mul", "Shape"],
        feeds=[{"x": np.ones((3, n), np.float32)} for n in (1, 5)])


def test_shape_with_start_end():
    # opset 15: Shape<start=1>(x:[N,3,4]) = [3, 4]
    result = check_pass('<ir_version: 8, opset_import: ["" : 15]>' + """
        g (float[N,3,4] x, float[12] z) => (float[3,4] y) {
            s = Shape<start = 1>(x)
            y = Reshape(z, s)
        }""", FOLD, expect_ops=["Reshape"], dims={"N": 2})
    assert constants(result.model) == [[3, 4]]


def test_shape_with_negative_end_excluding_symbolic_dim_folded():
    check_pass('<ir_version: 8, opset_import: ["" : 15]>' + """
        g (float[3,N] x, float[3] z) => (float[3] y) {
            s = Shape<end = -1>(x)  # [3]: the symbolic last dim is cut off
            y = Reshape(z, s)
        }""", FOLD, expect_ops=["Reshape"], dims={"N": 2})


def test_shape_with_end_including_symbolic_dim_stays():
    check_pass('<ir_version: 8, opset_import: ["" : 15]>' + """
        g (float[3,N] x, float[M] z) => (float[3,N] y) {
            s = Shape<start = -2>(x)
            y = Reshape(z, s)
        }""", FOLD, expect_ops=["Reshape", "Shape"],
        feeds=[{"x": np.zeros((3, n), np.float32), "z": np.arange(3 * n, dtype=np.float32)} for n in (1, 4)])


def test_slice_of_shape_over_known_dims_folded():
    # Shape(x:[N,3,4])[1:3] -> [3, 4]
    result = check_pass(H17 + """
        g (float[N,3,4] x) => (float[N,12] y) <int64[1] one = {1}, int64[1] three = {3}, int64[1] m1 = {-1}> {
            s = Shape(x)
            tail = Slice(s, one, three)
            p = ReduceProd<keepdims = 1>(tail)
            t = Concat<axis = 0>(m1, p)
            y = Reshape(x, t)
        }""", FOLD, expect_ops=["Concat", "ReduceProd", "Reshape"],
        feeds=[{"x": np.ones((n, 3, 4), np.float32) * n} for n in (1, 3)])
    assert [3, 4] in constants(result.model)


def test_slice_of_shape_over_symbolic_dim_stays():
    check_pass(H17 + """
        g (float[N,3] x) => (float[N,3] y) <int64[1] zero = {0}, int64[1] one = {1}, int64[1] three = {3}> {
            s = Shape(x)
            head = Slice(s, zero, one)
            t = Concat<axis = 0>(head, three)
            y = Reshape(x, t)
        }""", FOLD, expect_ops=["Concat", "Reshape", "Shape", "Slice"],
        feeds=[{"x": np.ones((n, 3), np.float32)} for n in (1, 3)])


def test_size_static_folded_symbolic_stays():
    result = check_pass(H17 + """
        g (float[2,3] x, float[N] z) => (int64 a, int64 b) {
            a = Size(x)
            b = Size(z)
        }""", FOLD, expect_ops=["Identity", "Size"], dims={"N": 5})
    assert 6 in constants(result.model)
    assert [o.name for o in result.model.graph.output] == ["a", "b"]


def test_shape_feeding_graph_output_keeps_output_name():
    model = parse(H17 + """
        g (float[2,3] x) => (int64[2] s) { s = Shape(x) }""")
    result = optimize(model, FOLD)
    check(result.model)
    assert [o.name for o in result.model.graph.output] == ["s"]
    assert_same_outputs(model, result.model)


def test_shape_of_unknown_rank_value_stays():
    # no shape inference ran: the intermediate's shape is unknown
    check_pass(H17 + """
        g (float[2,3] x) => (int64[2] y) <int64[2] zero = {0, 0}> {
            r = Relu(x)
            s = Shape(r)
            y = Add(s, zero)
        }""", FOLD, expect_ops=["Add", "Relu", "Shape"])


def test_shape_folding_inside_if_branch():
    check_pass(H17 + """
        g (bool c, float[2,3] x, float[6] z) => (float[2,3] y) {
            y = If(c) <then_branch = then_g () => (float[2,3] t) {
                            s = Shape(x)
                            t = Reshape(z, s)
                        }, else_branch = else_g () => (float[2,3] e) { e = Neg(x) }>
        }""", FOLD, expect_ops=["If"], nested_ops=["If", "Reshape", "Neg"],
        feeds=[{"c": np.array(c), "x": np.ones((2, 3), np.float32), "z": np.arange(6, dtype=np.float32)}
               for c in (True, False)])
