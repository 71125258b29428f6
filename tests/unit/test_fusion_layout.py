"""simplify-layout: Transpose/Transpose, Reshape/Reshape, Squeeze/Unsqueeze pairs."""
import numpy as np
import pytest
from fusion_check import assert_fused, assert_refused, rand, tensor

P = ["simplify-layout"]


def head(opset=13):
    return f'<ir_version: 8, opset_import: ["" : {opset}]>\n'


def two_transposes(p1, p2, out="float[2,5,4,3] y", extra_out=""):
    return head() + f"""g (float[2,3,4,5] x) => ({out}{extra_out})
{{
  r = Relu(x)
  t = Transpose<perm={p1}>(r)
  u = Transpose<perm={p2}>(t)
  y = Relu(u)
}}"""


def test_transposes_merge():
    out = assert_fused(two_transposes([0, 2, 3, 1], [0, 2, 1, 3]), P, "transpose-transpose",
                       ["Relu", "Transpose", "Relu"])
    assert list(out.graph.node[1].attribute[0].ints) == [0, 3, 2, 1]


def test_transposes_cancel():
    assert_fused(two_transposes([0, 2, 3, 1], [0, 3, 1, 2], out="float[2,3,4,5] y"), P, "transpose-transpose",
                 ["Relu", "Relu"])


def test_transposes_refuse_shared_intermediate():
    text = two_transposes([0, 2, 3, 1], [0, 2, 1, 3], extra_out=", float[2,4,5,3] t")
    assert_refused(text, P, "transpose-transpose", "graph output")


def default_then_swap(x, y):
    return head() + f"""g ({x}, int64[K] s) => ({y})
{{
  r = Reshape(x, s)
  t = Transpose(r)
  y = Transpose<perm=[1, 0]>(t)
}}"""


def test_transposes_merge_default_perm_of_known_rank():
    text = head() + """g (float[2,3] x) => (float[2,3] y)
{
  r = Relu(x)
  t = Transpose(r)
  y = Transpose<perm=[1, 0]>(t)
}"""
    assert_fused(text, P, "transpose-transpose", ["Relu"])


def test_transposes_refuse_default_perm_of_unknown_rank():
    assert_refused(default_then_swap("float[6] x", "float[?,?] y"), P, "transpose-transpose", "rank",
                   fixed={"s": np.array([2, 3])})


def two_reshapes(s1, s2, y, x="float[2,3,4] x", s1_input=False):
    inits = [tensor("s2", np.array(s2, np.int64), "int64")]
    if not s1_input:
        inits.append(tensor("s1", np.array(s1, np.int64), "int64"))
    ins = x + (", int64[2] s1" if s1_input else "")
    return head() + f"""g ({ins}) => ({y})
<{", ".join(inits)}>
{{
  r = Reshape(x, s1)
  y = Reshape(r, s2)
}}"""


@pytest.mark.parametrize("s1,s2,y", [([6, 4], [4, -1], "4,6"), ([6, 4], [0, 2, 2], "6,2,2"),
                                      ([0, 12], [0, 3, -1], "2,3,4")])
def test_reshapes_merge(s1, s2, y):
    assert_fused(two_reshapes(s1, s2, f"float[{y}] y"), P, "reshape-reshape", ["Reshape"])


def test_reshapes_merge_dynamic_inner_shape():
    assert_fused(two_reshapes(None, [4, 6], "float[4,6] y", s1_input=True), P, "reshape-reshape", ["Reshape"],
                 fixed={"s1": np.array([8, 3])})


def test_reshapes_refuse_copy_of_unknown_dim():
    assert_refused(two_reshapes(None, [0, -1], "float[?,?] y", x="float[N,12] x", s1_input=True), P, "reshape-reshape",
                   "copies dim 0 of the intermediate", fixed={"s1": np.array([24, -1])})


def squeeze_pair(outer, inner, a_in, a_out, opset=13, x="float[3,1,4] x", y="float[3,1,4] y"):
    if opset >= 13:
        inits = f"<{tensor('a', np.array(a_in, np.int64), 'int64')}, {tensor('b', np.array(a_out, np.int64), 'int64')}>"
        body = f"r = Relu(x)\n  t = {inner}(r, a)\n  u = {outer}(t, b)"
    else:
        inits = ""
        body = f"r = Relu(x)\n  t = {inner}<axes={a_in}>(r)\n  u = {outer}<axes={a_out}>(t)"
    return head(opset) + f"""g ({x}) => ({y})
{inits}
{{
  {body}
  y = Relu(u)
}}"""


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_cancel(opset):
    text = squeeze_pair("Squeeze", "Unsqueeze", [0, -1], [0, 4], opset)
    assert_fused(text, P, "squeeze-unsqueeze", ["Relu", "Relu"])


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_squeeze_cancel(opset):
    text = squeeze_pair("Unsqueeze", "Squeeze", [1], [-2], opset)
    assert_fused(text, P, "unsqueeze-squeeze", ["Relu", "Relu"])


