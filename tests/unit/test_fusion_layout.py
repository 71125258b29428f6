"""simplify-layout: Transpose/Transpose, Reshape/Reshape, Squeeze/Unsqueeze pairs."""
import numpy as np
import pytest

from fusion_check import assert_fused, assert_refused, tensor

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
    text = squeeze_pair("Squeeze", "Unsqueeze", [0], [2], y="float[1,3,4] y")
    assert_refused(text, P, "squeeze-unsqueeze", "axes differ")
