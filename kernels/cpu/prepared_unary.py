"""Unary float ops with the least Python per call (registry.prepare hooks).

The generic unary kernel is `np.asarray(f(x))` behind a lambda; on a tensor of a few dozen values
the ufunc itself costs ~0.5-1 us and everything around it is overhead. These hooks call the ufunc
directly, write into the input when it dies here and is not tiny (_inplace.reusable: no
allocation, the buffer stays in cache), and pass constants to ufuncs as 0-d arrays of the input's dtype: a Python scalar
operand costs ~1.3 us of conversion per call, a 0-d array of the same dtype nothing, and gives
the same result (NEP 50: a Python scalar takes the array's dtype). Only float16/32/64 take the
fast path; other dtypes (integers, bfloat16, ...) keep the generic kernel.
"""
from __future__ import annotations

import numpy as np

from ..registry import prepare
from ._inplace import INPLACE_MIN_SIZE, reusable
from ._util import INF, SMALL_SIGMOID, ZERO, clip_ufunc, sigmoid_of_negated, sigmoid_of_negated_clipped

_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))
_SIGMOID_FLOATS = frozenset(np.dtype(t) for t in (np.float32, np.float64))  # float16: generic (float32 math)

# op -> ufunc whose float result is the generic kernel's (elementwise._unary's table)
_UFUNCS = {"Abs": np.abs, "Neg": np.negative, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
           "Floor": np.floor, "Ceil": np.ceil, "Tanh": np.tanh, "Reciprocal": np.reciprocal,
           "Sin": np.sin, "Cos": np.cos}


def _unary(ufunc, every_dtype):
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
    prepare(_op, 6)(_unary(_uf, every_dtype=_op != "Reciprocal"))  # Reciprocal: integers differ


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
