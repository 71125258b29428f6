"""fuse-layernorm and fuse-gelu (target onnx: LayerNormalization >= 17, Gelu >= 20, never an opset raise)."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fusion_check import assert_fused, assert_refused, check_numbers, ops, parse, rand, run, tensor
from graphopt import compile_model

LN = ["fuse-layernorm"]
GELU = ["fuse-gelu", "div-to-mul"]


def layernorm(opset=18, axes=(-1,), norm="div", square="pow", affine="both", eps="e", x="float[2,3,8] x",
              extra_in="", extra_out="", gamma="gamma"):
    inits = [tensor("two", np.array(2.0, np.float32)), tensor("gamma", rand(8, seed=1)),
             tensor("beta", rand(8, seed=2))]
    if eps == "e":
        inits.append(tensor("e", np.array(1e-5, np.float32)))
    if opset >= 18:
        inits.append(tensor("ax", np.array(axes, np.int64), "int64"))
        reduce = "ReduceMean({}, ax)"
    else:
        reduce = "ReduceMean<axes=[" + ", ".join(map(str, axes)) + "]>({})"
    sq = "sq = Pow(d, two)" if square == "pow" else "sq = Mul(d, d)"
    nrm = "n = Div(d, sd)" if norm == "div" else "r = Reciprocal(sd)\n  n = Mul(r, d)"
    tail = {"both": f"sc = Mul(n, {gamma})\n  y = Add(sc, beta)", "gamma": f"y = Mul({gamma}, n)",
            "beta": "y = Add(n, beta)", "none": "y = Identity(n)"}[affine]
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
g ({x}{extra_in}) => (float[2,3,8] y{extra_out})
<{", ".join(inits)}>
{{
  mean = {reduce.format("x")}
  d = Sub(x, mean)
  {sq}
  var = {reduce.format("sq")}
  ve = Add(var, {eps})
  sd = Sqrt(ve)
  {nrm}
  {tail}
}}"""


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("norm,square,rule", [("div", "pow", "layernorm"), ("reciprocal", "pow", "layernorm-reciprocal"),
                                              ("div", "mul", "layernorm-mul"),
                                              ("reciprocal", "mul", "layernorm-reciprocal-mul")])
def test_layernorm(opset, norm, square, rule):
    out = assert_fused(layernorm(opset, norm=norm, square=square), LN, rule, ["LayerNormalization"])
    assert len(out.graph.node[0].input) == 3  # scale and bias


@pytest.mark.parametrize("affine,n_inputs", [("gamma", 2), ("beta", 3), ("none", 2)])
def test_layernorm_partial_affine(affine, n_inputs):
    expect = ["LayerNormalization"] + (["Identity"] if affine == "none" else [])
    out = assert_fused(layernorm(affine=affine), LN, "layernorm", expect)
    assert len(out.graph.node[0].input) == n_inputs


def test_layernorm_axis_as_positive_index():
    assert_fused(layernorm(axes=(2,)), LN, "layernorm", ["LayerNormalization"])


def test_layernorm_with_symbolic_batch_at_O2():
    text = layernorm(x="float[N,3,8] x").replace("float[2,3,8] y", "float[N,3,8] y")
    assert_fused(text, [], "add-into-layernorm", ["LayerNormalization"], level=2)


def test_layernorm_refuses_opset_16():
    assert_refused(layernorm(opset=16), LN, "layernorm", "opset < 17")


def test_layernorm_refuses_other_axis():
    assert_refused(layernorm(axes=(1,)), LN, "layernorm",
                   "not just the last axis")


def test_layernorm_refuses_two_axes():
    assert_refused(layernorm(axes=(1, 2)), LN, "layernorm", "not just the last axis")


@pytest.mark.parametrize("value,shape", [("d", "2,3,8"), ("sd", "2,3,1"), ("mean", "2,3,1")])
def test_layernorm_refuses_used_intermediate(value, shape):
    assert_refused(layernorm(extra_out=f", float[{shape}] {value}"), LN, "layernorm", "graph output")


def test_layernorm_refuses_runtime_epsilon():
    assert_refused(layernorm(eps="eps_in", extra_in=", float eps_in"), LN, "layernorm", "epsilon is not a constant")


