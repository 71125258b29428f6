"""Conv / Gemm + activation in one kernel: graphopt's ai.graphopt FusedConv and FusedGemm (produced by
`graphopt compile --target graphopt`) and ONNX Runtime's com.microsoft ops of the same names.

    FusedConv(X, W, B?, Z?; Conv attrs, activation, activation_params)   act(Conv(X, W, B) + Z), as ORT's
    FusedGemm(A, B, C?; Gemm attrs, activation, activation_alpha/beta)   act(Gemm(A, B, C)), as ORT's
Conv and Gemm reuse the standard kernels and their build-time weight layout (kernels/cpu/prepared.py).
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import contrib_alias, kernel, prepare
from ._util import clip_ufunc, sigmoid_in_place
from .linalg import gemm as gemm_kernel
from .nn import conv_kernel
from .prepared import prepare_conv, prepare_gemm

DOMAIN = "ai.graphopt"


# ---------------------------------------------------------------- Conv / Gemm + activation

CONV_DEFAULTS = {"group": 1, "strides": None, "dilations": None, "pads": None, "auto_pad": "NOTSET",
                 "kernel_shape": None}
GEMM_DEFAULTS = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}


def _conv_attrs(at):
    return {k: at.get(k, d) if at.get(k) is not None else d for k, d in CONV_DEFAULTS.items()}


def _gemm_attrs(at):
    return {k: at.get(k, d) if at.get(k) is not None else d for k, d in GEMM_DEFAULTS.items()}


def _conv_params(at):
    return at.get("activation") or "Identity", at.get("activation_params") or []


def _gemm_params(at):
    return at.get("activation") or "Identity", [at.get("activation_alpha", 0.01), at.get("activation_beta", 0.5)]


def _activate(y: np.ndarray, name: str, params, c: tuple) -> np.ndarray:
    """ORT's fused activations, computed in y itself (a fresh conv/gemm result), without full-size
    temporaries where possible (HardSwish keeps its gate, LeakyRelu one product). Clamps go through
    the clip ufunc with both bounds, which NumPy 2.4 vectorizes (_util.clip_ufunc): measured on a 64x112x112
    float32 conv output (random values, medians of 25 runs), Relu as np.clip(y, 0, inf) 244 us vs
    np.maximum(y, 0) 631 us; LeakyRelu as max(y, alpha*y)
    766 us vs np.where 4.8 ms. Both exact (a selection); NaN propagates as in ORT. `c`: the constants
    of _constants(name, params, y.dtype)."""
    if name == "Relu" or name == "Clip":
        return clip_ufunc(y, c[0], c[1], y)
    if name == "Sigmoid":
        return sigmoid_in_place(y)
    if name == "LeakyRelu" and 0 <= params[0] <= 1:  # then alpha*y >= y exactly where y < 0
        return np.maximum(y, y * c[0], out=y)
    if name == "HardSigmoid":
        y *= c[0]
        y += c[1]
        return clip_ufunc(y, c[2], c[3], y)
    if name == "HardSwish":
        gate = y * c[0]
        gate += c[1]
        y *= clip_ufunc(gate, c[2], c[3], gate)
        return y
    if name == "Tanh":
        return np.tanh(y, y)
    if name == "LeakyRelu":  # alpha outside [0, 1]: max(y, alpha*y) would pick the wrong side
        return np.where(y < 0, y * c[0], y).astype(y.dtype, copy=False)
    raise ValueError(f"unknown fused activation {name!r}")


def _constants(name: str, params, dtype) -> tuple:
    """An activation's constants as 0-d arrays of the output's dtype: a Python or NumPy scalar operand
    costs a ufunc ~0.5-1.3 us of conversion per call, which is most of the clamp of a small output."""
    values = {"Relu": (0.0, math.inf), "Clip": tuple(params[:2]), "LeakyRelu": tuple(params[:1]),
              "HardSigmoid": (*params[:2], 0.0, 1.0), "HardSwish": (1 / 6, 0.5, 0.0, 1.0)}.get(name, ())
    return tuple(np.full((), v, dtype) for v in values)


class _Activation:
    """A fused node's activation, its constants made once per output dtype."""

    def __init__(self, name: str, params):
        self.name, self.params, self._constants = name, list(params), {}

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.name == "Identity":
            return y
        c = self._constants.get(y.dtype)
        if c is None:
            c = self._constants[y.dtype] = _constants(self.name, self.params, y.dtype)
        return _activate(y, self.name, self.params, c)

    def in_place(self, dtype):
        """fn(y) -> the activation computed in y, its constants bound for `dtype`: a prepared kernel's
        per-call path without the constants lookup (the Relu/Clip clamp called directly); None for
        Identity."""
        if self.name == "Identity":
            return None
        name, params, c = self.name, self.params, _constants(self.name, self.params, dtype)
        if name in ("Relu", "Clip"):
            lo, hi = c
            return lambda y: clip_ufunc(y, lo, hi, y)
        return lambda y: _activate(y, name, params, c)


