"""fold-constants: evaluate nodes whose inputs are all constant; size cap; never input-dependent."""
import numpy as np
import onnx
import onnx.numpy_helper

from passcheck import assert_same_outputs, check, check_pass, hits, ops, optimize, parse, subgraph

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
FOLD = ["fold-constants"]


def initializer(model, name=None):
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits if name is None else inits[name]


def test_constant_chain_folded_into_one_initializer():
    # y = x * ((a + b) * 2)  ->  y = x * c  with c = [8, 12] (spec: (1+3)*2, (2+4)*2)
    result = check_pass(H17 + """
        g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}, float two = {2.0}> {
            s = Add(a, b)
            t = Mul(s, two)
            y = Mul(x, t)
        }""", FOLD, expect_ops=["Mul"])
    (value,) = initializer(result.model).values()
    np.testing.assert_array_equal(value, np.array([8.0, 12.0], np.float32))
    assert hits(result, "fold-constants")["nodes_folded"] == 2


def test_constant_node_becomes_initializer():
    result = check_pass(H17 + """
        g (float[2] x) => (float[2] y) {
            c = Constant<value = float[2] {5.0, 6.0}>()
            y = Add(x, c)
        }""", FOLD, expect_ops=["Add"])
    assert len(result.model.graph.initializer) == 1


def test_constant_node_value_ints_folded_through_reshape_shape():
    check_pass(H17 + """
        g (float[2,3] x) => (float[3,2] y) {
            s = Constant<value_ints = [3, 2]>()
            y = Reshape(x, s)
        }""", FOLD, expect_ops=["Reshape"])


def test_integer_shape_arithmetic_folded():
    # Concat([2], [3]) -> [2, 3]; ReduceProd -> 6
    result = check_pass(H17 + """
        g (float[6] x) => (float[2,3] y) <int64[1] a = {2}, int64[1] b = {3}> {
            s = Concat<axis = 0>(a, b)
            y = Reshape(x, s)
        }""", FOLD, expect_ops=["Reshape"])
    assert sorted(v.tolist() for v in initializer(result.model).values()) == [[2, 3]]


