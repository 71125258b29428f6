"""eliminate-noops: ops that do nothing (Identity, inference Dropout, same-type Cast, x+0, x*1, ...)."""
import numpy as np
import pytest

from passcheck import check_pass, hits, ops, subgraph

H13 = '<ir_version: 8, opset_import: ["" : 13]>'
H14 = '<ir_version: 8, opset_import: ["" : 14]>'
H17 = '<ir_version: 8, opset_import: ["" : 17]>'
H18 = '<ir_version: 8, opset_import: ["" : 18]>'
NOOPS = ["eliminate-noops"]
INFER_NOOPS = ["infer-shapes", "eliminate-noops"]


# ---------------------------------------------------------------- Identity and graph output names

def test_identity_chain_removed():
    # y = Relu(Identity(Identity(x)))  ->  y = Relu(x)
    result = check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) {
            a = Identity(x)
            b = Identity(a)
            y = Relu(b)
        }""", NOOPS, expect_ops=["Relu"])
    assert hits(result, "eliminate-noops")["identity"] == 2


def test_identity_feeding_output_removed_output_name_kept():
    # r = Relu(x); y = Identity(r)  ->  y = Relu(x)  (the output is still called y)
    result = check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            y = Identity(r)
        }""", NOOPS, expect_ops=["Relu"])
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert result.model.graph.node[0].output[0] == "y"


def test_identity_from_input_to_output_stays():
    # y = Identity(x): x cannot be renamed (graph input), so the Identity carries the output name
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) { y = Identity(x) }""", NOOPS, expect_ops=["Identity"])


def test_identity_between_two_outputs_stays():
    # a and b are both graph outputs: removing the Identity would lose one of the two names
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] a, float[2,3] b) {
            a = Relu(x)
            b = Identity(a)
        }""", NOOPS, expect_ops=["Identity", "Relu"])


def test_identity_inside_if_branch_removed():
    result = check_pass(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            y = If(c) <then_branch = then_g () => (float[3] t) {
                            i = Identity(x)
                            t = Neg(i)
                        }, else_branch = else_g () => (float[3] e) { e = Abs(x) }>
        }""", NOOPS, expect_ops=["If"], nested_ops=["If", "Neg", "Abs"],
        feeds=[{"c": np.array(c), "x": np.array([1.0, -2.0, 3.0], np.float32)} for c in (True, False)])
    assert ops(subgraph(result.model, "If", "then_branch")) == ["Neg"]


# ---------------------------------------------------------------- Dropout

def test_inference_dropout_removed():
    check_pass(H13 + """
        g (float[2,3] x) => (float[2,3] y) {
            d = Dropout(x)
            y = Relu(d)
        }""", NOOPS, expect_ops=["Relu"])


def test_dropout_with_unused_mask_removed():
    check_pass(H13 + """
        g (float[2,3] x) => (float[2,3] y) {
            d, mask = Dropout(x)
            y = Relu(d)
        }""", NOOPS, expect_ops=["Relu"])


def test_dropout_with_used_mask_stays():
    check_pass(H13 + """
        g (float[2,3] x) => (float[2,3] y, bool[2,3] mask) {
            d, mask = Dropout(x)
            y = Relu(d)
        }""", NOOPS, expect_ops=["Dropout", "Relu"])


def test_dropout_in_training_mode_stays():
    # training_mode = true (ratio 0 keeps the output deterministic for the comparison)
    check_pass(H13 + """
        g (float[2,3] x) => (float[2,3] y) <float ratio = {0.0}, bool train = {1}> {
            d = Dropout(x, ratio, train)
            y = Relu(d)
        }""", NOOPS, expect_ops=["Dropout", "Relu"])


def test_dropout_with_constant_false_training_mode_removed():
    check_pass(H13 + """
        g (float[2,3] x) => (float[2,3] y) <float ratio = {0.5}, bool train = {0}> {
            d = Dropout(x, ratio, train)
            y = Relu(d)
        }""", NOOPS, expect_ops=["Relu"])


# ---------------------------------------------------------------- Cast / CastLike

def test_cast_to_same_type_removed():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) {
            c = Cast<to = 1>(x)
            y = Relu(c)
        }""", NOOPS, expect_ops=["Relu"])


