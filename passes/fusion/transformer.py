"""O2 transformer fusions for target `onnx`: decomposed LayerNorm -> LayerNormalization (opset >= 17),
erf-GELU spellings -> Gelu (opset >= 20). Neither raises the model's opset: below it they refuse.

LayerNorm is found as its core (x - mean) / sqrt(var + eps) with unit scale; the affine Mul(gamma)
and Add(beta) that follow are then absorbed by two small rules, so every gamma/beta spelling folds.
"""
from __future__ import annotations

import math

import numpy as np

from graphopt import ir
from graphopt.pass_manager import register_rules
from graphopt.rewrite import Const, Op, Rule, Var, all_equal, attr_value

from .common import axes_of, axis_vector, is_float, near, optional_input, out_like, scalar_like

LAYERNORM_DTYPES = (np.float16, np.float32)  # computed in float32 (stash_type=1), as the original's float16/32


# ---------------------------------------------------------------- LayerNorm core

def _last_axis_only(node, opset: int, rank: int | None) -> str | None:
    axes, who = axes_of(node, opset, 18), f"ReduceMean '{node.name}'" if node.name else "ReduceMean"
    if attr_value(node, "keepdims", opset) == 0:
        return f"{who} does not keep dims"
    if axes is None:
        return f"{who} axes are absent or not constant"
    if axes == [-1] or (rank is not None and axes == [rank - 1]):
        return None
    return f"{who} reduces axes {axes}, not just the last axis"


def _layernorm_check(m) -> str | None:
    x, sub = m["x"], m.nodes["sub"]
    if x.dtype is None or np.dtype(x.dtype) not in [np.dtype(t) for t in LAYERNORM_DTYPES]:
        return "input is not float16/float32"
    rank = ir.rank(x)
    for name in ("mean", "var"):
        reason = _last_axis_only(m.nodes[name], m.opset, rank)
        if reason:
            return reason
    if m["d"] is not sub.outputs[0]:
        return "the variance is not taken of the same centered value"
    centered = sub.outputs[0]
    if ir.is_graph_output(m.graph, centered):
        return f"'{centered.name}' is a graph output"
    inside = {id(m.nodes["sq"]), id(m.nodes["norm"])}
    if any(id(c) not in inside for c in centered.outputs):
        return f"'{centered.name}' has other consumers"
    eps = ir.const_value(m["eps"])
    if eps is None or eps.size != 1:
        return "epsilon is not a constant scalar"
    if not np.isfinite(eps).all() or float(eps.reshape(-1)[0]) < 0:
        return "epsilon is negative or not finite"
    if x.shape is None or not isinstance(x.shape[-1], int):
        return "the last dim is unknown (LayerNormalization needs a scale of that size)"
    return None


def _layernorm(m):
    x = m["x"]
    eps = float(ir.const_value(m["eps"]).reshape(-1)[0])
    scale = m.constant(np.ones(x.shape[-1], dtype=np.dtype(x.dtype)), "scale")
    return m.op("LayerNormalization", [x, scale], {"axis": -1, "epsilon": eps}, **out_like(m))


# ---------------------------------------------------------------- gamma / beta absorbed into LayerNormalization

def _affine_check(m) -> str | None:
    ln, scale, c = m.nodes["ln"], m.const("scale"), m.const("c")
    out = ln.outputs[0]
    axis, rank = attr_value(ln, "axis", m.opset), ir.rank(out)
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return "LayerNormalization does not normalize the last axis only"
    if any(o.outputs or ir.is_graph_output(m.graph, o) for o in ln.outputs[1:]):
        return "LayerNormalization mean/inv-std-dev outputs are used"
    bias = optional_input(ln, 2)
    if bias is not None and ir.const_value(bias) is None:
        return "LayerNormalization bias is not a constant"
    if scale.ndim != 1 or c.dtype != scale.dtype:
        return "scale is not a vector of the constant's dtype"
    rank = rank if rank is not None else (1 if c.ndim <= 1 else None)
    vec = None if rank is None else axis_vector(c, rank, -1, scale.size)
    if vec is None:
        return "constant does not vary along the last axis only (or would broadcast the output)"
    if not np.all(np.isfinite(vec)):
        return "constant is not finite"
    return None


def _absorb(m, mul: bool):
    ln, scale, c = m.nodes["ln"], m.const("scale"), m.const("c")
    vec = axis_vector(c, ir.rank(ln.outputs[0]) or 1, -1, scale.size).astype(np.float64)
    bias_t = optional_input(ln, 2)
    bias = None if bias_t is None else ir.const_value(bias_t).astype(np.float64)
    if mul:
        new_scale, new_bias = scale.astype(np.float64) * vec, None if bias is None else bias * vec
    else:
        new_scale, new_bias = scale, vec if bias is None else bias + vec
    inputs = [m["x"], m.constant(np.asarray(new_scale).astype(scale.dtype), "scale")]
    if new_bias is not None:
        inputs.append(m.constant(new_bias.astype(scale.dtype), "bias"))
    return m.op("LayerNormalization", inputs, ln.attrs, **out_like(m))


