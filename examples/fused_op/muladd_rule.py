"""The rule file of a fused op: x * a + b (a, b constants that broadcast into x) -> ai.graphopt MulAdd.

One pass, one rule, one check that says why it refuses. `produces` ties the rule to the canonical
op: the rule runs only for targets that can hold MulAdd (here graphopt, whose runtime has the kernel
in muladd_kernel.py; onnx and ort have no spelling, so `--trace mul-add` says the target lacks it).
A built-in rule file lives in passes/fusion/ and is imported from passes/fusion/__init__.py, whose
order is the pipeline order.
"""
import numpy as np

from graphopt import Const, Op, Rule, Var, register_rules
from graphopt.compiler.rewrite import same_shape_after_broadcast
from graphopt.compiler.targets import emit


def _check(m) -> str | None:
    x = m["x"]
    if x.dtype is None or not np.issubdtype(np.dtype(x.dtype), np.floating):
        return "x is not floating point"
    for name in ("a", "b"):
        if m.const(name).dtype != np.dtype(x.dtype):
            return f"constant {name} has another dtype than x"
        if not same_shape_after_broadcast(x, m.const(name)):
            return f"constant {name} could broadcast x to another shape"
    return None


def _fuse(m):
    out = m.root.outputs[0]
    return emit(m, "MulAdd", [m["x"], m["a"], m["b"]], dtype=out.dtype, shape=out.shape)


RULES = [Rule("mul-add", Op("Add", Op("Mul", Var("x"), Const("a")), Const("b")), _fuse, _check)]  # x*a+b -> MulAdd

register_rules("fuse-muladd", RULES, level=2, produces={"mul-add": "MulAdd"},
               doc="x * a + b with constant a, b -> one MulAdd (--target graphopt)")
