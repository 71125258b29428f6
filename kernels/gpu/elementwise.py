"""GPU elementwise ops one at a time (chains of them are fused by codegen.py): CuPy ufuncs, which
are themselves generated elementwise kernels, plus the GELU RawKernel.

Results keep the ONNX output type: CuPy follows NumPy's promotion, and ONNX ops never promote, so
every binary result is cast back to the first input's dtype.
"""
from __future__ import annotations

import numpy as np

import cupy as cp
import cupyx.scipy.special as cps

from ..registry import kernel
from . import cupy_runtime as rt


def _same(fn):
    def run(ins, at):
        x = rt.device(ins[0])
        return (fn(x, at).astype(x.dtype, copy=False),)
    return run


def _binary(fn):
    def run(ins, at):
        a, b = rt.device(ins[0]), rt.device(ins[1])
        return (fn(a, b).astype(a.dtype, copy=False),)
    return run


_UNARY = {
    "Neg": lambda x, a: -x, "Abs": lambda x, a: cp.abs(x), "Exp": lambda x, a: cp.exp(x),
    "Log": lambda x, a: cp.log(x), "Sqrt": lambda x, a: cp.sqrt(x), "Tanh": lambda x, a: cp.tanh(x),
    "Sigmoid": lambda x, a: 1 / (1 + cp.exp(-x)), "Relu": lambda x, a: cp.maximum(x, 0),
    "Reciprocal": lambda x, a: 1 / x, "Floor": lambda x, a: cp.floor(x), "Ceil": lambda x, a: cp.ceil(x),
    "Sin": lambda x, a: cp.sin(x), "Cos": lambda x, a: cp.cos(x), "Erf": lambda x, a: cps.erf(x),
    "Round": lambda x, a: cp.rint(x), "Sign": lambda x, a: cp.sign(x), "Softplus": lambda x, a: cp.log1p(cp.exp(x)),
    "Softsign": lambda x, a: x / (1 + cp.abs(x)), "Not": lambda x, a: cp.logical_not(x),
    "IsNaN": lambda x, a: cp.isnan(x), "Identity": lambda x, a: x,
    "LeakyRelu": lambda x, a: cp.where(x >= 0, x, a["alpha"] * x),
    "Elu": lambda x, a: cp.where(x > 0, x, a["alpha"] * (cp.exp(x) - 1)),
    "HardSigmoid": lambda x, a: cp.clip(a["alpha"] * x + a["beta"], 0, 1),
    "HardSwish": lambda x, a: x * cp.clip(x / 6 + 0.5, 0, 1),
    "Selu": lambda x, a: a["gamma"] * cp.where(x > 0, x, a["alpha"] * (cp.exp(x) - 1)),
    "Mish": lambda x, a: x * cp.tanh(cp.log1p(cp.exp(x))),
}
_SINCE = {"HardSwish": 14, "Mish": 18, "Softplus": 1}
for _op, _fn in _UNARY.items():
    if _op not in ("Not", "IsNaN"):
        kernel(_op, _SINCE.get(_op, 1), device="gpu")(_same(_fn))

_BINARY = {
    "Add": cp.add, "Sub": cp.subtract, "Mul": cp.multiply, "Pow": cp.power,
    # integer Div truncates toward zero (C semantics), unlike floor_divide
    "Div": lambda a, b: cp.trunc(cp.true_divide(a, b)) if a.dtype.kind in "iu" else cp.true_divide(a, b),
}
for _op, _fn in _BINARY.items():
    kernel(_op, 7, device="gpu")(_binary(_fn))

_COMPARE = {"Equal": cp.equal, "Less": cp.less, "Greater": cp.greater, "LessOrEqual": cp.less_equal,
            "GreaterOrEqual": cp.greater_equal, "And": cp.logical_and, "Or": cp.logical_or, "Xor": cp.logical_xor}
for _op, _fn in _COMPARE.items():
    kernel(_op, 7, device="gpu")(lambda ins, at, f=_fn: (f(rt.device(ins[0]), rt.device(ins[1])),))


@kernel("Not", 1, device="gpu")
def not_(ins, at):
    return (cp.logical_not(rt.device(ins[0])),)


@kernel("IsNaN", 9, device="gpu")
def isnan(ins, at):
    return (cp.isnan(rt.device(ins[0])),)


def _variadic(fn):
    def run(ins, at):
        arrs = [rt.device(x) for x in ins if x is not None]
        out = arrs[0]
        for a in arrs[1:]:
            out = fn(out, a)
        return (out.astype(arrs[0].dtype, copy=False),)
    return run


kernel("Sum", 8, device="gpu")(_variadic(cp.add))
kernel("Max", 8, device="gpu")(_variadic(cp.maximum))
kernel("Min", 8, device="gpu")(_variadic(cp.minimum))


@kernel("Where", 9, device="gpu")
def where(ins, at):
    x = rt.device(ins[1])
    return (cp.where(rt.device(ins[0]), x, rt.device(ins[2])).astype(x.dtype, copy=False),)


@kernel("Clip", 11, device="gpu")
def clip(ins, at):
    x = rt.device(ins[0])
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    y = x
    if lo is not None:
        y = cp.maximum(y, rt.device(lo))
    if hi is not None:
        y = cp.minimum(y, rt.device(hi))
    return (y.astype(x.dtype, copy=False),)


@kernel("Clip", 6, device="gpu")
def clip6(ins, at):
    x = rt.device(ins[0])
    return (cp.clip(x, at["min"], at["max"]).astype(x.dtype, copy=False),)


@kernel("Cast", 6, device="gpu")
def cast(ins, at):
    from graphopt.kernels.cpu._util import np_dtype
    to = np_dtype(at["to"])
    if to.kind == "O":
        raise rt.Unsupported("Cast to string has no GPU kernel")
    x = rt.device(ins[0])
    if to == np.dtype(np.bool_):
        return (x != 0,)
    return (x.astype(to),)


@kernel("Gelu", 20, device="gpu")
def gelu(ins, at):
    x = rt.c_contig(rt.device(ins[0]))
    approx = 1 if at.get("approximate") == "tanh" else 0
    if x.dtype == np.float64:  # no custom double kernel: the same formula in CuPy
        if approx:
            return (0.5 * x * (1 + cp.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))),)
        return (0.5 * x * (1 + cps.erf(x * 0.7071067811865476)),)
    y = cp.empty_like(x)
    rt.launch(rt.function("gelu", "go_gelu_" + rt.suffix(x.dtype)), x.size,
              (x, y, np.int64(x.size), np.int32(approx)))
    return (y,)


@kernel("Dropout", 1, device="gpu")  # inference: identity, mask all true
def dropout(ins, at):
    x = rt.device(ins[0])
    outs = [x]
    if at.get("__n_outputs__", 1) > 1:
        outs.append(cp.ones(x.shape, dtype=cp.bool_))
    return outs
