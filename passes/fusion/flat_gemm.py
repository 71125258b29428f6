"""O2 a Gemm on tokens flattened to 2-D and viewed back -> MatMul (+ Add) on the N-D value.

GPT-2's Conv1D (and other `x.view(-1, K) @ W + b` then `.view(*x.shape[:-1], N)` code) exports as

    Reshape(Gemm(Reshape(x, [-1, K]), W, b), Concat(Shape(x)[0], Shape(x)[1], [N]))

nine nodes per projection once the shape arithmetic is counted. MatMul(x, W) + b computes the same
dot products on x's own shape, and leaves the projection in the form the other fusions read
(attention's Q/K/V projections, skip-LayerNorm's bias, bias-GELU). Legal when the flattening keeps
the last dim (K, static), the Gemm is alpha = beta = 1 without transA with constant weights and a
bias vector (or none), and the view back is provably x's leading dims followed by N.
"""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.compiler.rewrite import Const, Op, Rule, Var, attr_value

from graphopt.compiler.pass_manager import register_rules

from . import shape_proof
from .common import out_like


def _check(m) -> str | None:
    x, gemm, opset = m["x"], m.nodes["gemm"], m.opset
    rank = ir.rank(x)
    if rank is None or rank < 2 or x.shape[-1] is None or not isinstance(x.shape[-1], int):
        return f"'{x.name}' has no known rank or static last dim"
    flat = shape_proof.shape_elements(m["flat_shape"], opset)
    if flat is None or len(flat) != 2 or flat[0] != -1 or not (flat[1] == x.shape[-1] or shape_proof.proven(flat[1], x, rank - 1)):
        return "the flattening is not (-1, last dim)"
    if attr_value(gemm, "transA", opset) or attr_value(gemm, "alpha", opset) not in (None, 1.0):
        return "Gemm has transA or alpha != 1"
    w = m.const("w")
    if w.ndim != 2:
        return "Gemm's weight is not a 2-D constant"
    n = w.shape[0] if attr_value(gemm, "transB", opset) else w.shape[1]
    if (w.shape[1] if attr_value(gemm, "transB", opset) else w.shape[0]) != x.shape[-1]:
        return "Gemm's weight does not take the last dim"
    if len(gemm.inputs) > 2 and not gemm.inputs[2].is_empty():
        bias = ir.const_value(gemm.inputs[2])
        if bias is None or bias.size != n or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
            return "Gemm's bias is not a constant vector of the output size"
        if attr_value(gemm, "beta", opset) not in (None, 1.0):
            return "Gemm has beta != 1"
    if attr_value(m.nodes["back"], "allowzero", opset):
        return "the view back has allowzero=1"
    back = shape_proof.shape_elements(m["back_shape"], opset)
    if back is None or len(back) != rank:
        return f"the view back is not of rank {rank}"
    if back[-1] not in (n, -1) or not all(shape_proof.proven(e, x, i) for i, e in enumerate(back[:-1])):
        return f"the view back is not ({', '.join('dim %d' % i for i in range(rank - 1))} of '{x.name}', {n})"
    return None


def _rewrite(m):
    x, gemm = m["x"], m.nodes["gemm"]
    w = m.const("w")
    w = w.T if attr_value(gemm, "transB", m.opset) else w
    out = out_like(m)
    has_bias = len(gemm.inputs) > 2 and not gemm.inputs[2].is_empty()
    y = m.op("MatMul", [x, m.constant(np.ascontiguousarray(w), "weight")], dtype=out["dtype"],
             shape=out["shape"] if not has_bias else None)
    if not has_bias:
        return y
    bias = ir.const_value(gemm.inputs[2]).reshape(-1)
    return m.op("Add", [y, m.constant(bias, "bias")], **out)


FLAT_GEMM_RULES = [Rule("flat-gemm", Op("Reshape", Op("Gemm", Op("Reshape", Var("x"), Var("flat_shape")), Const("w"),
                                                      allow_extra_inputs=True, name="gemm"),
                                        Var("back_shape"), name="back"), _rewrite, _check)]
# view(Gemm(view(x, [-1, K]), W, b), [*x.shape[:-1], N]) -> MatMul(x, W) + b

register_rules("fuse-flat-gemm", FLAT_GEMM_RULES, produces={}, level=2,
                      doc="Gemm on tokens flattened to 2-D and viewed back -> MatMul + Add on the N-D value")
