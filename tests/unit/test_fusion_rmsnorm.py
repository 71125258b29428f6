"""fuse-skip-rmsnorm: residual Add + RMSNorm (pre-norm decoders) -> SkipSimplifiedLayerNormalization,
from the decomposed norm (ort below opset 23) or the fused RMSNormalization (graphopt; ort from 23),
gamma absorbed, the residual sum taken from the fused op's 4th output. Checked against ONNX Runtime
on the original model (graphopt's runtime runs the graphopt target)."""
from __future__ import annotations

import numpy as np
import pytest

from fusion_check import hits, tensor
from target_check import assert_target_refused, check_target_numbers, compile_for, ops


def rms(opset=17, norm="reciprocal", square="pow", gamma=True, read_sum=True, b="float[N,5,8] b", axes=(-1,)):
    """h = a + b; y0 = gamma * RMSNorm(h) (eps 1e-6); y = h + y0 when the residual sum is read again."""
    inits = [tensor("g", np.linspace(0.5, 1.5, 8).astype(np.float32)), "float two = {2.0}", "float e = {1e-6}", "float one = {1.0}"]
    if opset >= 18:
        inits.append(tensor("ax", np.array(axes), "int64"))
        reduce = "ReduceMean(sq, ax)"
    else:
        reduce = f"ReduceMean<axes=[{', '.join(map(str, axes))}]>(sq)"
    square = "sq = Pow(h, two)" if square == "pow" else "sq = Mul(h, h)"
    norm = {"reciprocal": "r = Reciprocal(sd)\n  n = Mul(h, r)", "div": "n = Div(h, sd)",
            "div_one": "r = Div(one, sd)\n  n = Mul(h, r)"}[norm]  # div_one: torch's rsqrt (TorchScript)
    tail = "y0 = Mul(g, n)" if gamma else "y0 = Identity(n)"
    out = "y = Add(h, y0)" if read_sum else "y = Identity(y0)"
    return f"""<ir_version: 9, opset_import: ["" : {opset}]>
g (float[N,5,8] a, {b}) => (float[N,5,8] y)
<{", ".join(inits)}>
{{
  h = Add(a, b)
  {square}
  v = {reduce}
  ve = Add(v, e)
  sd = Sqrt(ve)
  {norm}
  {tail}
  {out}
}}"""


FUSED = {"ort": "ms:SkipSimplifiedLayerNormalization", "graphopt": "go:SkipSimplifiedLayerNormalization"}


@pytest.mark.parametrize("target", ["ort", "graphopt"])
@pytest.mark.parametrize("opset", [17, 23])
@pytest.mark.parametrize("variant,expect", [
    ({}, ["Add"]), ({"norm": "div", "square": "mul"}, ["Add"]), ({"gamma": False}, ["Add"]), ({"norm": "div_one"}, ["Add"]),
    ({"read_sum": False}, []),
])
def test_skip_rmsnorm(target, opset, variant, expect):
    model, out, report = compile_for(rms(opset, **variant), [], target, level=2)
    assert ops(out) == [FUSED[target]] + expect, ops(out)
    rules = ("skip-rmsnorm", "skip-rmsnorm-decomposed-pow", "skip-rmsnorm-decomposed-mul")
    assert sum(hits(report, r) for r in rules) == 1
    check_target_numbers(model, out, target)


def test_fused_op_keeps_the_residual_sum():
    """The residual sum read after the norm comes from the fused op's 4th output, not a second Add."""
    _, out, _ = compile_for(rms(17), [], "ort", level=2)
    fused, add = out.graph.node
    assert len(fused.output) == 4 and fused.output[3] in add.input


@pytest.mark.parametrize("kwargs,reason", [
    ({"b": "float[8] b"}, "not known to have one shape"),   # the Add broadcasts: the op cannot
    ({"axes": (1,)}, "not over the last axis only"),          # a norm over the sequence axis
])
def test_skip_rmsnorm_refuses(kwargs, reason):
    out = assert_target_refused(rms(17, **kwargs), ["fuse-skip-rmsnorm"], "ort", "skip-rmsnorm-decomposed-pow", reason)
    assert "ReduceMean" in [n.op_type for n in out.graph.node]


def test_onnx_target_has_no_skip_rmsnorm():
    """No standard op adds the skip: the onnx target keeps the Add (RMSNormalization from opset 23)."""
    model, out, _ = compile_for(rms(23), [], "onnx", level=2)
    assert "SkipSimplifiedLayerNormalization" not in str(ops(out)) and "RMSNormalization" in ops(out)
    check_target_numbers(model, out, "onnx")
