"""O2 the SiLU-gated MLP's gate (Llama/Mistral/Qwen `act(gate_proj(x)) * up_proj(x)`) as one op for the
graphopt target:

    QuickGelu(g; alpha=1) * u        (SiLU, fused from g * Sigmoid(g) by fuse-activation)
        -> ai.graphopt SiluMul(g, u) = g * sigmoid(g) * u

One planned step and one temporary fewer per MLP in graphopt's runtime. No ONNX or ORT op computes it,
so the other targets keep QuickGelu + Mul. Legal when g and u have one known shape (the op does not
broadcast) and a float dtype.
"""
from __future__ import annotations

import numpy as np

from graphopt.compiler.pass_manager import register_rules
from graphopt.compiler.rewrite import Op, Rule, Var, attr_value

from .common import out_like
from .lower import FUSED, emit

FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _check(m) -> str | None:
    g, u = m["g"], m["u"]
    if attr_value(m.nodes["act"], "alpha", m.opset) not in (1.0, 1):
        return "QuickGelu's alpha is not 1 (not SiLU)"
    if g.shape is None or u.shape is None or len(g.shape) != len(u.shape) or any(
            a != b or a is None or a == "" for a, b in zip(g.shape, u.shape)):
        return "gate and up are not known to have one shape (the fused op does not broadcast)"
    if g.dtype is None or np.dtype(g.dtype) not in FLOATS or np.dtype(u.dtype) != np.dtype(g.dtype):
        return "gate and up are not of one float dtype"
    return None


GATED_RULES = [Rule("silu-mul", Op("Mul", Op("QuickGelu", Var("g"), domain=FUSED, name="act"), Var("u"),
                                   commutative=True), lambda m: emit(m, "SiluMul", [m["g"], m["u"]], {}, **out_like(m)),
                    _check)]
# SiLU(g) * u -> SiluMul(g, u)   (graphopt target only)

register_rules("fuse-gated-mlp", GATED_RULES, level=2, produces={"silu-mul": "SiluMul"},
               doc="SiLU-gated MLP gate, SiLU(g) * u -> one SiluMul op (target graphopt)")
