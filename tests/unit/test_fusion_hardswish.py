"""fuse-hardswish: x * relu6(x + 3) / 6 -> HardSwish (x * HardSigmoid before opset 14), relu6(x + 3) / 6 ->
HardSigmoid; outputs compared with ONNX Runtime on the original. The leading Mul spreads random_feed's
N(0, 1) inputs by 3, so both clamps and the linear part in between are exercised."""
import numpy as np
import pytest
from fusion_check import assert_fused, assert_refused, ops, parse, rand, run, tensor

import graphopt
from graphopt.runtime.session import Session
from graphopt.verify import ort_session, random_feed

P = ["fuse-hardswish"]
HEAD = '<ir_version: 8, opset_import: ["" : {opset}]>\n'
CONSTS = "float three = {3.0}, float zero = {0.0}, float six = {6.0}, float sixth = {0.16666667}, float spread = {3.0}"


def model(body: str, opset: int = 13, clip: str = "Clip(a, zero, six)", consts: str = CONSTS) -> str:
    return HEAD.format(opset=opset) + f"""g (float[2,4,5] inp) => (float[2,4,5] y)
<{consts}>
{{
  x = Mul(inp, spread)
  a = Add(x, three)
  r = {clip}
  {body}
}}"""


SWISH_SPELLINGS = {
    "mul-then-div": "m = Mul(x, r)\n  y = Div(m, six)",
    "mul-then-mul-sixth": "m = Mul(r, x)\n  y = Mul(m, sixth)",
    "x-times-gate-div": "g = Div(r, six)\n  y = Mul(x, g)",
    "x-times-gate-mul": "g = Mul(sixth, r)\n  y = Mul(g, x)",
}


@pytest.mark.parametrize("spelling", sorted(SWISH_SPELLINGS))
def test_hardswish_opset14(spelling):
    """Every spelling ends as one HardSwish (the x * (gate) ones through HardSigmoid first)."""
    rule = "decomposed-hardswish" if spelling.startswith("mul") else "hardswish"
    assert_fused(model(SWISH_SPELLINGS[spelling], opset=14), P, rule, ["Mul", "HardSwish"])


@pytest.mark.parametrize("opset", [11, 13])
def test_hardswish_before_opset14_is_x_times_hardsigmoid(opset):
    assert_fused(model(SWISH_SPELLINGS["mul-then-div"], opset=opset), P, "decomposed-hardswish",
                 ["Mul", "HardSigmoid", "Mul"])


def test_hardswish_clip_attributes_opset10():
    assert_fused(model(SWISH_SPELLINGS["mul-then-div"], opset=10, clip="Clip<min=0.0, max=6.0>(a)"), P,
                 "decomposed-hardswish", ["Mul", "HardSigmoid", "Mul"])


def test_hardsigmoid():
    assert_fused(model("y = Div(r, six)"), P, "decomposed-hardsigmoid", ["Mul", "HardSigmoid"])


def test_then_fused_into_conv():
    """At O2 with target graphopt the Conv before it takes the activation; graphopt's runtime matches ORT."""
    text = HEAD.format(opset=13) + f"""g (float[1,3,8,8] inp) => (float[1,4,6,6] y)
<{tensor("W", rand(4, 3, 3, 3) * 2)}, {CONSTS}>
{{
  x = Conv(inp, W)
  a = Add(x, three)
  r = Clip(a, zero, six)
  m = Mul(x, r)
  y = Div(m, six)
}}"""
    original = parse(text)
    out = graphopt.compile(original, level=2, target="graphopt")
    assert ops(out) == ["FusedConv"]
    feed = random_feed(original, seed=0)
    want = ort_session(original).run(None, feed)[0]
    np.testing.assert_allclose(Session(out).run(None, feed)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("old,new,reason", [
    ("three = {3.0}", "three = {2.0}", "not x + 3"),
    ("six = {6.0}", "six = {5.0}", "not relu6"),  # the Clip's upper bound (and the divisor)
])
def test_refused_wrong_constants(old, new, reason):
    consts = CONSTS.replace(old, new)
    assert_refused(model(SWISH_SPELLINGS["mul-then-div"], consts=consts), P, "decomposed-hardswish", reason)


def test_refused_divisor_not_six():
    consts = CONSTS + ", float five = {5.0}"
    assert_refused(model("m = Mul(x, r)\n  y = Div(m, five)", consts=consts), P, "decomposed-hardswish",
                   "not / 6")


def test_different_tensors_not_hardswish():
    """relu6(x + 3) times something other than x is not HardSwish: nothing changes."""
    text = model("m = Mul(inp, r)\n  y = Div(m, six)", opset=14)
    model_in, out, report = run(text, P)
    assert ops(out) == ops(model_in)


def test_hardsigmoid_with_other_parameters_stays():
    text = HEAD.format(opset=14) + """g (float[2,4,5] x) => (float[2,4,5] y)
{
  g = HardSigmoid<alpha=0.2, beta=0.5>(x)
  y = Mul(x, g)
}"""
    assert_refused(text, P, "hardswish", "is not HardSwish's")
