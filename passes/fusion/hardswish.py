"""O2: HardSwish / HardSigmoid written out with Add, Clip and Div -> the ONNX ops.

Exporters without the ops (Paddle's p2o, TF, older PyTorch) spell hard_swish(x) = x * relu6(x + 3) / 6
as Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) (or * 1/6, or x * (relu6(x + 3) / 6)): four nodes
around every activation of a MobileNetV3/PP-LCNet, which also keep the Conv before them unfused.
  relu6(x + 3) / 6       -> HardSigmoid(x; alpha=1/6, beta=1/2)       (opset >= 6)
  x * relu6(x + 3) / 6   -> HardSwish(x) (opset >= 14), else x * HardSigmoid(x) (then fuse-activation
                            folds either into a FusedConv when x is a Conv output)
  x * HardSigmoid(x; 1/6, 1/2) -> HardSwish(x)                         (opset >= 14)
Same function; the rounding differs in the last bits (x / 6 + 1/2 is clamped to [0, 1] instead of x + 3
to [0, 6], then scaled), as for the other O2 fusions.
"""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.compiler.pass_manager import register_rules
from graphopt.compiler.rewrite import (
    Const,
    Op,
    Rule,
    Var,
    attr_value,
    same_shape_after_broadcast,
)

from .common import near, optional_input, out_like


def _relu6_of_x_plus_3(name="clip") -> Op:
    return Op("Clip", Op("Add", Var("x"), Const("three"), commutative=True, name="add"), allow_extra_inputs=True,
              name=name)


def _bounds(m, clip) -> tuple[float, float] | None:
    if m.opset < 11:
        lo, hi = attr_value(clip, "min", m.opset), attr_value(clip, "max", m.opset)
        return None if lo is None or hi is None else (float(lo), float(hi))
    values = [ir.const_value(t) if t is not None else None for t in (optional_input(clip, 1), optional_input(clip, 2))]
    if any(v is None or v.size != 1 for v in values):
        return None
    return float(values[0].reshape(-1)[0]), float(values[1].reshape(-1)[0])


def _scaled_by_sixth(m) -> bool:
    """The scale step is a division by 6 or a multiplication by 1/6 (a single value)."""
    scale = m.nodes["scale"]
    c = m.const("six")
    if c.size != 1 or not same_shape_after_broadcast(m["x"], c):
        return False
    want = 6.0 if scale.op == "Div" else 1.0 / 6
    return near(c.astype(np.float64).reshape(-1), want, 1e-6)


def _check(m) -> str | None:
    x = m["x"]
    if x.dtype is None or np.dtype(x.dtype).kind != "f":
        return "not a floating-point tensor"
    three = m.const("three")
    if three.size != 1 or not same_shape_after_broadcast(x, three) or not near(three.astype(np.float64).reshape(-1), 3.0, 1e-6):
        return "the Add is not x + 3"
    if _bounds(m, m.nodes["clip"]) != (0.0, 6.0):
        return "the Clip is not relu6 (bounds 0, 6)"
    if not _scaled_by_sixth(m):
        return "the scale is not / 6 (or * 1/6)"
    return None


def _hard_sigmoid(m, x, **out):
    return m.op("HardSigmoid", [x], {"alpha": 1.0 / 6, "beta": 0.5}, **out)


def _to_hard_sigmoid(m):
    return _hard_sigmoid(m, m["x"], **out_like(m))


def _to_hard_swish(m):
    x = m["x"]
    if m.opset >= 14:
        return m.op("HardSwish", [x], {}, **out_like(m))
    gate = _hard_sigmoid(m, x, dtype=x.dtype, shape=x.shape)
    return m.op("Mul", [x, gate], {}, **out_like(m))


def _scale(inner: Op) -> tuple[Op, ...]:
    """inner / 6 and inner * (1/6)."""
    return (Op("Div", inner, Const("six"), name="scale"),
            Op("Mul", inner, Const("six"), commutative=True, name="scale"))


def _gate_check(m) -> str | None:
    hs = m.nodes["gate"]
    alpha, beta = attr_value(hs, "alpha", m.opset), attr_value(hs, "beta", m.opset)
    if not (abs(alpha - 1.0 / 6) <= 1e-6 and abs(beta - 0.5) <= 1e-6):
        return f"HardSigmoid(alpha={alpha}, beta={beta}) is not HardSwish's (1/6, 1/2)"
    return None


HARDSWISH_RULES = [
    *(Rule("decomposed-hardswish", p, _to_hard_swish, _check, min_opset=6)   # (x * relu6(x + 3)) / 6
      for p in _scale(Op("Mul", Var("x"), _relu6_of_x_plus_3(), commutative=True))),
    *(Rule("decomposed-hardsigmoid", p, _to_hard_sigmoid, _check, min_opset=6)  # relu6(x + 3) / 6, also
      for p in _scale(_relu6_of_x_plus_3())),                                  # inside x * (relu6(x + 3) / 6)
    Rule("hardswish", Op("Mul", Var("x"), Op("HardSigmoid", Var("x"), name="gate"), commutative=True),
         lambda m: m.op("HardSwish", [m["x"]], {}, **out_like(m)), _gate_check, min_opset=14),  # x * HardSigmoid(x)
]

register_rules("fuse-hardswish", HARDSWISH_RULES, level=2,
               doc="x * relu6(x + 3) / 6 -> HardSwish (x * HardSigmoid before opset 14), relu6(x + 3) / 6 -> HardSigmoid")