def test_squeeze_pairs_refuse_different_axes():
    # symbolic dims, so reshape-like-pair cannot spell the result as one Reshape either
    text = squeeze_pair("Squeeze", "Unsqueeze", [0], [2], x="float[N,1,M] x", y="float[1,N,M] y")
    assert_refused(text, P, "squeeze-unsqueeze", "axes differ")


# ---------------------------------------------------------------- reshape-like pairs, Split/Concat, shape chains

def chain(x, y, body, inits=()):
    return head() + f"""g ({x}) => ({y})
{"<" + ", ".join(inits) + ">" if inits else ""}
{{
  {body}
}}"""


def i64(name, values):
    return tensor(name, np.array(values, np.int64), "int64")


@pytest.mark.parametrize("x,y,body,rule", [
    ("float[2,3,4] x", "float[2,12,1] y", "f = Flatten(x)\n  y = Unsqueeze(f, a)", "reshape-like-pair"),
    ("float[N,3,4] x", "float[N,12,1] y", "f = Flatten(x)\n  y = Unsqueeze(f, a)", "reshape-like-pair"),
    ("float[2,3,4] x", "float[6,4] y", "f = Flatten<axis=2>(x)\n  y = Reshape(f, s)", "reshape-reshape"),
])
def test_reshape_like_pairs(x, y, body, rule):
    text = chain(x, y, body, [i64("a", [2]), i64("s", [6, 4])])
    out = assert_fused(text, P, rule, ["Reshape"])
    assert out.graph.output[0].name == "y"


def test_reshape_like_pair_refuses_two_unknown_dims():
    text = chain("float[N,M,4] x", "float[1,N,?] y", "f = Flatten(x)\n  y = Unsqueeze(f, a)", [i64("a", [0])])
    assert_refused(text, P, "reshape-like-pair", "more than one symbolic dim")


def split_concat(order=(0, 1), split_axis=1, concat_axis=1, extra_out="", y="float[2,4,4] y"):
    return chain("float[2,4,4] x", y + extra_out,
                 f"r = Relu(x)\n  p0, p1 = Split<axis={split_axis}>(r, s)\n"
                 f"  y = Concat<axis={concat_axis}>({', '.join(f'p{i}' for i in order)})", [i64("s", [2, 2])])


def test_split_then_concat_of_all_parts():
    assert_fused(split_concat(concat_axis=-2), P, "split-concat", ["Relu"])


@pytest.mark.parametrize("kwargs,reason", [
    ({"order": (1, 0)}, "in order"),
    ({"split_axis": 2, "y": "float[2,8,2] y"}, "axes differ"),
    ({"extra_out": ", float[2,2,4] p0"}, "other consumers"),
])
def test_split_concat_refuses(kwargs, reason):
    assert_refused(split_concat(**kwargs), P, "split-concat", reason)


def shape_chain(x, y, parts, allowzero=0):
    body = ("sh = Shape(x)\n  b = Gather(sh, i0)\n  bu = Unsqueeze(b, a0)\n"
            f"  t = Concat<axis=0>({parts})\n  y = Reshape<allowzero={allowzero}>(x, t)")
    return head(14) + f"""g ({x}) => ({y})
<{tensor("i0", np.array(0), "int64")}, {i64("a0", [0])}, {i64("c2", [2])}, {i64("c12", [12])}, {i64("c4", [4])}>
{{
  {body}
}}"""


@pytest.mark.parametrize("x,y,parts,expect", [
    ("float[N,4,6] x", "float[N,2,12] y", "bu, c2, c12", [0, 2, 12]),   # batch copied in place -> 0
])
def test_reshape_shape_chain(x, y, parts, expect):
    out = assert_fused(shape_chain(x, y, parts), P, "reshape-shape-chain", ["Reshape"])
    shape = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert list(np.frombuffer(shape.raw_data, np.int64)) == expect