def test_cast_same_type_on_intermediate_needs_inferred_dtype():
    text = H17 + """
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            c = Cast<to = 1>(r)
            y = Neg(c)
        }"""
    check_pass(text, NOOPS, expect_ops=["Cast", "Neg", "Relu"])  # dtype of r unknown: stays
    check_pass(text, INFER_NOOPS, expect_ops=["Neg", "Relu"])


def test_cast_to_different_type_stays():
    check_pass(H17 + """
        g (float[2,3] x) => (int64[2,3] y) {
            r = Relu(x)
            y = Cast<to = 7>(r)
        }""", INFER_NOOPS, expect_ops=["Cast", "Relu"])


def test_cast_float_to_double_stays():
    check_pass(H17 + """
        g (float[2,3] x) => (double[2,3] y) {
            c = Cast<to = 11>(x)
            y = Neg(c)
        }""", NOOPS, expect_ops=["Cast", "Neg"])


def test_castlike_same_type_removed_and_different_type_stays():
    check_pass(H17 + """
        g (float[2,3] x, float[1] f, int32[1] i) => (float[2,3] y, int32[2,3] z) {
            a = CastLike(x, f)
            y = Neg(a)
            z = CastLike(x, i)
        }""", NOOPS, expect_ops=["CastLike", "Neg"])


# ---------------------------------------------------------------- Reshape / Expand / Transpose

def test_reshape_to_same_static_shape_removed():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) <int64[2] s = {2, 3}> {
            r = Reshape(x, s)
            y = Relu(r)
        }""", NOOPS, expect_ops=["Relu"])


def test_reshape_with_minus_one_to_same_shape_removed():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) <int64[2] s = {-1, 3}> {
            r = Reshape(x, s)
            y = Relu(r)
        }""", NOOPS, expect_ops=["Relu"])


def test_reshape_changing_static_shape_stays():
    check_pass(H17 + """
        g (float[2,3] x) => (float[3,2] y) <int64[2] s = {3, 2}> {
            r = Reshape(x, s)
            y = Relu(r)
        }""", NOOPS, expect_ops=["Relu", "Reshape"])


def test_reshape_symbolic_copy_dims_removed():
    # [0, -1] on [N, 6]: dim 0 copied, the rest inferred -> [N, 6] for every N
    check_pass(H17 + """
        g (float[N,6] x) => (float[N,6] y) <int64[2] s = {0, -1}> {
            r = Reshape(x, s)
            y = Relu(r)
        }""", NOOPS, expect_ops=["Relu"], feeds=[{"x": np.ones((n, 6), np.float32) * n} for n in (1, 3)])


def test_reshape_symbolic_that_changes_shape_stays():
    # [-1, 3] on [N, 6] gives [2N, 3]
    check_pass(H17 + """
        g (float[N,6] x) => (float[M,3] y) <int64[2] s = {-1, 3}> {
            r = Reshape(x, s)
            y = Relu(r)
        }""", NOOPS, expect_ops=["Relu", "Reshape"], dims={"N": 3})


def test_reshape_allowzero_with_zero_dim_stays():
    # allowzero=1: a 0 in the target is a real 0-sized dim, not "copy the input dim":
    # [2,0] -> [0,0] (read as "copy", the target would look like [2,0], the input shape)
    check_pass(H14 + """
        g (float[2,0] x) => (float[0,0] z) <int64[2] s = {0, 0}> {
            r = Reshape<allowzero = 1>(x, s)
            z = Relu(r)
        }""", NOOPS, expect_ops=["Relu", "Reshape"])


