"""O2 residual Add + RMSNorm -> SkipSimplifiedLayerNormalization (targets ort, graphopt).

Pre-norm decoders (Llama, Mistral, Qwen, T5) normalize the residual stream h = a + b before every
block: RMSNorm(a + b) * gamma, with h also read by the next residual Add. ORT has one op for that,
com.microsoft SkipSimplifiedLayerNormalization(a, b, gamma) -> (y, _, _, a + b), at any opset; the
graphopt runtime runs the same canonical op. Two spellings of the norm are matched:

    RMSNormalization(a + b, s)            (fused by fuse-layernorm: targets graphopt, and ort from opset 23)
    (a + b) / sqrt(mean((a + b)^2) + eps)  and the Reciprocal/Mul(x, x) forms (ort below opset 23, where
                                           a lone RMSNorm has no checker-valid spelling and stays decomposed)
    SkipSimplifiedLayerNormalization(a, b, s) * gamma  -> SkipSimplifiedLayerNormalization(a, b, s*gamma)

Legal only when a and b have one known shape (the op does not broadcast), the reduction is over the
last axis only with keepdims, epsilon is a non-negative constant scalar and the last dim is static.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import Const, Op, Rule, Var, all_equal, attr_value

from graphopt.compiler.pass_manager import register_rules

from .common import axes_of, axis_vector, out_like
from .lower import FUSED, ORT, emit, register_spelling, to_domain

KIND = "SkipSimplifiedLayerNormalization"
FLOATS = (np.dtype(np.float16), np.dtype(np.float32))


def _known_same_shape(a, b) -> bool:
    return (a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape) and
            all(x == y and x is not None and x != "" for x, y in zip(a.shape, b.shape)))


def _inputs_ok(m) -> str | None:
    a, b = m["a"], m["b"]
    if not _known_same_shape(a, b):
        return "the residual Add's inputs are not known to have one shape (the fused op does not broadcast)"
    if ir.rank(a) not in (2, 3):
        return "the residual sum is not 2-D or 3-D"
    if a.dtype is None or np.dtype(a.dtype) not in FLOATS or np.dtype(b.dtype) != np.dtype(a.dtype):
        return "the residual sum is not float16/float32"
    if not isinstance(a.shape[-1], int):
        return "the last dim is unknown (the fused op needs a scale of that size)"
    return None


def _fused_check(m) -> str | None:
    norm = m.nodes["norm"]
    rank, axis = ir.rank(norm.outputs[0]), attr_value(norm, "axis", m.opset)
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return "RMSNormalization does not normalize the last axis only"
    if (norm.domain or "") == "" and attr_value(norm, "stash_type", m.opset) not in (None, 1):
        return "RMSNormalization computes in the input type (stash_type 0)"
    reason = _inputs_ok(m)
    if reason:
        return reason
    scale = m.const("scale")
    if scale.ndim != 1 or scale.size != m["a"].shape[-1]:
        return "scale is not a vector over the last axis"
    return None


def _last_axis_mean(node, opset, rank) -> bool:
    axes = axes_of(node, opset, 18)
    return attr_value(node, "keepdims", opset) != 0 and axes is not None and (
        axes == [-1] or (rank is not None and axes == [rank - 1]))


def _decomposed_check(m) -> str | None:
    reason = _inputs_ok(m)
    if reason:
        return reason
    if not _last_axis_mean(m.nodes["mean"], m.opset, ir.rank(m["a"])):
        return "ReduceMean is not over the last axis only with keepdims"
    eps = ir.const_value(m["eps"])
    if eps is None or eps.size != 1 or not np.isfinite(eps).all() or float(eps.reshape(-1)[0]) < 0:
        return "epsilon is not a non-negative constant scalar"
    return None


def _emit_skip(m, scale: gs.Tensor, eps: float):
    """SkipSimplifiedLayerNormalization(a, b, scale); its 4th output takes over a + b when that sum is
    read elsewhere (the residual stream)."""
    add, a = m.nodes["add"], m["a"]
    total = add.outputs[0]
    attrs = {"epsilon": float(eps)}
    inside = {id(n) for n in m.matched}
    if not (ir.is_graph_output(m.graph, total) or any(id(c) not in inside for c in total.outputs)):
        return emit(m, KIND, [a, m["b"], scale], attrs, **out_like(m))
    y, _, _, new_total = emit(m, KIND, [a, m["b"], scale], attrs, outputs=4, **out_like(m))
    node = m.new_nodes[-1]
    node.outputs[1], node.outputs[2] = gs.Variable.empty(), gs.Variable.empty()
    new_total.dtype, new_total.shape = total.dtype, total.shape
    m.rebind(total, new_total)
    return y


def _from_fused(m):
    norm = m.nodes["norm"]
    eps = attr_value(norm, "epsilon", m.opset)
    return _emit_skip(m, norm.inputs[1], 1e-5 if eps is None else eps)


def _from_decomposed(m):
    a = m["a"]
    ones = m.constant(np.ones(a.shape[-1], dtype=np.dtype(a.dtype)), "scale")
    return _emit_skip(m, ones, float(ir.const_value(m["eps"]).reshape(-1)[0]))


def _gamma_check(m) -> str | None:
    skip, c, scale = m.nodes["skip"], m.const("c"), ir.const_value(m.nodes["skip"].inputs[2])
    y = skip.outputs[0]
    if ir.is_graph_output(m.graph, y) or len(y.outputs) != 1:
        return f"'{y.name}' has other consumers (its sum output may)"
    if len(skip.inputs) != 3 or scale is None or scale.ndim != 1:
        return "the fused op has a bias input or a scale that is not a constant vector"
    if c.dtype != scale.dtype:
        return "gamma's dtype differs from the scale's"
    if axis_vector(c, ir.rank(skip.outputs[0]) or 1, -1, scale.size) is None:
        return "gamma does not vary along the last axis only (or would broadcast the output)"
    return None


def _absorb_gamma(m):
    skip = m.nodes["skip"]
    scale = ir.const_value(skip.inputs[2])
    vec = axis_vector(m.const("c"), ir.rank(skip.outputs[0]) or 1, -1, scale.size)
    skip.inputs[2] = m.constant((scale.astype(np.float64) * vec).astype(scale.dtype), "scale")
    return skip.outputs[0]


def _rules():
    add = Op("Add", Var("a"), Var("b"), name="add", single_use=False)
    rules = [Rule("skip-rmsnorm", Op("RMSNormalization", add, Const("scale"), allow_extra_inputs=True, domain=d,
                                     name="norm"), _from_fused, _fused_check) for d in ("", FUSED)]
    # RMSNormalization(a + b, s) -> SkipSimplifiedLayerNormalization(a, b, s)
    for square in ("pow", "mul"):
        sq = Op("Pow", add, Const("two", all_equal(2))) if square == "pow" else Op("Mul", add, add)
        std = Op("Sqrt", Op("Add", Op("ReduceMean", sq, allow_extra_inputs=True, name="mean"), Var("eps"),
                            commutative=True))
        for norm in (Op("Div", add, std), Op("Mul", add, Op("Reciprocal", std), commutative=True),
                     Op("Mul", add, Op("Div", Const("one", all_equal(1)), std), commutative=True)):
            rules.append(Rule(f"skip-rmsnorm-decomposed-{square}", norm, _from_decomposed, _decomposed_check))
            # (a + b) / sqrt(mean((a + b)^2) + eps) -> SkipSimplifiedLayerNormalization(a, b, 1)
    rules.append(Rule("mul-into-skip-rmsnorm", Op("Mul", Op(KIND, Var("x"), Var("y"), Const("scale"), domain=FUSED,
                                                            name="skip", allow_extra_inputs=True, single_use=False),
                                                  Const("c"), commutative=True), _absorb_gamma, _gamma_check))
    # SkipSimplifiedLayerNormalization(a, b, s) * gamma -> SkipSimplifiedLayerNormalization(a, b, s * gamma)
    return rules


SKIP_RMSNORM_RULES = _rules()

register_spelling(KIND, "ort", to_domain(ORT, keep=("epsilon",)))
register_rules("fuse-skip-rmsnorm", SKIP_RMSNORM_RULES, produces={r.name: KIND for r in SKIP_RMSNORM_RULES}, level=2,
                      doc="Residual Add + RMSNorm -> SkipSimplifiedLayerNormalization (targets ort, graphopt)")
