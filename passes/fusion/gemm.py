"""O2 Gemm fusions (MatMul + bias -> Gemm, Transpose -> transA/transB, MatMul chains with constant weights)
and exact strength reduction (x / 2^k -> x * 2^-k)."""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.compiler.pass_manager import register_rules
from graphopt.compiler.rewrite import Const, Op, Rule, Var, attr_value

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


# ---------------------------------------------------------------- MatMul(Transpose(a), b) -> Gemm

def _transpose_matmul_check(m) -> str | None:
    a, b = m["a"], m["b"]
    if ir.rank(a) != 2 or ir.rank(b) != 2:
        return "MatMul operands are not both known to be 2-D (Gemm is 2-D only)"
    if not is_float(a) or a.dtype != b.dtype:
        return "not a floating-point MatMul"
    return _swaps_2d(m)


def _transpose_into_matmul(m, flag: str):
    return m.op("Gemm", [m["a"], m["b"]], {flag: 1}, **out_like(m))


# ---------------------------------------------------------------- MatMul(MatMul(x, W1), W2) -> MatMul(x, W1 @ W2)

def _chain_weights(m):
    return ir.const_value(m["w1"]), ir.const_value(m["w2"])


def _chain_check(m) -> str | None:
    (w1, w2), x = _chain_weights(m), m["x"]
    if w1 is None or w2 is None:
        return "a weight is not a constant"
    if w1.ndim != 2 or w2.ndim != 2:
        return "weights are not both 2-D"
    if ir.rank(x) is None or ir.rank(x) < 2:
        return "MatMul has a rank-1 (or unknown-rank) operand"
    if not is_float(x) or w1.dtype != w2.dtype or np.dtype(x.dtype) != w1.dtype:
        return "not floating-point weights of the input's dtype"
    (k, mid), n = w1.shape, w2.shape[1]
    if k * n > k * mid + mid * n:
        return f"W1 @ W2 ({k}x{n}) would cost more than the two products ({k}x{mid}, {mid}x{n})"
    return None


def _merge_chain(m):
    w1, w2 = _chain_weights(m)
    w = (w1.astype(np.float64) @ w2.astype(np.float64)).astype(w1.dtype)
    return m.op("MatMul", [m["x"], m.constant(w, "w")], {}, **out_like(m))


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
    Rule("transpose-into-matmul-a", Op("MatMul", Op("Transpose", Var("a"), name="t"), Var("b")),
         lambda m: _transpose_into_matmul(m, "transA"), _transpose_matmul_check),  # Aᵀ @ B -> Gemm(A, B, transA=1)
    Rule("transpose-into-matmul-b", Op("MatMul", Var("a"), Op("Transpose", Var("b"), name="t")),
         lambda m: _transpose_into_matmul(m, "transB"), _transpose_matmul_check),  # A @ Bᵀ -> Gemm(A, B, transB=1)
    Rule("matmul-chain", Op("MatMul", Op("MatMul", Var("x"), Var("w1")), Var("w2")), _merge_chain,
         _chain_check),  # (x @ W1) @ W2 -> x @ (W1 @ W2)   (constant W1, W2; not more work)
]

register_rules("fuse-gemm", GEMM_RULES, level=2,
               doc="MatMul + bias -> Gemm for 2-D inputs; fold Transpose into Gemm/2-D MatMul; merge constant MatMul chains")

DIV_RULES = [
    Rule("div-to-mul", Op("Div", Var("x"), Const("c")), _div_to_mul, _exact_reciprocal),  # x / 2^k -> x * 2^-k
]

register_rules("div-to-mul", DIV_RULES, level=2,
               doc="Division by a power-of-two constant -> multiplication by its (exact) reciprocal")
