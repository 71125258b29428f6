"""O2 Conv/Gemm + activation fusion: canonical ai.graphopt FusedConv / FusedGemm / QuickGelu (see lower.py),
spelled as ONNX Runtime's com.microsoft ops of those names for `--target ort`.

Standard ONNX has no fused conv+activation op, so for `--target onnx` the rules are off (lower.py switches
a rule off when its kind has no spelling for the target); `--target graphopt` keeps the canonical node, which
kernels/cpu/conv_activation.py executes. The canonical node carries exactly ORT's attributes, so spelling it for ORT
only changes the domain. What ORT 1.32 CPU executes (checked by running both kernels against an unfused
reference, optimizations on and off):
  FusedConv  activation in {Relu, Tanh, Sigmoid, LeakyRelu[alpha], Clip[min, max], HardSigmoid[alpha, beta],
             HardSwish}; parameters in the float list `activation_params`.
  FusedGemm  activation in {Relu, Tanh, Sigmoid, LeakyRelu, HardSigmoid}; parameters in activation_alpha /
             activation_beta (Clip and HardSwish are refused by its kernel).
SiLU (x*Sigmoid(x)) is in neither list; it becomes QuickGelu(alpha=1) = x*sigmoid(1*x) instead (a separate node;
kernels/cpu/gelu.py runs it for --target graphopt).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.pass_manager import register_rules
from graphopt.compiler.rewrite import Op, Rule, Var, attr_value

from .common import near, optional_input, out_like
from .lower import (
    ORT,
    emit,
    register_spelling,
    to_domain,
)

CONV_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish")
GEMM_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid")
F32_MAX = float(np.finfo(np.float32).max)


def _activation(m, act) -> tuple[str, list[float]] | str:
    """(ORT activation name, its float parameters) of an activation node, or why not."""
    if act.op == "LeakyRelu":
        return "LeakyRelu", [float(attr_value(act, "alpha", m.opset))]
    if act.op == "HardSigmoid":
        return "HardSigmoid", [float(attr_value(act, "alpha", m.opset)), float(attr_value(act, "beta", m.opset))]
    if act.op != "Clip":
        return act.op, []
    if m.opset < 11:
        lo, hi = attr_value(act, "min", m.opset), attr_value(act, "max", m.opset)
        return "Clip", [float(-F32_MAX if lo is None else lo), float(F32_MAX if hi is None else hi)]
    bounds = []
    for index, default in ((1, -F32_MAX), (2, F32_MAX)):
        t = optional_input(act, index)
        value = None if t is None else ir.const_value(t)
        if t is not None and (value is None or value.size != 1):
            return "Clip bounds are not constant scalars"
        bounds.append(default if value is None else float(value.reshape(-1)[0]))
    return "Clip", bounds


def _float32_node(node) -> str | None:
    out = node.outputs[0]
    if out.dtype is None or np.dtype(out.dtype) != np.float32:
        return f"{node.op} output is not float32 (the ORT CPU fused kernels are float32 only)"
    return None


def _conv_check(conv) -> str | None:
    if conv.domain not in (None, "", "ai.onnx"):
        return "Conv is not a standard Conv"
    if len([t for t in conv.inputs if not t.is_empty()]) > 3:
        return "Conv has unexpected inputs"
    return _float32_node(conv)


# ---------------------------------------------------------------- Conv + activation -> FusedConv

def _conv_act_check(m) -> str | None:
    reason = _conv_check(m.nodes["conv"])
    if reason:
        return reason
    got = _activation(m, m.root)
    return got if isinstance(got, str) else None


def _fused_conv(m, activation: str, params: list[float]):
    conv = m.nodes["conv"]
    attrs = dict(conv.attrs, activation=activation)
    if params:
        attrs["activation_params"] = [float(p) for p in params]
    inputs = [t for t in conv.inputs if not t.is_empty()]
    return emit(m, "FusedConv", inputs, attrs, **out_like(m))


def _conv_act(m):
    return _fused_conv(m, *_activation(m, m.root))


def _conv_add_act_check(m) -> str | None:
    """Act(Conv(x) + z) -> FusedConv(x, W, B, Z=z): ORT adds Z before the activation, without broadcasting."""
    reason = _conv_act_check(m)
    if reason:
        return reason
    z, c = m["z"], m.nodes["conv"].outputs[0]
    if z.shape is None or c.shape is None or list(z.shape) != list(c.shape):
        return "the added value's shape is not known to equal the Conv output's (FusedConv does not broadcast Z)"
    if z.dtype is None or np.dtype(z.dtype) != np.float32:
        return "the added value is not float32"
    return None


def _conv_add_act(m):
    conv = m.nodes["conv"]
    name, params = _activation(m, m.root)
    attrs = dict(conv.attrs, activation=name)
    if params:
        attrs["activation_params"] = [float(p) for p in params]
    bias = optional_input(conv, 2)
    inputs = [conv.inputs[0], conv.inputs[1], bias if bias is not None else gs.Variable.empty(), m["z"]]
    return emit(m, "FusedConv", inputs, attrs, **out_like(m))


def _hardswish_check(m) -> str | None:
    """x * HardSigmoid(x; 1/6, 1/2) == HardSwish(x), where x = Conv(...) feeds exactly these two nodes."""
    conv, hs = m.nodes["conv"], m.nodes["hs"]
    if m.nodes["conv2"] is not conv:
        return "Mul and HardSigmoid read different values"
    out = conv.outputs[0]
    if ir.is_graph_output(m.graph, out):
        return "Conv output is a graph output"
    if {id(c) for c in out.outputs} != {id(m.root), id(hs)} or len(out.outputs) != 2:
        return "Conv output has other consumers"
    alpha, beta = attr_value(hs, "alpha", m.opset), attr_value(hs, "beta", m.opset)
    if not (near(np.array(alpha), 1.0 / 6, 1e-6) and near(np.array(beta), 0.5, 1e-6)):
        return f"HardSigmoid(alpha={alpha}, beta={beta}) is not HardSwish's (1/6, 1/2)"
    return _conv_check(conv)


def _conv(name: str) -> Op:
    return Op("Conv", Var("x"), Var("w"), allow_extra_inputs=True, single_use=False, name=name)


# ---------------------------------------------------------------- Gemm + activation -> FusedGemm

def _gemm_act_check(m) -> str | None:
    gemm = m.nodes["gemm"]
    if gemm.domain not in (None, "", "ai.onnx"):
        return "Gemm is not a standard Gemm"
    if m.opset < 7:
        return "Gemm before opset 7 needs the broadcast attribute"
    if m.root.op not in GEMM_ACTIVATIONS:
        return f"FusedGemm does not execute {m.root.op}"
    return _float32_node(gemm)


def _gemm_act(m):
    gemm = m.nodes["gemm"]
    name, params = _activation(m, m.root)
    attrs = dict(gemm.attrs, activation=name)
    for key, value in zip(("activation_alpha", "activation_beta"), params):
        attrs[key] = float(value)
    inputs = [t for t in gemm.inputs if not t.is_empty()]
    return emit(m, "FusedGemm", inputs, attrs, **out_like(m))


# ---------------------------------------------------------------- x * Sigmoid(x) -> QuickGelu(alpha=1)

def _silu_check(m) -> str | None:
    x = m["x"]
    if x.dtype is None or np.dtype(x.dtype) != np.float32:
        return "not float32 (ORT's CPU QuickGelu is float32 only)"
    return None


def _silu(m):
    return emit(m, "QuickGelu", [m["x"]], {"alpha": 1.0}, **out_like(m))  # x * sigmoid(alpha * x)


ACTIVATION_RULES = [
    Rule("conv-activation", Op(CONV_ACTIVATIONS, Op("Conv", Var("x"), Var("w"), allow_extra_inputs=True, name="conv"),
                               allow_extra_inputs=True),
         _conv_act, _conv_act_check),  # Act(Conv(x, W, B)) -> FusedConv(x, W, B, activation=Act)
    Rule("conv-add-activation", Op(CONV_ACTIVATIONS, Op(("Add", "Sum"), Op("Conv", Var("x"), Var("w"), allow_extra_inputs=True,
                                                                  name="conv"), Var("z"), commutative=True),
                                   allow_extra_inputs=True),
         _conv_add_act, _conv_add_act_check),  # Act(Conv(x, W, B) + z) -> FusedConv(x, W, B, z, activation=Act)
    Rule("conv-hardswish", Op("Mul", _conv("conv"), Op("HardSigmoid", _conv("conv2"), name="hs"), commutative=True),
         lambda m: _fused_conv(m, "HardSwish", []), _hardswish_check),  # c * HardSigmoid(c) -> FusedConv(HardSwish)
    Rule("gemm-activation", Op(CONV_ACTIVATIONS, Op("Gemm", Var("a"), Var("b"), allow_extra_inputs=True, name="gemm"),
                               allow_extra_inputs=True),
         _gemm_act, _gemm_act_check),  # Act(Gemm(a, b, c)) -> FusedGemm(a, b, c, activation=Act)
    Rule("silu", Op("Mul", Var("x"), Op("Sigmoid", Var("x")), commutative=True), _silu,
         _silu_check),  # x * Sigmoid(x) -> QuickGelu(x, alpha=1)   (SiLU / Swish)
]

for _kind in ("FusedConv", "FusedGemm", "QuickGelu"):
    register_spelling(_kind, "ort", to_domain(ORT, _kind))

register_rules("fuse-activation", ACTIVATION_RULES, level=2,
               produces={"conv-activation": "FusedConv", "conv-add-activation": "FusedConv",
                         "conv-hardswish": "FusedConv", "gemm-activation": "FusedGemm", "silu": "QuickGelu"},
               doc="Conv/Gemm + Relu/Clip/LeakyRelu/Sigmoid/Tanh/HardSigmoid/HardSwish -> FusedConv/FusedGemm, "
                   "x*Sigmoid(x) -> QuickGelu (--target ort, graphopt)")