def test_values_depending_on_graph_inputs_never_folded():
    # Relu(x), Shape(x), x + c all depend on the input
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y, int64[2] s) <float c = {1.0}> {
            r = Relu(x)
            y = Add(r, c)
            s = Shape(x)
        }""", FOLD, expect_ops=["Add", "Relu", "Shape"])


def test_mixed_node_folds_only_its_constant_part():
    # (a + b) folds, x * (a + b) stays
    check_pass(H17 + """
        g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}> {
            s = Add(a, b)
            y = Mul(x, s)
        }""", FOLD, expect_ops=["Mul"])


def test_folded_value_that_is_a_graph_output_keeps_its_name():
    model = parse(H17 + """
        g (float[2] x) => (float[2] y, float[2] k) <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}> {
            k = Add(a, b)
            y = Mul(x, k)
        }""")
    result = optimize(model, FOLD)
    check(result.model)
    assert [o.name for o in result.model.graph.output] == ["y", "k"]
    assert_same_outputs(model, result.model)


def session_outputs(model, feed):
    import graphopt
    return graphopt.Session(model).run(None, feed)


def test_constant_graph_output_becomes_an_initializer_of_its_name():
    # k = 2 * 3 is a graph output read by nothing: it becomes the initializer "k" (as onnxsim writes it)
    result = check_pass(H17 + """
        g (float[2] x) => (float[2] y, float k) <float c1 = {2.0}, float c2 = {3.0}> {
            y = Relu(x)
            k = Mul(c1, c2)
        }""", FOLD, expect_ops=["Relu"])  # checker + ORT on the original
    assert [o.name for o in result.model.graph.output] == ["y", "k"]
    assert initializer(result.model, "k") == np.float32(6.0)  # spec: 2 * 3
    feed = {"x": np.array([-1.0, 2.0], np.float32)}
    y, k = session_outputs(result.model, feed)  # graphopt's runtime reads the output from the initializer
    np.testing.assert_array_equal(y, [0.0, 2.0])
    assert k == np.float32(6.0) and k.dtype == np.float32


def test_constant_node_that_is_a_graph_output_becomes_an_initializer():
    result = check_pass(H17 + """
        g (float[2] x) => (float[2] y, int64[2] k) {
            y = Neg(x)
            k = Constant<value = int64[2] {4, 5}>()
        }""", FOLD, expect_ops=["Neg"])
    assert [o.name for o in result.model.graph.output] == ["y", "k"]
    np.testing.assert_array_equal(initializer(result.model, "k"), [4, 5])


def test_constant_graph_output_over_fold_limit_stays_a_node():
    # 64x64 float (16 KiB) over a 4 KiB cap: the output keeps its producer
    check_pass(H17 + """
        g (float[2] x) => (float[2] y, float[64,64] k) <int64[2] shape = {64, 64}> {
            y = Neg(x)
            k = ConstantOfShape<value = float[1] {0.5}>(shape)
        }""", FOLD, fold_limit=4096, expect_ops=["ConstantOfShape", "Neg"])


def test_constant_branch_output_of_if_becomes_an_initializer():
    model = parse(H17 + """
        g (bool c, float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}> {
            y = If(c) <then_branch = t () => (float[2] ty) { ty = Add(a, a) },
                       else_branch = e () => (float[2] ey) { ey = Neg(x) }>
        }""")
    result = optimize(model, FOLD)
    check(result.model)
    then = subgraph(result.model, "If", "then_branch")
    assert len(then.node) == 0 and [t.name for t in then.initializer] == [then.output[0].name]
    for flag in (True, False):
        feed = {"c": np.array(flag), "x": np.array([1.0, -3.0], np.float32)}
        assert_same_outputs(model, result.model, feeds=[feed])
        np.testing.assert_array_equal(session_outputs(result.model, feed)[0], [2.0, 4.0] if flag else [-1.0, 3.0])


def test_constant_of_shape_over_fold_limit_stays():
    # 64x64 float = 16 KiB: over a 4 KiB limit it stays, and so does everything built on it
    text = H17 + """
        g (float[64,64] x) => (float[64,64] y) <int64[2] shape = {64, 64}> {
            z = ConstantOfShape<value = float[1] {0.5}>(shape)
            e = Exp(z)
            y = Add(x, e)
        }"""
    small = check_pass(text, FOLD, fold_limit=4096, expect_ops=["Add", "ConstantOfShape", "Exp"])
    assert hits(small, "fold-constants")["skipped_over_limit"] == 2
    big = check_pass(text, FOLD, fold_limit=1 << 20, expect_ops=["Add"])
    np.testing.assert_allclose(next(iter(initializer(big.model).values())), np.full((64, 64), np.exp(0.5)),
                               rtol=1e-6)


def test_fold_limit_counts_the_output_not_the_inputs():
    # a 16 KiB constant reduced to a scalar: the result is tiny, the reduction itself folds
    text = H17 + """
        g (float x) => (float y) <int64[2] shape = {64, 64}> {
            z = ConstantOfShape<value = float[1] {0.5}>(shape)
            s = ReduceSum<keepdims = 0>(z)
            y = Add(x, s)
        }"""
    check_pass(text, FOLD, fold_limit=4096, expect_ops=["Add", "ConstantOfShape", "ReduceSum"])
    result = check_pass(text, FOLD, expect_ops=["Add"])
    assert float(next(iter(initializer(result.model).values()))) == 64 * 64 * 0.5


def test_dequantize_linear_on_constant_weights_not_folded():
    # folding would turn int8 weights back into float
    result = check_pass(H17 + """
        g (float[2,3] x) => (float[2,2] y) <int8[3,2] w = {1, -2, 3, -4, 5, -6}, float s = {0.5}, int8 zp = {1}> {
            dq = DequantizeLinear(w, s, zp)
            y = MatMul(x, dq)
        }""", FOLD, expect_ops=["DequantizeLinear", "MatMul"])
    assert initializer(result.model, "w").dtype == np.int8


def test_quantize_linear_on_constants_not_folded():
    check_pass(H17 + """
        g (float[3] x) => (float[3] y) <float[3] w = {1.0, 2.0, 3.0}, float s = {0.5}, uint8 zp = {10}> {
            q = QuantizeLinear(w, s, zp)
            d = DequantizeLinear(q, s, zp)
            y = Add(x, d)
        }""", FOLD, expect_ops=["Add", "DequantizeLinear", "QuantizeLinear"])


def test_random_ops_not_folded():
    result = optimize(parse(H17 + """
        g (float[2,3] x) => (float[2,3] y) {
            r = RandomUniform<shape = [2, 3]>()
            y = Add(x, r)
        }"""), FOLD)
    assert ops(result.model) == ["Add", "RandomUniform"]
    check(result.model)


def test_if_with_constant_condition_not_folded_but_its_branches_are():
    result = check_pass(H17 + """
        g (float[2] x) => (float[2] y) <bool c = {1}, float[2] a = {1.0, 2.0}> {
            y = If(c) <then_branch = then_g () => (float[2] t) {
                            n = Neg(a)
                            t = Add(x, n)
                        }, else_branch = else_g () => (float[2] e) { e = Sub(x, a) }>
        }""", FOLD, expect_ops=["If"])
    assert ops(subgraph(result.model, "If", "then_branch")) == ["Add"]


def test_outer_constant_chain_used_only_inside_branch_folded():
    check_pass(H17 + """
        g (bool c, float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}> {
            n = Neg(a)
            y = If(c) <then_branch = then_g () => (float[2] t) { t = Add(x, n) },
                       else_branch = else_g () => (float[2] e) { e = Sub(x, n) }>
        }""", FOLD, expect_ops=["If"],
        feeds=[{"c": np.array(c), "x": np.array([1.0, -2.0], np.float32)} for c in (True, False)])


def test_optional_empty_input_folded():
    # Clip(a, <no min>, 1.5) on constants
    result = check_pass(H17 + """
        g (float[3] x) => (float[3] y) <float[3] a = {1.0, 2.0, -3.0}, float hi = {1.5}> {
            c = Clip(a, , hi)
            y = Add(x, c)
        }""", FOLD, expect_ops=["Add"])
    np.testing.assert_array_equal(next(iter(initializer(result.model).values())), [1.0, 1.5, -3.0])


def test_multi_output_constant_node_folded():
    check_pass('<ir_version: 8, opset_import: ["" : 18]>' + """
        g (float[2] x) => (float[2] y) <float[4] a = {1.0, 2.0, 3.0, 4.0}> {
            p, q = Split<num_outputs = 2>(a)
            s = Add(x, p)
            y = Mul(s, q)
        }""", FOLD, expect_ops=["Add", "Mul"])


def test_custom_domain_op_on_constants_not_folded():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.custom" : 1]>
        g (float[2] x) => (float[2] y) <float[2] a = {1.0, 2.0}> {
            c = com.custom.Foo(a)
            y = Add(x, c)
        }""", check=False)
    result = optimize(model, FOLD)
    assert ops(result.model) == ["Add", "Foo"]


def test_int64_and_bool_results_keep_their_dtype():
    result = check_pass(H17 + """
        g (int64[2] x, bool[2] b) => (int64[2] y, bool[2] z) <int64[2] a = {3, 4}, int64[2] k = {3, 5}> {
            s = Mul(a, a)
            y = Add(x, s)
            eq = Equal(a, k)
            z = And(b, eq)
        }""", FOLD, expect_ops=["Add", "And"])
    dtypes = sorted(str(v.dtype) for v in initializer(result.model).values())
    assert dtypes == ["bool", "int64"]
