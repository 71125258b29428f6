"""Elementwise math, comparisons, logic, activations (NumPy broadcasting = ONNX multidirectional);
below them, the prepared forms of the unary float ops (in place when the input dies, no wrappers)."""
from __future__ import annotations

import math

import numpy as np

from ..registry import kernel, prepare
from ._inplace import INPLACE_MIN_SIZE, reusable
from ._util import INF, SMALL_SIGMOID, ZERO, clip_ufunc, erf, sigmoid_of_negated, sigmoid_of_negated_clipped


def _unary(op, f, since=1):
    kernel(op, since)(lambda ins, at, f=f: (np.asarray(f(ins[0])),))


def _same(f):
    """f applied in the input's dtype (integer inputs keep their type)."""
    return lambda x: f(x).astype(x.dtype, copy=False)


for _op, _f in {
    "Abs": np.abs, "Neg": np.negative, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
    "Floor": np.floor, "Ceil": np.ceil, "Round": np.round, "Sign": np.sign, "Sin": np.sin,
    "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos, "Atan": np.arctan,
    "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
    "Tanh": np.tanh, "Not": np.logical_not, "IsNaN": np.isnan, "BitwiseNot": np.invert,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Reciprocal": lambda x: np.reciprocal(x) if x.dtype.kind == "f" else (1 / x).astype(x.dtype),
    "Erf": lambda x: erf_interp(x).astype(x.dtype, copy=False),
    "Relu": lambda x: np.maximum(x, x.dtype.type(0)),
    "Sigmoid": lambda x: _sigmoid(x),
    "Softplus": lambda x: (np.logaddexp(0, x.astype(np.float64))).astype(x.dtype),
    "Mish": lambda x: (x * np.tanh(np.logaddexp(0, x.astype(np.float64)))).astype(x.dtype),
    "HardSwish": lambda x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),
}.items():
    _unary(_op, _f)


# erf by linear interpolation in a table of math.erf on [0, 6] (erf(6) is 1.0 in float64): max
# abs error 3e-8, max relative error 1.4e-7 (measured over 3e5 points against math.erf), about
# float32 rounding and as good as the series in _util.erf, in a dozen cheap passes instead of ~50
# (a small tensor's cost is the number of NumPy calls: 2x7x128 values, 68 -> ~15 us)
_ERF_STEP = 1.0 / 2048
_ERF_TABLE = np.array([math.erf(i * _ERF_STEP) for i in range(6 * 2048 + 1)])
_ERF_SLOPE = np.append(np.diff(_ERF_TABLE), 0.0)  # the last entry (erf = 1) is flat to infinity


def erf_interp(x):
    x64 = np.asarray(x, dtype=np.float64)
    u = np.abs(x64)
    u *= 1.0 / _ERF_STEP
    np.minimum(u, _ERF_TABLE.size, out=u)  # inf -> just past the table (NaN stays NaN, and carries through u)
    i = np.fmin(u, _ERF_TABLE.size).astype(np.intp)  # fmin: a NaN's index is the last one, not a bad cast
    u -= i
    y = _ERF_SLOPE.take(i, mode="clip")
    y *= u
    y += _ERF_TABLE.take(i, mode="clip")
    return np.copysign(y, x64, out=y)


def _sigmoid(x):
    x_calc = x.astype(np.float32) if x.dtype == np.float16 else x  # float16's exp(-x) overflows from x < -11 on
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x_calc))).astype(x.dtype, copy=False)


@kernel("Identity")
def identity(ins, at):
    return (ins[0],)


@kernel("IsInf", 10)
def isinf(ins, at):
    x = ins[0]
    pos, neg = at["detect_positive"], at["detect_negative"]
    if pos and neg:
        return (np.isinf(x),)
    if pos:
        return (np.isposinf(x),)
    if neg:
        return (np.isneginf(x),)
    return (np.zeros(x.shape, bool),)


# --- binary arithmetic ------------------------------------------------------------------------
def _binary(op, f, since=1):
    kernel(op, since)(lambda ins, at, f=f: (np.asarray(f(ins[0], ins[1])),))


