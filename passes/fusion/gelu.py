"""O2 GELU fusions (target-blind: canonical ai.graphopt Gelu / BiasGelu, spelled by lower.py).

GELU is a product of three factors, x, 0.5 and E = 1 + erf(x/sqrt2) (or the tanh form
1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), written in any association and order:

    (x * E) * 0.5      -> Gelu(x)        "gelu[-tanh][-cube]"
    (x * 0.5) * E      -> Gelu(x)        "...-half-first" (also x / 2)
    x * (E * 0.5)      -> Gelu(x)        "...-half-last"  (x * Phi(x))
    Gelu(x + bias)     -> BiasGelu(x, bias)   (targets ort, graphopt)

erf's argument may be x / sqrt2 or x * 0.7071..; x^3 may be Pow(x, 3) or x*x*x. Constants must be
within float tolerance of the exact values. x * sigmoid(1.702 x) is a different function and stays.
"""
from __future__ import annotations

import math

import numpy as np

from graphopt import ir
from graphopt.compiler.rewrite import Const, Op, Rule, Var

from .common import axis_vector, is_float, near, out_like, scalar_like
from graphopt.compiler.pass_manager import register_rules

from .lower import FUSED, emit

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715
ONE = Const(1.0, rtol=0.0, atol=1e-7)  # the 1 in (1 + erf/tanh)


def _erf_factor():
    return Op("Add", Op("Erf", Op(("Div", "Mul"), Var("x"), Const("k"), commutative=True, name="arg")), ONE)


def _tanh_factor(cube):
    poly = Op("Add", Var("x"), Op("Mul", cube, Const("c")))
    return Op("Add", Op("Tanh", Op("Mul", poly, Const("k"))), ONE)


FACTORS = {  # name suffix -> (E pattern, approximate)
    "": (_erf_factor, "none"),
    "-tanh": (lambda: _tanh_factor(Op("Pow", Var("x"), Const("three"))), "tanh"),
    "-tanh-cube": (lambda: _tanh_factor(Op("Mul", Op("Mul", Var("x"), Var("x")), Var("x"))), "tanh"),
}


def _arrangements(factor):
    x, half = Var("x"), Const("half")
    return {
        "": Op("Mul", Op("Mul", x, factor()), half),
        "-half-first": Op("Mul", Op(("Mul", "Div"), x, half, commutative=True, name="halve"), factor()),
        "-half-last": Op("Mul", x, Op("Mul", factor(), half)),
    }


def _gelu_check(m) -> str | None:
    x = m["x"]
    if not is_float(x):
        return "input is not floating point"
    names = list(m.consts)
    if not all(scalar_like(m.const(n), x) for n in names):
        return "a constant is not a scalar (it could broadcast x)"
    if any(m.const(n).dtype != np.dtype(x.dtype) for n in names if n != "three"):
        return "dtypes differ"
    halve = m.nodes.get("halve")
    if halve is not None and halve.op == "Div":
        if halve.inputs[0] is not x or not near(m.const("half"), 2.0, 1e-7):
            return "x is divided by something other than 2"
    elif not near(m.const("half"), 0.5, 1e-7):
        return f"the factor {m.const('half').reshape(-1)[:1]} is not 0.5"
    if "c" not in m.consts:  # erf form
        arg = m.nodes["arg"]
        if arg.op == "Div" and arg.inputs[0] is not x:
            return "erf argument divides a constant by x"
        want = SQRT2 if arg.op == "Div" else 1 / SQRT2
        if not near(m.const("k"), want):
            return (f"erf argument is x {'/' if arg.op == 'Div' else '*'} {m.const('k').reshape(-1)[:1]}, "
                    "not the GELU constant")
        return None
    if not near(m.const("k"), SQRT_2_OVER_PI):
        return f"tanh scale {m.const('k').reshape(-1)[:1]} is not sqrt(2/pi)"
    if not near(m.const("c"), TANH_CUBIC):
        return f"cubic coefficient {m.const('c').reshape(-1)[:1]} is not 0.044715"
    if "three" in m.consts and not near(m.const("three").astype(np.float64), 3.0, 0):
        return "the power is not 3"
    return None


def _gelu(approximate: str):
    attrs = {} if approximate == "none" else {"approximate": approximate}
    return lambda m: emit(m, "Gelu", [m["x"]], attrs, **out_like(m))


# ---------------------------------------------------------------- Gelu(x + bias) -> BiasGelu

def _bias_check(m) -> str | None:
    x, bias = m["x"], m.const("bias")
    if not is_float(x) or bias.dtype != np.dtype(x.dtype):
        return "not a floating-point Add with a bias of the same dtype"
    rank = ir.rank(x)
    if rank is None or x.shape[-1] is None or not isinstance(x.shape[-1], int):
        return "the last dim of the Add's input is unknown"
    if axis_vector(bias, rank, -1, x.shape[-1]) is None or bias.ndim != 1:
        return "bias is not a vector over the last axis (it could broadcast x)"
    gelu = m.nodes["gelu"]
    approximate = gelu.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        return f"Gelu approximate={approximate!r} is unknown"
    return None


def _bias_gelu(m):
    gelu = m.nodes["gelu"]
    attrs = {k: v for k, v in gelu.attrs.items() if k == "approximate" and v != "none"}
    bias, x = m["bias"], m["x"]
    if m.const("bias").shape != (x.shape[-1],):  # a broadcast [1] bias: ORT's BiasGelu/FastGelu need one per channel
        bias = m.constant(axis_vector(m.const("bias"), ir.rank(x), -1, x.shape[-1]), "bias")
    return emit(m, "BiasGelu", [x, bias], attrs, **out_like(m))


# ---------------------------------------------------------------- the rules

GELU_RULES = [Rule("gelu" + f + a, pattern, _gelu(approx), _gelu_check)
              for f, (factor, approx) in FACTORS.items() for a, pattern in _arrangements(factor).items()]
GELU_RULES += [Rule("bias-gelu", Op("Gelu", Op("Add", Var("x"), Const("bias"), commutative=True), domain=d,
                                    name="gelu"), _bias_gelu, _bias_check)  # Gelu(x + b) -> BiasGelu(x, b)
               for d in ("", FUSED)]

PRODUCES = {r.name: "BiasGelu" if r.name == "bias-gelu" else "Gelu" for r in GELU_RULES}

register_rules("fuse-gelu", GELU_RULES, level=2, produces=PRODUCES,
               doc="erf/tanh GELU spellings -> Gelu, Gelu(x+b) -> BiasGelu "
                   "(onnx target: Gelu >= 20; x*sigmoid(1.702x) is not GELU and stays)")
