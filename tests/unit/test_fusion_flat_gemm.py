"""fuse-flat-gemm: GPT-2's Conv1D export, Reshape(Gemm(Reshape(x, [-1, K]), W, b), [*x.shape[:-1], N]) ->
MatMul(x, W) + b, checked against ONNX Runtime on the original (several batch/seq sizes)."""
from __future__ import annotations

import numpy as np
import pytest

from fusion_check import hits, tensor
from target_check import check_target_numbers, compile_for, ops, rand

PASSES = ["fuse-flat-gemm"]


def conv1d(trans_b=0, bias=True, back="size", beta=1.0):
    w = rand(6, 8, seed=1) if trans_b else rand(8, 6, seed=1)
    inits = [tensor("w", w), tensor("b", rand(6, seed=2)), tensor("flat", np.array([-1, 8]), "int64"),
             tensor("six", np.array([6]), "int64"), tensor("z", np.array([0]), "int64"),
             tensor("i0", np.array(0), "int64"), tensor("i1", np.array(1), "int64")]
    gemm_in = "xf, w, b" if bias else "xf, w"
    first, second = ("i0", "i1") if back == "size" else ("i1", "i0")  # "swapped": (seq, batch, 6)
    return f"""<ir_version: 9, opset_import: ["" : 17]>
g (float[N,S,8] x) => (float[N,S,6] y)
<{", ".join(inits)}>
{{
  sh = Shape(x)
  d0 = Gather<axis=0>(sh, {first})
  d1 = Gather<axis=0>(sh, {second})
  u0 = Unsqueeze(d0, z)
  u1 = Unsqueeze(d1, z)
  back = Concat<axis=0>(u0, u1, six)
  xf = Reshape(x, flat)
  h = Gemm<transB={trans_b}, beta={beta}>({gemm_in})
  y = Reshape(h, back)
}}"""


@pytest.mark.parametrize("kwargs", [{}, {"trans_b": 1}, {"bias": False}])
@pytest.mark.parametrize("target", ["onnx", "ort", "graphopt"])
def test_flat_gemm(kwargs, target):
    model, out, report = compile_for(conv1d(**kwargs), PASSES, target)
    assert hits(report, "flat-gemm") == 1
    assert "Gemm" not in ops(out) and "MatMul" in ops(out), ops(out)
    check_target_numbers(model, out, target)


@pytest.mark.parametrize("kwargs,reason", [({"back": "swapped"}, "view back is not"), ({"beta": 0.5}, "beta")])
def test_flat_gemm_refuses(kwargs, reason):
    model, out, report = compile_for(conv1d(**kwargs), PASSES, "onnx", trace=["flat-gemm"])
    assert hits(report, "flat-gemm") == 0 and "Gemm" in ops(out)
    assert reason in report.near_misses["flat-gemm"][2], report.near_misses["flat-gemm"]
    check_target_numbers(model, out, "onnx")