def test_layernorm_keeps_runtime_gamma():
    text = layernorm(gamma="g_in", extra_in=", float[8] g_in")
    model, out, report = run(text, LN, trace=["mul-into-layernorm"])
    assert ops(out) == ["LayerNormalization", "Mul", "Add"]
    assert "not a constant" in report.near_misses["mul-into-layernorm"][2]


def gelu(body, opset=20, x="float[2,8] x", consts=(("half", 0.5), ("one", 1.0), ("k", 2 ** 0.5))):
    inits = ", ".join(tensor(n, np.array(v, np.float32)) for n, v in consts)
    return f"""<ir_version: 9, opset_import: ["" : {opset}]>
g ({x}) => (float[2,8] y)
<{inits}>
{{
  {body}
}}"""


ERF = "a = Div(x, k)\n  e = Erf(a)\n  p = Add(e, one)\n"
SPELLINGS = {
    "x*(1+erf)*0.5": ("gelu", ERF + "  m = Mul(x, p)\n  y = Mul(m, half)"),
    "0.5*x*(1+erf)": ("gelu-half-first", ERF + "  h = Mul(half, x)\n  y = Mul(h, p)"),
    "x*0.5*(1+erf)": ("gelu-half-first", ERF + "  h = Mul(x, half)\n  y = Mul(p, h)"),
    "x*((1+erf)*0.5)": ("gelu-half-last", ERF + "  h = Mul(p, half)\n  y = Mul(x, h)"),
    "x/2*(1+erf)": ("gelu-half-first", ERF + "  h = Div(x, two)\n  y = Mul(h, p)"),
    "erf(x*rsqrt2)": ("gelu", ERF.replace("Div(x, k)", "Mul(r, x)") + "  m = Mul(p, x)\n  y = Mul(half, m)"),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_gelu(spelling):
    rule, body = SPELLINGS[spelling]
    consts = (("half", 0.5), ("one", 1.0), ("k", 2 ** 0.5), ("two", 2.0), ("r", 2 ** -0.5))
    assert_fused(gelu(body, consts=consts), GELU, rule, ["Gelu"])


def test_gelu_refuses_opset_18():
    assert_refused(gelu(SPELLINGS["x*(1+erf)*0.5"][1], opset=18), GELU, "gelu", "opset < 20")


def test_gelu_refuses_used_intermediate():
    text = gelu(SPELLINGS["x*(1+erf)*0.5"][1]).replace("=> (float[2,8] y)", "=> (float[2,8] y, float[2,8] e)")
    assert_refused(text, ["fuse-gelu"], "gelu", "graph output")


def test_gelu_refuses_wrong_constant():
    body = SPELLINGS["x*(1+erf)*0.5"][1]
    text = gelu(body, consts=(("half", 0.5), ("one", 1.0), ("k", 2.0)))
    assert_refused(text, ["fuse-gelu"], "gelu", "not the GELU constant")


def test_gelu_refuses_two_different_inputs():
    body = ERF.replace("Div(x, k)", "Div(z, k)") + "  m = Mul(x, p)\n  y = Mul(m, half)"
    text = gelu(body).replace("float[2,8] x)", "float[2,8] x, float[2,8] z)")
    assert_refused(text, ["fuse-gelu"], "gelu", "two different values")


def test_sigmoid_approximation_is_not_gelu():
    body = "s = Mul(x, c)\n  g = Sigmoid(s)\n  y = Mul(x, g)"
    model, out, _ = run(gelu(body, consts=(("c", 1.702),)), GELU, trace=["gelu"])
    assert ops(out) == ["Mul", "Sigmoid", "Mul"]


def to_float16(model):
    """The same model in float16 (the text parser has no float16 literals)."""
    for i, t in enumerate(model.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float16), t.name))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("text,passes,expect", [
    (layernorm(), LN, ["LayerNormalization"]),
    (gelu(SPELLINGS["x*(1+erf)*0.5"][1]), GELU, ["Gelu"]),  # float16 sqrt(2) is only 1.4140625
])
def test_float16(text, passes, expect):
    model = to_float16(parse(text))
    out = compile_model(model, level=0, passes=["infer-shapes", *passes]).model
    assert ops(out) == expect
    check_numbers(model, out, rtol=1e-2, atol=1e-2)