def test_expand_to_broadcastable_ones_removed_and_growing_expand_stays():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y, float[4,2,3] z) <int64[1] one = {1}, int64[3] big = {4, 2, 3}> {
            e = Expand(x, one)
            y = Relu(e)
            z = Expand(x, big)
        }""", NOOPS, expect_ops=["Expand", "Relu"])


def test_expand_that_broadcasts_a_one_dim_stays():
    check_pass(H17 + """
        g (float[2,1] x) => (float[2,3] y) <int64[2] s = {2, 3}> {
            e = Expand(x, s)
            y = Relu(e)
        }""", NOOPS, expect_ops=["Expand", "Relu"])


def test_transpose_identity_perm_removed_others_stay():
    check_pass(H17 + """
        g (float[2,3,4] x) => (float[2,3,4] y, float[4,3,2] z, float[3,2,4] w) {
            t = Transpose<perm = [0, 1, 2]>(x)
            y = Relu(t)
            z = Transpose(x)
            w = Transpose<perm = [1, 0, 2]>(x)
        }""", NOOPS, expect_ops=["Relu", "Transpose", "Transpose"])


# ---------------------------------------------------------------- Slice / Pad / Concat / Split

def test_slice_everything_removed_partial_slice_stays():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y, float[2,2] z)
          <int64[1] zero = {0}, int64[1] big = {9223372036854775807}, int64[1] two = {2}, int64[1] ax = {1}> {
            s = Slice(x, zero, big, ax)
            y = Relu(s)
            z = Slice(x, zero, two, ax)
        }""", NOOPS, expect_ops=["Relu", "Slice"])


def test_slice_with_step_stays():
    check_pass(H17 + """
        g (float[2,4] x) => (float[2,2] y)
          <int64[1] zero = {0}, int64[1] big = {100}, int64[1] ax = {1}, int64[1] st = {2}> {
            s = Slice(x, zero, big, ax, st)
            y = Relu(s)
        }""", NOOPS, expect_ops=["Relu", "Slice"])


def test_pad_zero_removed_nonzero_stays():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y, float[2,5] z) <int64[4] p0 = {0, 0, 0, 0}, int64[4] p1 = {0, 1, 0, 1}> {
            a = Pad(x, p0)
            y = Relu(a)
            z = Pad(x, p1)
        }""", NOOPS, expect_ops=["Pad", "Relu"])


def test_single_input_concat_and_single_output_split_removed():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) {
            c = Concat<axis = 0>(x)
            s = Split<axis = 1>(c)
            y = Relu(s)
        }""", NOOPS, expect_ops=["Relu"])


def test_two_way_split_stays():
    check_pass(H18 + """
        g (float[2,4] x) => (float[2,2] a, float[2,2] b) {
            a, b = Split<axis = 1, num_outputs = 2>(x)
        }""", NOOPS, expect_ops=["Split"])


# ---------------------------------------------------------------- arithmetic identities

@pytest.mark.parametrize("expr", ["Add(x, zero)", "Add(zero, x)", "Sub(x, zero)", "Mul(x, one)", "Mul(one, x)",
                                  "Div(x, one)"])
def test_arithmetic_identity_removed(expr):
    check_pass(H17 + f"""
        g (float[2,3] x) => (float[2,3] y) <float zero = {{0.0}}, float one = {{1.0}}> {{
            a = {expr}
            y = Relu(a)
        }}""", NOOPS, expect_ops=["Relu"])


@pytest.mark.parametrize("expr", ["Sub(zero, x)", "Div(one, x)", "Add(x, half)", "Mul(x, half)"])
def test_non_identity_arithmetic_stays(expr):
    op = expr.split("(")[0]
    check_pass(H17 + f"""
        g (float[2,3] x) => (float[2,3] y) <float zero = {{0.0}}, float one = {{1.0}}, float half = {{0.5}}> {{
            a = {expr}
            y = Relu(a)
        }}""", NOOPS, expect_ops=[op, "Relu"])


def test_add_zero_that_broadcasts_to_a_larger_shape_stays():
    # x:[3] + zeros:[2,3] is [2,3]: removing it would change the output shape
    check_pass(H17 + """
        g (float[3] x) => (float[2,3] y) <float[2,3] zeros = {0, 0, 0, 0, 0, 0}> {
            a = Add(x, zeros)
            y = Relu(a)
        }""", NOOPS, expect_ops=["Add", "Relu"])