def _finish(y, z, act: _Activation, dtype):
    """Z and the activation on a conv/gemm result, in place: every conv and gemm path returns a
    fresh array (GEMM output or a new crop), so only a read-only or wrong-dtype result is copied."""
    y = np.array(y, dtype=dtype, copy=True) if not y.flags.writeable or y.dtype != dtype else y
    if z is not None:
        y += z
    return act(y)


@kernel("FusedConv", 1, domain=DOMAIN, shape_from_shapes=True)
def fused_conv(ins, at):
    z = ins[3] if len(ins) > 3 else None
    y = conv_kernel(ins[:3], _conv_attrs(at))[0]
    return (_finish(y, z, _Activation(*_conv_params(at)), ins[0].dtype),)


@prepare("FusedConv", 1, domain=DOMAIN)
def prepare_fused_conv(at, consts, generic):
    """The standard Conv's prepared kernel (weights laid out once), then Z and the activation."""
    conv_at = _conv_attrs(at)
    inner = prepare_conv(conv_at, consts[:3], conv_kernel)
    if inner is None:
        return None
    act = _Activation(*_conv_params(at))
    dt = consts[1].dtype
    fast = act.in_place(dt)

    def run(args, attrs):
        if len(args) > 3:
            return (_finish(inner(args[:3], conv_at)[0], args[3], act, args[0].dtype),)
        y = inner(args, conv_at)[0]
        if y.dtype is dt and args[0].dtype is dt and y.flags.writeable:  # _finish's checks, passed
            return (y if fast is None else fast(y),)
        return (_finish(y, None, act, args[0].dtype),)
    return run


@kernel("FusedGemm", 1, domain=DOMAIN, shape_from_shapes=True)
def fused_gemm(ins, at):
    y = gemm_kernel(ins, _gemm_attrs(at))[0]
    return (_finish(y, None, _Activation(*_gemm_params(at)), ins[0].dtype),)


@prepare("FusedGemm", 1, domain=DOMAIN)
def prepare_fused_gemm(at, consts, generic):
    gemm_at = _gemm_attrs(at)
    inner = prepare_gemm(gemm_at, consts, gemm_kernel)
    if inner is None:
        return None
    act = _Activation(*_gemm_params(at))
    dt = consts[1].dtype
    fast = act.in_place(dt)

    def run(args, attrs):
        y = inner(args, gemm_at)[0]
        if y.dtype is dt and args[0].dtype is dt and y.flags.writeable:  # _finish's checks, passed
            return (y if fast is None else fast(y),)
        return (_finish(y, None, act, args[0].dtype),)
    return run


# ONNX Runtime's com.microsoft FusedConv / FusedGemm: the same attributes and semantics
contrib_alias("FusedConv", fused_conv, prepare_fused_conv)
contrib_alias("FusedGemm", fused_gemm, prepare_fused_gemm)
