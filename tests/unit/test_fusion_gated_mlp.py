"""fuse-gated-mlp: the SiLU-gated MLP's gate g * sigmoid(g) * u -> ai.graphopt SiluMul (target graphopt
only), against ONNX Runtime on the original."""
from __future__ import annotations

import numpy as np
import pytest

from fusion_check import hits, tensor
from target_check import check_target_numbers, compile_for, ops, rand


def mlp(up="u = MatMul(x, wu)", order="a, u"):
    inits = [tensor("wg", rand(8, 12, seed=1)), tensor("wu", rand(8, 12, seed=2)), tensor("wd", rand(12, 8, seed=3)),
             tensor("bu", rand(12, seed=4))]
    return f"""<ir_version: 9, opset_import: ["" : 17]>
g (float[N,5,8] x) => (float[N,5,8] y)
<{", ".join(inits)}>
{{
  gt = MatMul(x, wg)
  {up}
  s = Sigmoid(gt)
  a = Mul(gt, s)
  h = Mul({order})
  y = MatMul(h, wd)
}}"""


@pytest.mark.parametrize("order", ["a, u", "u, a"])
def test_silu_mul_for_graphopt(order):
    model, out, report = compile_for(mlp(order=order), [], "graphopt", level=2)
    assert hits(report, "silu-mul") == 1 and "go:SiluMul" in ops(out), ops(out)
    assert "Sigmoid" not in ops(out) and "go:QuickGelu" not in ops(out)
    check_target_numbers(model, out, "graphopt")


@pytest.mark.parametrize("target", ["onnx", "ort"])
def test_other_targets_keep_their_ops(target):
    model, out, report = compile_for(mlp(), [], target, level=2)
    assert hits(report, "silu-mul") == 0 and not any("SiluMul" in o for o in ops(out))
    check_target_numbers(model, out, target)


def test_broadcast_up_is_refused():
    """u a bias vector (12,): the product broadcasts, the fused op does not."""
    model, out, report = compile_for(mlp(up="u = Identity(bu)"), ["fuse-activation", "fuse-gated-mlp"], "graphopt",
                                     trace=["silu-mul"])
    assert hits(report, "silu-mul") == 0
    assert "one shape" in report.near_misses["silu-mul"][2], report.near_misses
    check_target_numbers(model, out, "graphopt")