def _div(a, b):
    if a.dtype.kind in "iu":
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.floor_divide(a, b)
            if a.dtype.kind == "i":  # C semantics: truncate toward zero
                q = q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))
        return q.astype(a.dtype)
    return np.divide(a, b)


def _pow(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind == "f":
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    if a.dtype.kind in "iu":
        return np.power(a, b.astype(a.dtype))
    return np.power(a, b.astype(a.dtype) if b.dtype.kind != "f" or b.dtype != a.dtype else b).astype(a.dtype)


for _op, _f in {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "Equal": np.equal, "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
    "LessOrEqual": np.less_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
    "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
}.items():
    _binary(_op, _f)


@kernel("Mod", 10)
def mod(ins, at):
    a, b = ins
    if at["fmod"] or a.dtype.kind == "f":
        return (np.fmod(a, b) if at["fmod"] else np.mod(a, b),)
    return (np.mod(a, b),)


@kernel("BitShift", 11)
def bitshift(ins, at):
    a, b = ins
    f = np.left_shift if at["direction"] == "LEFT" else np.right_shift
    return (f(a, b.astype(a.dtype)),)


def _variadic(op, f, since=1):
    def run(ins, at):
        xs = [x for x in ins if x is not None]
        acc = xs[0]
        for x in xs[1:]:
            acc = f(acc, x)
        return (np.asarray(acc),)
    kernel(op, since)(run)


_variadic("Max", np.maximum)
_variadic("Min", np.minimum)
_variadic("Sum", np.add)


@kernel("Mean")
def mean(ins, at):
    xs = [x for x in ins if x is not None]
    acc = xs[0]
    for x in xs[1:]:
        acc = acc + x
    return (np.asarray(acc / len(xs)).astype(xs[0].dtype),)


@kernel("Where", 9)
def where(ins, at):
    c, x, y = ins
    return (np.where(c, x, y),)


@kernel("Clip", 1)
def clip_v1(ins, at):
    x = ins[0]
    lo = at.get("min") if at.get("min") is not None else -np.inf
    hi = at.get("max") if at.get("max") is not None else np.inf
    return (np.clip(x, lo, hi).astype(x.dtype),)


@kernel("Clip", 11)
def clip(ins, at):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    out = x
    if lo is not None:
        out = np.maximum(out, lo)
    if hi is not None:
        out = np.minimum(out, hi)
    return (np.asarray(out, dtype=x.dtype),)


# --- activations with attributes --------------------------------------------------------------
@kernel("LeakyRelu")
def leaky_relu(ins, at):
    x = ins[0]
    return (np.where(x >= 0, x, x * x.dtype.type(at["alpha"])).astype(x.dtype),)


@kernel("PRelu")
def prelu(ins, at):
    x, slope = ins
    return (np.where(x >= 0, x, x * slope).astype(x.dtype),)


@kernel("Elu")
def elu(ins, at):
    x = ins[0]
    return (np.where(x >= 0, x, at["alpha"] * np.expm1(np.minimum(x, 0))).astype(x.dtype),)


@kernel("Celu", 12)
def celu(ins, at):
    x, a = ins[0], at["alpha"]
    return ((np.maximum(x, 0) + np.minimum(0, a * np.expm1(np.minimum(x, 0) / a))).astype(x.dtype),)


@kernel("Selu")
def selu(ins, at):
    x = ins[0]
    y = at["gamma"] * np.where(x > 0, x, at["alpha"] * np.expm1(np.minimum(x, 0)))
    return (y.astype(x.dtype),)


@kernel("ThresholdedRelu", 10)
def thresholded_relu(ins, at):
    x = ins[0]
    return (np.where(x > at["alpha"], x, 0).astype(x.dtype),)


@kernel("HardSigmoid")
def hard_sigmoid(ins, at):
    x = ins[0]
    return (np.clip(at["alpha"] * x + at["beta"], 0, 1).astype(x.dtype),)


@kernel("Shrink", 9)
def shrink(ins, at):
    x, lambd, bias = ins[0], at["lambd"], at["bias"]
    y = np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))
    return (y.astype(x.dtype),)