# ---------------------------------------------------------------- GELU

SQRT2 = math.sqrt(2.0)


def _gelu_check(m) -> str | None:
    x = m["x"]
    if not is_float(x):
        return "input is not floating point"
    arg = m.nodes["arg"]
    if arg.op == "Div" and arg.inputs[0] is not x:
        return "erf argument divides a constant by x"
    want = SQRT2 if arg.op == "Div" else 1 / SQRT2
    if not near(m.const("k"), want):
        return f"erf argument is x {'/' if arg.op == 'Div' else '*'} {m.const('k').reshape(-1)[:1]}, not the GELU constant"
    if not (near(m.const("half"), 0.5, 1e-7) and near(m.const("one"), 1.0, 1e-7)):
        return "the 0.5 or the 1 is not"
    if not all(scalar_like(m.const(k), x) for k in ("k", "half", "one")):
        return "a constant is not a scalar (it could broadcast x)"
    if any(m.const(k).dtype != np.dtype(x.dtype) for k in ("k", "half", "one")):
        return "dtypes differ"
    return None


def _gelu(m):
    return m.op("Gelu", [m["x"]], {}, **out_like(m))


# ---------------------------------------------------------------- the rules

def _layernorm_rules():
    x = Var("x")
    centered = Op("Sub", x, Op("ReduceMean", x, allow_extra_inputs=True, name="mean"), single_use=False, name="sub")
    squares = (Op("Pow", Var("d"), Const("two", all_equal(2)), name="sq"), Op("Mul", Var("d"), Var("d"), name="sq"))
    rules = []
    for square in squares:
        var = Op("ReduceMean", square, allow_extra_inputs=True, name="var")
        std = Op("Sqrt", Op("Add", var, Var("eps"), commutative=True))
        suffix = "" if square.ops == ("Pow",) else "-mul"
        rules += [
            Rule("layernorm" + suffix, Op("Div", centered, std, name="norm"), _layernorm,
                 _layernorm_check, min_opset=17),  # (x-mean(x)) / sqrt(mean((x-mean)^2)+eps) -> LayerNormalization(x, 1)
            Rule("layernorm-reciprocal" + suffix, Op("Mul", centered, Op("Reciprocal", std), commutative=True,
                                                     name="norm"), _layernorm,
                 _layernorm_check, min_opset=17),  # (x-mean) * 1/sqrt(var+eps) -> LayerNormalization(x, 1)
        ]
    return rules


LN = Op("LayerNormalization", Var("x"), Const("scale"), allow_extra_inputs=True, name="ln")

LAYERNORM_RULES = _layernorm_rules() + [
    Rule("mul-into-layernorm", Op("Mul", LN, Const("c"), commutative=True), lambda m: _absorb(m, True),
         _affine_check, min_opset=17),  # LayerNormalization(x, s, b) * g -> LayerNormalization(x, s*g, b*g)
    Rule("add-into-layernorm", Op("Add", LN, Const("c"), commutative=True), lambda m: _absorb(m, False),
         _affine_check, min_opset=17),  # LayerNormalization(x, s, b) + beta -> LayerNormalization(x, s, b+beta)
]

register_rules("fuse-layernorm", LAYERNORM_RULES, level=2,
               doc="Decomposed LayerNorm (last axis) -> LayerNormalization, gamma/beta absorbed (opset >= 17)")

ERF_PLUS_ONE = Op("Add", Op("Erf", Op(("Div", "Mul"), Var("x"), Const("k"), commutative=True, name="arg")),
                  Const("one"), commutative=True)

GELU_RULES = [
    Rule("gelu", Op("Mul", Op("Mul", Var("x"), ERF_PLUS_ONE, commutative=True), Const("half"), commutative=True),
         _gelu, _gelu_check, min_opset=20),  # x * (1 + erf(x/√2)) * 0.5 -> Gelu(x)
    Rule("gelu-half-first", Op("Mul", Op("Mul", Var("x"), Const("half"), commutative=True), ERF_PLUS_ONE,
                               commutative=True), _gelu, _gelu_check, min_opset=20),  # (x * 0.5) * (1 + erf(x/√2)) -> Gelu(x)
    Rule("gelu-half-last", Op("Mul", Var("x"), Op("Mul", ERF_PLUS_ONE, Const("half"), commutative=True),
                              commutative=True), _gelu, _gelu_check, min_opset=20),  # x * ((1 + erf(x/√2)) * 0.5) -> Gelu(x)
]

register_rules("fuse-gelu", GELU_RULES, level=2,
               doc="erf-GELU spellings -> Gelu (opset >= 20; x*sigmoid(1.702x) is not GELU and stays)")
