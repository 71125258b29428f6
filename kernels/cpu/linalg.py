"""MatMul, Gemm, Einsum and friends."""
from __future__ import annotations

import numpy as np

from ..registry import kernel


@kernel("MatMul", 1)
def matmul(ins, at):
    a, b = ins
    if a.dtype.itemsize == 2 and a.dtype.kind != "i" and a.dtype.kind != "u":
        # float16 / bfloat16: NumPy has no BLAS path for them; accumulate in float32 like ORT does
        return (np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype),)
    return (np.matmul(a, b),)


@kernel("Gemm", 1)
def gemm(ins, at):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if at.get("transA"):
        a = a.T
    if at.get("transB"):
        b = b.T
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    y = a @ b
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    if c is not None:
        y = y + (c * c.dtype.type(beta) if beta != 1.0 else c)
    return (y.astype(a.dtype, copy=False),)


@kernel("Einsum", 12)
def einsum(ins, at):
    eq = at["equation"].replace(" ", "")
    x0 = ins[0]
    if x0.dtype.kind not in "fiucb" or x0.dtype.name == "bfloat16":
        ins = [x.astype(np.float32) for x in ins]
    return (np.asarray(np.einsum(eq, *ins, optimize=len(ins) > 2)).astype(x0.dtype, copy=False),)


@kernel("MatMulInteger", 10)
def matmul_integer(ins, at):
    a, b = ins[0].astype(np.int32), ins[1].astype(np.int32)
    if len(ins) > 2 and ins[2] is not None:
        za = ins[2].astype(np.int32)
        a = a - (za.reshape(-1, 1) if za.ndim == 1 and za.size > 1 else za)
    if len(ins) > 3 and ins[3] is not None:
        b = b - ins[3].astype(np.int32)
    return (np.matmul(a, b).astype(np.int32),)


@kernel("Det", 11)
def det(ins, at):
    x = ins[0]
    return (np.linalg.det(x).astype(x.dtype),)


# ONNX Runtime's com.microsoft FusedMatMul (its MatMul + Transpose/Mul fusion)
def _fused_matmul(ins, at):
    """alpha * op(A) @ op(B), op transposing the last two axes (ORT's MatMul + Transpose/Mul fusion)."""
    a, b = ins[0], ins[1]
    if at.get("transA") and a.ndim >= 2:
        a = np.swapaxes(a, -1, -2)
    if at.get("transB") and b.ndim >= 2:
        b = np.swapaxes(b, -1, -2)
    y = np.matmul(a, b)
    alpha = at.get("alpha", 1.0)
    return (y if alpha == 1.0 else (y * y.dtype.type(alpha)).astype(y.dtype, copy=False),)


def _refuse_fused_matmul(at, inputs, outputs):
    return "transBatchA/transBatchB" if at.get("transBatchA") or at.get("transBatchB") else None


_fused_matmul.refuse = _refuse_fused_matmul
kernel("FusedMatMul", 1, domain="com.microsoft")(_fused_matmul)