def test_reshape_shape_chain_other_position_becomes_minus_one():
    text = shape_chain("float[N,4,6] x", "float[4,N,6] y", "c4, bu, c2", 0).replace(
        'c2 = {2}', 'c2 = {6}')
    out = assert_fused(text, P, "reshape-shape-chain", ["Reshape"])
    shape = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert list(np.frombuffer(shape.raw_data, np.int64)) == [4, -1, 6]


def test_reshape_shape_chain_refuses_two_computed_entries():
    """[M, N, 6] from x[N, M, 6]: neither dim sits at its own position, and only one could be -1."""
    text = head(14) + f"""g (float[N,M,6] x) => (float[M,N,6] y)
<{tensor("i0", np.array(0), "int64")}, {tensor("i1", np.array(1), "int64")}, {i64("a0", [0])}, {i64("c6", [6])}>
{{
  sh = Shape(x)
  n = Gather(sh, i0)
  m = Gather(sh, i1)
  nu = Unsqueeze(n, a0)
  mu = Unsqueeze(m, a0)
  t = Concat<axis=0>(mu, nu, c6)
  y = Reshape(x, t)
}}"""
    assert_refused(text, P, "reshape-shape-chain", "more than one entry")


def sunk(inner_perm, outer_perm, op_line, y="float[2,3,4] y", inits=()):
    return chain("float[2,3,4] x", y, f"t = Transpose<perm={inner_perm}>(x)\n  {op_line}\n"
                                     f"  y = Transpose<perm={outer_perm}>(e)", inits)


@pytest.mark.parametrize("op_line,inits,left", [
    ("e = Relu(t)", (), "Relu"),
    ("e = Mul(t, k)", (tensor("k", np.array([[[0.5]]], np.float32)),), "Mul"),
])
def test_sink_transpose_cancels(op_line, inits, left):
    assert_fused(sunk([2, 0, 1], [1, 2, 0], op_line, inits=inits), P, "sink-transpose", [left])


def test_sink_transpose_merges_perms():
    out = assert_fused(sunk([2, 0, 1], [0, 2, 1], "e = Sigmoid(t)", y="float[4,3,2] y"), P, "sink-transpose",
                       ["Sigmoid", "Transpose"])
    assert list(out.graph.node[1].attribute[0].ints) == [2, 1, 0]


def test_sink_transpose_refuses_per_channel_constant():
    text = sunk([2, 0, 1], [1, 2, 0], "e = Add(t, k)", inits=(tensor("k", rand(4, 1, 1)),))
    assert_refused(text, P, "sink-transpose", "one-element constant")


@pytest.mark.parametrize("shape", [[0, 4], [-1, 4], [0, -1]])
def test_reshape_keeping_symbolic_shape_is_removed(shape):
    text = chain("float[N,4] x", "float[N,4] y", "r = Relu(x)\n  s2 = Reshape(r, s)\n  y = Relu(s2)", [i64("s", shape)])
    assert_fused(text, P, "reshape-noop", ["Relu", "Relu"])


def test_reshape_noop_refuses_other_dims():
    text = chain("float[N,4] x", "float[?,2] y", "r = Relu(x)\n  s2 = Reshape(r, s)\n  y = Relu(s2)", [i64("s", [-1, 2])])
    assert_refused(text, P, "reshape-noop", "not known to equal")


def two_transposed(pa, pb, a="float[2,3,4] a", b="float[2,1,4] b", y="float[4,2,3] y"):
    return chain(f"{a}, {b}", y, f"ta = Transpose<perm={pa}>(a)\n  tb = Transpose<perm={pb}>(b)\n  y = Add(ta, tb)")


def test_hoist_transpose_out_of_binary_op():
    """Broadcasting per axis commutes with the shared perm: one Transpose after the Add."""
    out = assert_fused(two_transposed([2, 0, 1], [2, 0, 1]), P, "hoist-transpose", ["Add", "Transpose"])
    assert list(out.graph.node[1].attribute[0].ints) == [2, 0, 1]


@pytest.mark.parametrize("pb,b,reason", [
    ([2, 1, 0], "float[3,2,4] b", "different perms"),
    ([1, 0], "float[3,2] b", "ranks"),
])
def test_hoist_transpose_refuses(pb, b, reason):
    y = "float[4,2,3] y"
    assert_refused(two_transposed([2, 0, 1], pb, b=b, y=y), P, "hoist-transpose", reason)
