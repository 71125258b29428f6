"""O2 Gemm fusions (MatMul + bias -> Gemm, Transpose -> transA/transB) and exact strength reduction
(x / 2^k -> x * 2^-k)."""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.pass_manager import register_rules
from graphopt.rewrite import Const, Op, Rule, Var, attr_value

from .common import is_float, optional_input, out_like


# ---------------------------------------------------------------- MatMul + Add -> Gemm

def _fits(dim_c: int, dim_out) -> bool:
    """C's dim broadcasts one way onto the output's dim (which must be known unless C's is 1)."""
    return dim_c == 1 or dim_c == dim_out


def _matmul_add_check(m) -> str | None:
    x, w, b = m["x"], m["w"], m.const("b")
    if ir.rank(x) != 2:
        return "MatMul input is not known to be 2-D"
    if ir.rank(w) != 2:
        return "MatMul weight is not known to be 2-D"
    if not is_float(x) or np.dtype(x.dtype) != b.dtype or (w.dtype is not None and np.dtype(w.dtype) != b.dtype):
        return "not a floating-point MatMul with a bias of the same dtype"
    if b.ndim > 2:
        return "bias would raise the rank of the output"
    rows, cols = (1,) * (2 - b.ndim) + tuple(b.shape)
    if not (_fits(rows, x.shape[0]) and _fits(cols, w.shape[1])):
        return "bias does not broadcast one way onto the MatMul output"
    return None


def _matmul_add_to_gemm(m):
    return m.op("Gemm", [m["x"], m["w"], m["b"]], {}, **out_like(m))


# ---------------------------------------------------------------- Transpose -> transA / transB

def _swaps_2d(m) -> str | None:
    perm = attr_value(m.nodes["t"], "perm", m.opset)
    # Gemm inputs are 2-D, so a default (reversing) perm is [1, 0]
    return None if perm is None or list(perm) == [1, 0] else "Transpose perm is not [1, 0]"


def _transpose_into_gemm(m, flag: str):
    gemm = m.root
    attrs = dict(gemm.attrs)
    attrs[flag] = 1 - (attr_value(gemm, flag, m.opset) or 0)
    c = optional_input(gemm, 2)
    inputs = [m["a"], m["b"]] + ([c] if c is not None else [])
    return m.op("Gemm", inputs, attrs, **out_like(m))


# ---------------------------------------------------------------- x / 2^k -> x * 2^-k

def _exact_reciprocal(m) -> str | None:
    x, c = m["x"], m.const("c")
    if not is_float(x) or np.dtype(x.dtype) != c.dtype:
        return "not a floating-point division"
    if c.size == 0 or not np.all(np.isfinite(c)) or np.any(c == 0):
        return "divisor is zero or not finite"
    if np.any(np.abs(np.frexp(c.astype(np.float64))[0]) != 0.5):
        return "divisor is not a power of two (x * 1/c would round differently)"
    r = (1.0 / c.astype(np.float64)).astype(c.dtype)
    if np.any(r.astype(np.float64) * c.astype(np.float64) != 1.0):
        return "reciprocal is not representable"
    return None


def _div_to_mul(m):
    c = m.const("c")
    return m.op("Mul", [m["x"], m.constant((1.0 / c.astype(np.float64)).astype(c.dtype), "recip")], {},
                **out_like(m))


GEMM_RULES = [
    Rule("matmul-add-to-gemm", Op("Add", Op("MatMul", Var("x"), Var("w")), Const("b"), commutative=True),
         _matmul_add_to_gemm, _matmul_add_check, min_opset=7),  # MatMul(x[M,K], W[K,N]) + b -> Gemm(x, W, b)
    Rule("transpose-into-gemm-a", Op("Gemm", Op("Transpose", Var("a"), name="t"), Var("b"), allow_extra_inputs=True),
         lambda m: _transpose_into_gemm(m, "transA"), _swaps_2d),  # Gemm(Aᵀ, B) -> Gemm(A, B, transA^=1)
    Rule("transpose-into-gemm-b", Op("Gemm", Var("a"), Op("Transpose", Var("b"), name="t"), allow_extra_inputs=True),
         lambda m: _transpose_into_gemm(m, "transB"), _swaps_2d),  # Gemm(A, Bᵀ) -> Gemm(A, B, transB^=1)
]

register_rules("fuse-gemm", GEMM_RULES, level=2,
               doc="MatMul + bias -> Gemm for 2-D inputs; fold Transpose into Gemm transA/transB")

DIV_RULES = [
    Rule("div-to-mul", Op("Div", Var("x"), Const("c")), _div_to_mul, _exact_reciprocal),  # x / 2^k -> x * 2^-k
]

register_rules("div-to-mul", DIV_RULES, level=2,
               doc="Division by a power-of-two constant -> multiplication by its (exact) reciprocal")