def test_mul_one_that_broadcasts_a_size_one_dim_stays():
    # x:[2,1] * ones:[1,3] is [2,3]
    check_pass(H17 + """
        g (float[2,1] x) => (float[2,3] y) <float[1,3] ones = {1, 1, 1}> {
            a = Mul(x, ones)
            y = Relu(a)
        }""", NOOPS, expect_ops=["Mul", "Relu"])


def test_add_zero_with_same_shape_constant_removed():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) <float[1,3] zeros = {0, 0, 0}> {
            a = Add(x, zeros)
            y = Relu(a)
        }""", NOOPS, expect_ops=["Relu"])


def test_add_zero_on_symbolic_input_with_ones_shaped_constant_removed():
    check_pass(H17 + """
        g (float[N,3] x) => (float[N,3] y) <float[1,1] zeros = {0}> {
            a = Add(x, zeros)
            y = Relu(a)
        }""", NOOPS, expect_ops=["Relu"], feeds=[{"x": np.full((n, 3), -n, np.float32)} for n in (1, 4)])


def test_add_zero_of_unknown_rank_stays_until_shapes_are_inferred():
    text = H17 + """
        g (float[2,3] x) => (float[2,3] y) <float zero = {0.0}> {
            r = Neg(x)
            a = Add(r, zero)
            y = Relu(a)
        }"""
    check_pass(text, NOOPS, expect_ops=["Add", "Neg", "Relu"])
    check_pass(text, INFER_NOOPS, expect_ops=["Neg", "Relu"])


def test_add_zero_feeding_output_from_input_stays():
    # y = x + 0 with x a graph input: removing the Add would need an Identity (no gain)
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) <float zero = {0.0}> { y = Add(x, zero) }""",
               NOOPS, expect_ops=["Add"])


def test_integer_add_zero_removed():
    check_pass(H17 + """
        g (int64[2,3] x) => (int64[2,3] y) <int64 zero = {0}> {
            a = Add(x, zero)
            y = Neg(a)
        }""", NOOPS, expect_ops=["Neg"])


def test_noops_collapse_to_fixed_point_and_output_keeps_name():
    # y = Identity(Cast<float>(Relu(x) * 1 + 0))  ->  y = Relu(x)
    result = check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y) <float zero = {0.0}, float one = {1.0}> {
            r = Relu(x)
            m = Mul(r, one)
            a = Add(m, zero)
            c = Cast<to = 1>(a)
            y = Identity(c)
        }""", INFER_NOOPS, expect_ops=["Relu"])
    assert [o.name for o in result.model.graph.output] == ["y"]


def test_removed_noop_with_two_consumers():
    check_pass(H17 + """
        g (float[2,3] x) => (float[2,3] y, float[2,3] z) {
            i = Identity(x)
            y = Relu(i)
            z = Neg(i)
        }""", NOOPS, expect_ops=["Neg", "Relu"])


def test_branch_output_identity_of_outer_value_stays_of_inner_value_goes():
    # then: t = Identity(Neg(x)) -> t = Neg(x);  else: e = Identity(x) (x is outer: must stay)
    result = check_pass(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            y = If(c) <then_branch = then_g () => (float[3] t) {
                            n = Neg(x)
                            t = Identity(n)
                        }, else_branch = else_g () => (float[3] e) { e = Identity(x) }>
        }""", NOOPS, expect_ops=["If"], nested_ops=["If", "Neg", "Identity"],
        feeds=[{"c": np.array(c), "x": np.array([1.0, -2.0, 3.0], np.float32)} for c in (True, False)])
    then_g = subgraph(result.model, "If", "then_branch")
    assert ops(then_g) == ["Neg"] and [o.name for o in then_g.output] == ["t"]
    assert ops(subgraph(result.model, "If", "else_branch")) == ["Identity"]
