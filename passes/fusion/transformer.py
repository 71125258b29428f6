"""O2 normalization fusions (target-blind: each builds a canonical ai.graphopt op, see lower.py).

    (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)  -> LayerNormalization(x, 1)   (and the Reciprocal spelling)
    LayerNormalization(x, s, b) * gamma / + beta        -> LayerNormalization(x, s*gamma, b*gamma / b+beta)
    x / sqrt(mean(x^2) + eps)                           -> RMSNormalization(x, 1)     (and * gamma absorbed)
    LayerNormalization(a + b, s, b)                     -> SkipLayerNormalization(a, b, s, b)   (ort, graphopt)
        (a + b read elsewhere too: its readers take the fused op's 4th output, the sum; when a is
         MatMul(h, W) + bias, lower.py moves that bias Add into the fused op's 5th input: ort, graphopt)

LayerNorm is found as its core with unit scale; the affine Mul(gamma) and Add(beta) that follow are
absorbed by two small rules, so every gamma/beta spelling (or none) folds. Axes may be an attribute
(opset < 18) or an input (18+); only the last axis is accepted.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import Const, Op, Rule, Var, all_equal, attr_value

from .common import axes_of, axis_vector, optional_input, out_like
from graphopt.compiler.pass_manager import register_rules

from .lower import FUSED, emit

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


def _norm_check(m) -> str | None:
    """Shared by LayerNorm and RMSNorm cores: dtype, last-axis reductions, epsilon, static last dim."""
    x = m["x"]
    if x.dtype is None or np.dtype(x.dtype) not in [np.dtype(t) for t in LAYERNORM_DTYPES]:
        return "input is not float16/float32"
    rank = ir.rank(x)
    for name in ("mean", "var"):
        if name in m.nodes:
            reason = _last_axis_only(m.nodes[name], m.opset, rank)
            if reason:
                return reason
    eps = ir.const_value(m["eps"])
    if eps is None or eps.size != 1:
        return "epsilon is not a constant scalar"
    if not np.isfinite(eps).all() or float(eps.reshape(-1)[0]) < 0:
        return "epsilon is negative or not finite"
    if x.shape is None or not isinstance(x.shape[-1], int):
        return "the last dim is unknown (the fused op needs a scale of that size)"
    return None


def _layernorm_check(m) -> str | None:
    sub = m.nodes["sub"]
    if m["d"] is not sub.outputs[0]:
        return "the variance is not taken of the same centered value"
    centered = sub.outputs[0]
    if ir.is_graph_output(m.graph, centered):
        return f"'{centered.name}' is a graph output"
    inside = {id(m.nodes["sq"]), id(m.nodes["norm"])}
    if any(id(c) not in inside for c in centered.outputs):
        return f"'{centered.name}' has other consumers"
    return _norm_check(m)


def _rmsnorm_check(m) -> str | None:
    return _norm_check(m)  # x itself is kept, so it may have other consumers


def _normalize(m, kind: str):
    x = m["x"]
    eps = float(ir.const_value(m["eps"]).reshape(-1)[0])
    scale = m.constant(np.ones(x.shape[-1], dtype=np.dtype(x.dtype)), "scale")
    return emit(m, kind, [x, scale], {"axis": -1, "epsilon": eps}, **out_like(m))


# ---------------------------------------------------------------- gamma / beta absorbed into the fused op

SCALE_INDEX = {"LayerNormalization": 1, "RMSNormalization": 1, "SkipLayerNormalization": 2}


def _affine_check(m) -> str | None:
    ln, scale, c = m.nodes["ln"], m.const("scale"), m.const("c")
    out = ln.outputs[0]
    axis, rank = attr_value(ln, "axis", m.opset), ir.rank(out)
    if ln.op != "SkipLayerNormalization" and not (axis == -1 or (rank is not None and axis == rank - 1)):
        return f"{ln.op} does not normalize the last axis only"
    if (ln.domain or "") == "" and attr_value(ln, "stash_type", m.opset) not in (None, 1):
        return f"{ln.op} computes in the input type (stash_type 0)"
    if any(o.outputs or ir.is_graph_output(m.graph, o) for o in ln.outputs[1:]):
        return f"{ln.op} mean/inv-std-dev outputs are used"
    bias = optional_input(ln, SCALE_INDEX[ln.op] + 1)
    if bias is not None and ir.const_value(bias) is None:
        return f"{ln.op} bias is not a constant"
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
    at = SCALE_INDEX[ln.op]
    vec = axis_vector(c, ir.rank(ln.outputs[0]) or 1, -1, scale.size).astype(np.float64)
    bias_t = optional_input(ln, at + 1)
    bias = None if bias_t is None else ir.const_value(bias_t).astype(np.float64)
    if mul:
        new_scale, new_bias = scale.astype(np.float64) * vec, None if bias is None else bias * vec
    else:
        new_scale, new_bias = scale, vec if bias is None else bias + vec
    inputs = list(ln.inputs[:at]) + [m.constant(np.asarray(new_scale).astype(scale.dtype), "scale")]
    if new_bias is not None:
        inputs.append(m.constant(new_bias.astype(scale.dtype), "bias"))
    attrs = {k: v for k, v in ln.attrs.items() if k != "stash_type"}
    return emit(m, ln.op, inputs, attrs, **out_like(m))


# ---------------------------------------------------------------- Add + LayerNorm -> SkipLayerNormalization

def _same_shape(a, b) -> bool:
    return (a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape)
            and all(x == y and x is not None and x != "" for x, y in zip(a.shape, b.shape)))


def _skip_check(m) -> str | None:
    ln, a, b = m.nodes["ln"], m["a"], m["b"]
    reason = _affine_check_shape(m)
    if reason:
        return reason
    if not _same_shape(a, b):
        return "the Add's inputs are not known to have one shape (SkipLayerNormalization does not broadcast)"
    if ir.rank(a) not in (2, 3):
        return "input is not 2-D or 3-D"
    if a.dtype is None or np.dtype(a.dtype) not in [np.dtype(t) for t in LAYERNORM_DTYPES]:
        return "input is not float16/float32"
    bias = optional_input(ln, 2)
    if bias is not None and (ir.const_value(bias) is None or ir.const_value(bias).ndim != 1):
        return "LayerNormalization bias is not a constant vector"
    return None


def _affine_check_shape(m) -> str | None:
    ln, scale = m.nodes["ln"], m.const("scale")
    out, rank = ln.outputs[0], ir.rank(ln.outputs[0])
    axis = attr_value(ln, "axis", m.opset)
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return "LayerNormalization does not normalize the last axis only"
    if (ln.domain or "") == "" and attr_value(ln, "stash_type", m.opset) not in (None, 1):
        return "LayerNormalization computes in the input type (stash_type 0)"
    if any(o.outputs or ir.is_graph_output(m.graph, o) for o in ln.outputs[1:]):
        return "LayerNormalization mean/inv-std-dev outputs are used"
    if scale.ndim != 1 or out.shape is None or out.shape[-1] != scale.size:
        return "scale is not a vector over the last axis"
    return None


def _sum_is_read_elsewhere(m) -> bool:
    """The residual sum a + b also feeds the next residual Add (pre-LN blocks) or is a graph output."""
    total = m.nodes["add"].outputs[0]
    return ir.is_graph_output(m.graph, total) or any(c is not m.root for c in total.outputs)


def _skip(m):
    ln, add = m.nodes["ln"], m.nodes["add"]
    eps = attr_value(ln, "epsilon", m.opset)
    inputs = [m["a"], m["b"], ln.inputs[1]] + ([ln.inputs[2]] if optional_input(ln, 2) is not None else [])
    attrs = {"epsilon": float(1e-5 if eps is None else eps)}
    if not _sum_is_read_elsewhere(m):
        return emit(m, "SkipLayerNormalization", inputs, attrs, **out_like(m))
    # outputs (y, mean, inv_std_var, input_skip_bias_sum), as ORT's: only y and the sum are written
    y, _, _, total = emit(m, "SkipLayerNormalization", inputs, attrs, outputs=4, **out_like(m))
    node = m.new_nodes[-1]
    node.outputs[1], node.outputs[2] = gs.Variable.empty(), gs.Variable.empty()
    old = add.outputs[0]
    total.dtype, total.shape = old.dtype, old.shape
    m.rebind(old, total)
    return y


# ---------------------------------------------------------------- the rules

def _layernorm_rules():
    x = Var("x")
    centered = Op("Sub", x, Op("ReduceMean", x, allow_extra_inputs=True, name="mean"), single_use=False, name="sub")
    rules = []
    for sq in ("pow", "mul"):
        suffix = "" if sq == "pow" else "-mul"
        for kind, value in (("layernorm", Var("d")), ("rmsnorm", x)):
            square = (Op("Pow", value, Const("two", all_equal(2)), name="sq") if sq == "pow"
                      else Op("Mul", value, value, name="sq"))
            var = Op("ReduceMean", square, allow_extra_inputs=True, name="var")
            std = Op("Sqrt", Op("Add", var, Var("eps"), commutative=True))
            top = centered if kind == "layernorm" else x
            make = (lambda m: _normalize(m, "LayerNormalization")) if kind == "layernorm" else \
                (lambda m: _normalize(m, "RMSNormalization"))
            check = _layernorm_check if kind == "layernorm" else _rmsnorm_check
            rules += [
                Rule(kind + suffix, Op("Div", top, std, name="norm"), make, check),
                # x / sqrt(mean(x^2) + eps), with x centered for LayerNorm -> canonical op with unit scale
                Rule(kind + "-reciprocal" + suffix, Op("Mul", top, Op("Reciprocal", std), commutative=True,
                                                      name="norm"), make, check),
                # x * 1/sqrt(mean(x^2) + eps) -> the same
                Rule(kind + "-reciprocal" + suffix, Op("Mul", top, Op("Div", Const("one", all_equal(1)), std),
                                                      commutative=True, name="norm"), make, check),
                # x * Div(1, sqrt(...)): torch's rsqrt as the TorchScript exporter writes it
            ]
    return rules


def _fused_or_standard(op: str, *inputs):
    """The op as a canonical fused node or as the standard op the model (or an earlier pass) holds."""
    return [Op(op, *inputs, allow_extra_inputs=True, domain=d, name="ln") for d in ("", FUSED)]


LAYERNORM_RULES = _layernorm_rules()
for _ln in _fused_or_standard("LayerNormalization", Var("x"), Const("scale")):
    LAYERNORM_RULES += [
        Rule("mul-into-layernorm", Op("Mul", _ln, Const("c"), commutative=True), lambda m: _absorb(m, True),
             _affine_check),  # LayerNormalization(x, s, b) * g -> LayerNormalization(x, s*g, b*g)
        Rule("add-into-layernorm", Op("Add", _ln, Const("c"), commutative=True), lambda m: _absorb(m, False),
             _affine_check),  # LayerNormalization(x, s, b) + beta -> LayerNormalization(x, s, b+beta)
    ]
for _rms in _fused_or_standard("RMSNormalization", Var("x"), Const("scale")):
    LAYERNORM_RULES.append(Rule("mul-into-rmsnorm", Op("Mul", _rms, Const("c"), commutative=True),
                                lambda m: _absorb(m, True), _affine_check))  # RMSNorm(x, s) * g -> RMSNorm(x, s*g)

PRODUCES = {r.name: ("RMSNormalization" if "rms" in r.name else "LayerNormalization") for r in LAYERNORM_RULES}

register_rules("fuse-layernorm", LAYERNORM_RULES, level=2, produces=PRODUCES,
               doc="Decomposed LayerNorm/RMSNorm (last axis) -> fused op, gamma/beta absorbed "
                   "(onnx target: LayerNormalization >= 17, RMSNormalization >= 23)")

SKIP_RULES = [Rule("skip-layernorm", Op("LayerNormalization", Op("Add", Var("a"), Var("b"), name="add", single_use=False),
                                        Const("scale"), allow_extra_inputs=True, domain=d, name="ln"), _skip, _skip_check)
              for d in ("", FUSED)]
# LayerNormalization(a + b, s, bias) -> SkipLayerNormalization(a, b, s, bias); when a + b is read elsewhere
# too (pre-LN residual stream), its readers take the fused op's input_skip_bias_sum output instead

register_rules("fuse-skip-layernorm", SKIP_RULES, level=2, produces={"skip-layernorm": "SkipLayerNormalization"},
               doc="Add + LayerNormalization -> SkipLayerNormalization (targets ort, graphopt)")
