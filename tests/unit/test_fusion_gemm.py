"""fuse-gemm (MatMul + bias -> Gemm, Transpose -> transA/transB) and div-to-mul."""
import numpy as np
import pytest
from fusion_check import assert_fused, assert_refused, hits, ops, rand, run, tensor

HEAD = '<ir_version: 8, opset_import: ["" : 13]>\n'


def matmul_add(x="float[4,8] x", y="float[4,5] y", bias=(5,)):
    return HEAD + f"""g ({x}) => ({y})
<{tensor("W", rand(8, 5))}, {tensor("b", rand(*bias, seed=3))}>
{{
  m = MatMul(x, W)
  y = Add(b, m)
}}"""


@pytest.mark.parametrize("x,y,bias", [
    ("float[4,8] x", "float[4,5] y", (5,)),
    ("float[N,8] x", "float[N,5] y", (1, 5)),
    ("float[4,8] x", "float[4,5] y", (4, 5)),
    ("float[N,8] x", "float[N,5] y", ()),
])
def test_matmul_add_to_gemm(x, y, bias):
    out = assert_fused(matmul_add(x, y, bias), ["fuse-gemm"], "matmul-add-to-gemm", ["Gemm"])
    assert out.graph.output[0].name == "y"


@pytest.mark.parametrize("x,y,bias,reason", [
    ("float[2,4,8] x", "float[2,4,5] y", (5,), "not known to be 2-D"),
    ("float[N,8] x", "float[N,5] y", (4, 1), "does not broadcast"),
])
def test_matmul_add_to_gemm_refuses(x, y, bias, reason):
    assert_refused(matmul_add(x, y, bias), ["fuse-gemm"], "matmul-add-to-gemm", reason)


@pytest.mark.parametrize("side,rule", [("a", "transpose-into-gemm-a"), ("b", "transpose-into-gemm-b")])
def test_transpose_into_gemm(side, rule):
    a_shape, b_shape = ("6,4", "6,5") if side == "a" else ("4,6", "5,6")
    call = "Gemm<transB=0>(t, b, c)" if side == "a" else "Gemm(a, t, c)"
    text = HEAD + f"""g (float[{a_shape}] a, float[{b_shape}] b) => (float[4,5] y)
<{tensor("c", rand(5))}>
{{
  t = Transpose({side})
  y = {call}
}}"""
    out = assert_fused(text, ["fuse-gemm"], rule, ["Gemm"])
    flag = {"a": "transA", "b": "transB"}[side]
    assert {x.name: x.i for x in out.graph.node[0].attribute}[flag] == 1


def test_transpose_into_gemm_refuses_identity_perm():
    text = HEAD + """g (float[4,6] a, float[6,5] b) => (float[4,5] y)
{
  t = Transpose<perm=[0, 1]>(b)
  y = Gemm(a, t)
}"""
    assert_refused(text, ["fuse-gemm"], "transpose-into-gemm-b", "perm is not [1, 0]")


def div_by(value, dtype="float"):
    return HEAD + f"""g ({dtype}[3,4] x) => ({dtype}[3,4] y)
<{tensor("c", np.array(value), dtype)}>
{{
  y = Div(x, c)
}}"""


@pytest.mark.parametrize("value", [2.0, 0.25, -8.0, [[1.0, 2.0, 4.0, 0.5]]])
def test_div_to_mul(value):
    assert_fused(div_by(value), ["div-to-mul"], "div-to-mul", ["Mul"], rtol=0, atol=0)


@pytest.mark.parametrize("value,dtype,reason", [
    (3.0, "float", "not a power of two"),
    ([2.0, 3.0, 4.0, 8.0], "float", "not a power of two"),
    (float("inf"), "float", "not finite"),
    (2, "int64", "not a floating-point division"),
])
def test_div_to_mul_refuses(value, dtype, reason):
    assert_refused(div_by(value, dtype), ["div-to-mul"], "div-to-mul", reason)


@pytest.mark.parametrize("side,rule", [("a", "transpose-into-matmul-a"), ("b", "transpose-into-matmul-b")])
def test_transpose_into_2d_matmul(side, rule):
    a_shape, b_shape = ("6,4", "6,5") if side == "a" else ("4,6", "5,6")
    call = "MatMul(t, b)" if side == "a" else "MatMul(a, t)"
    text = HEAD + f"""g (float[{a_shape}] a, float[{b_shape}] b) => (float[4,5] y)
{{
  t = Transpose({side})
  y = {call}
}}"""
    out = assert_fused(text, ["fuse-gemm"], rule, ["Gemm"])
    assert {x.name: x.i for x in out.graph.node[0].attribute} == {"transA" if side == "a" else "transB": 1}


def test_transpose_into_matmul_refuses_batched():
    text = HEAD + """g (float[2,6,4] a, float[2,6,5] b) => (float[2,4,5] y)
{
  t = Transpose<perm=[0, 2, 1]>(a)
  y = MatMul(t, b)
}"""
    assert_refused(text, ["fuse-gemm"], "transpose-into-matmul-a", "2-D")


def matmul_chain(x="float[N,8] x", y="float[N,3] y", w1=(8, 4), w2=(4, 3), between=""):
    body = "h = MatMul(x, W1)\n  y = MatMul(h, W2)" if not between else \
        f"h = MatMul(x, W1)\n  r = {between}(h)\n  y = MatMul(r, W2)"
    return HEAD + f"""g ({x}) => ({y})
<{tensor("W1", rand(*w1))}, {tensor("W2", rand(*w2, seed=2))}>
{{
  {body}
}}"""


@pytest.mark.parametrize("x,y", [("float[N,8] x", "float[N,3] y"), ("float[2,N,8] x", "float[2,N,3] y")])
def test_matmul_chain(x, y):
    assert_fused(matmul_chain(x, y), ["fuse-gemm"], "matmul-chain", ["MatMul"])


@pytest.mark.parametrize("kwargs,reason", [
    ({"x": "float[8] x", "y": "float[3] y"}, "rank-1"),
    ({"w1": (8, 2), "w2": (2, 16), "y": "float[N,16] y"}, "cost more"),
])
def test_matmul_chain_refuses(kwargs, reason):
    assert_refused(matmul_chain(**kwargs), ["fuse-gemm"], "matmul-chain", reason)


def test_matmul_chain_keeps_activation_between():
    """x @ W1 -> Relu -> @ W2 is not linear: nothing merges (the pattern never matches)."""
    _, out, report = run(matmul_chain(between="Relu"), ["fuse-gemm"])
    assert ops(out) == ["MatMul", "Relu", "MatMul"] and hits(report, "matmul-chain") == 0


def test_matmul_chain_refuses_runtime_weight():
    text = HEAD + f"""g (float[N,8] x, float[4,3] W2) => (float[N,3] y)
<{tensor("W1", rand(8, 4))}>
{{
  h = MatMul(x, W1)
  y = MatMul(h, W2)
}}"""
    assert_refused(text, ["fuse-gemm"], "matmul-chain", "not a constant")