@kernel("Gelu", 20)
def gelu(ins, at):
    x = ins[0]
    x64 = x.astype(np.float64)
    if at["approximate"] == "tanh":
        y = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    else:
        y = 0.5 * x64 * (1 + erf(x64 / np.sqrt(2)))
    return (y.astype(x.dtype),)


@kernel("Swish", 24)
def swish(ins, at):
    x = ins[0]
    return ((x * _sigmoid(x * x.dtype.type(at["alpha"]))).astype(x.dtype),)


# ------------------------------------------------------------ Unary float ops with the least Python per call (registry.prepare hooks).
#
# The generic unary kernel is `np.asarray(f(x))` behind a lambda; on a tensor of a few dozen values
# the ufunc itself costs ~0.5-1 us and everything around it is overhead. These hooks call the ufunc
# directly, write into the input when it dies here and is not tiny (_inplace.reusable: no
# allocation, the buffer stays in cache), and pass constants to ufuncs as 0-d arrays of the input's dtype: a Python scalar
# operand costs ~1.3 us of conversion per call, a 0-d array of the same dtype nothing, and gives
# the same result (NEP 50: a Python scalar takes the array's dtype). Only float16/32/64 take the
# fast path; other dtypes (integers, bfloat16, ...) keep the generic kernel.

_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))
_SIGMOID_FLOATS = frozenset(np.dtype(t) for t in (np.float32, np.float64))  # float16: generic (float32 math)

# op -> ufunc whose float result is the generic kernel's (elementwise._prepared_unary's table)
_UFUNCS = {"Abs": np.abs, "Neg": np.negative, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
           "Floor": np.floor, "Ceil": np.ceil, "Tanh": np.tanh, "Reciprocal": np.reciprocal,
           "Sin": np.sin, "Cos": np.cos}


def _prepared_unary(ufunc, every_dtype):
    """every_dtype: the generic kernel is np.asarray(ufunc(x)) for all dtypes, so a small input
    runs that here (one call less) rather than through the generic kernel."""
    def prep(at, consts, generic):
        asarray = np.asarray

        def run(args, at):
            # before binding args[0] to a name (a local is one more reference)
            if args[0].size < INPLACE_MIN_SIZE:
                return (asarray(ufunc(args[0])),) if every_dtype else generic(args, at)
            if reusable(args, 0):
                x = args[0]
                if x.dtype in _FLOATS:
                    return (ufunc(x, x),)  # out positionally: no keyword parsing
            return generic(args, at)
        return run
    return prep


for _op, _uf in _UFUNCS.items():
    prepare(_op, 6)(_prepared_unary(_uf, every_dtype=_op != "Reciprocal"))  # Reciprocal: integers differ


@prepare("Relu", 6)
def prepare_relu(at, consts, generic):
    def relu(args, at):
        if args[0].size >= INPLACE_MIN_SIZE and reusable(args, 0):
            x = args[0]
            dt = x.dtype
            if dt in _FLOATS:  # the clip ufunc, as conv_activation.py's Relu (cheaper than np.maximum in place)
                return (clip_ufunc(x, ZERO[dt], INF[dt], x),)
        else:
            x = args[0]
            dt = x.dtype
            if type(x) is np.ndarray and dt in _FLOATS and x.ndim:
                return (np.maximum(x, ZERO[dt]),)  # the generic kernel's operation, exactly
        return generic(args, at)
    return relu


@prepare("Sigmoid", 6)
def prepare_sigmoid(at, consts, generic):
    def sigmoid(args, at):
        if args[0].size < SMALL_SIGMOID:
            x = args[0]
            if type(x) is np.ndarray and x.dtype in _SIGMOID_FLOATS and x.ndim:
                return (sigmoid_of_negated_clipped(np.negative(x)),)
        elif reusable(args, 0):
            x = args[0]
            if x.dtype in _SIGMOID_FLOATS:
                return (sigmoid_of_negated(np.negative(x, x)),)
        else:
            x = args[0]
            if type(x) is np.ndarray and x.dtype in _SIGMOID_FLOATS:
                return (sigmoid_of_negated(np.negative(x)),)
        return generic(args, at)
    return sigmoid
