"""Normalizations: Batch/Instance/Layer/Group/RMS norm, LRN, Lp, MVN; Dropout.
The layer normalizations of transformers (LayerNormalization, RMSNormalization, their fused and
ORT forms) are in layernorm.py.
"""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import axes_of

def _chan(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@kernel("BatchNormalization", 1)
def batch_norm(ins, at):
    x, scale, bias, mean, var = ins[:5]
    eps = at.get("epsilon", 1e-5)
    training = at.get("training_mode") or 0
    if not training:
        inv = (scale / np.sqrt(var + eps)).astype(x.dtype)
        y = x * _chan(inv, x.ndim) + _chan((bias - mean * inv).astype(x.dtype), x.ndim)
        return (y.astype(x.dtype, copy=False),)
    axes = (0,) + tuple(range(2, x.ndim))
    bm = x.mean(axis=axes)
    bv = x.var(axis=axes)
    y = (x - _chan(bm, x.ndim)) / np.sqrt(_chan(bv, x.ndim) + eps) * _chan(scale, x.ndim) + _chan(bias, x.ndim)
    mom = at.get("momentum", 0.9)
    run_mean = mean * mom + bm * (1 - mom)
    run_var = var * mom + bv * (1 - mom)
    return (y.astype(x.dtype), run_mean.astype(mean.dtype), run_var.astype(var.dtype))


@kernel("InstanceNormalization", 1)
def instance_norm(ins, at):
    x, scale, bias = ins
    axes = tuple(range(2, x.ndim))
    m = x.mean(axis=axes, keepdims=True)
    v = x.var(axis=axes, keepdims=True)
    y = (x - m) / np.sqrt(v + at["epsilon"]) * _chan(scale, x.ndim) + _chan(bias, x.ndim)
    return (y.astype(x.dtype, copy=False),)


def stash_dtype(x, at):
    # copy=False: no caller writes into the stashed array (a float32 input is used as it is)
    return x.astype(np.float32, copy=False) if at.get("stash_type", 1) == 1 and x.dtype != np.float64 else x


def _group_norm(ins, at, per_channel_affine):
    x, scale, bias = ins
    n, c = x.shape[:2]
    g = at["num_groups"]
    xs = stash_dtype(x, at)
    xg = xs.reshape(n, g, -1)
    m = xg.mean(axis=2, keepdims=True)
    v = xg.var(axis=2, keepdims=True)
    y = ((xg - m) / np.sqrt(v + at["epsilon"])).reshape(x.shape)
    if not per_channel_affine:  # opset 18: scale and bias have one value per group
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    y = y * _chan(scale, x.ndim) + _chan(bias, x.ndim)
    return (y.astype(x.dtype, copy=False),)


kernel("GroupNormalization", 18)(lambda ins, at: _group_norm(ins, at, False))


kernel("GroupNormalization", 21)(lambda ins, at: _group_norm(ins, at, True))


@kernel("LRN", 1)
def lrn(ins, at):
    # the window sum over channels as `size` shifted adds (a cumsum difference is slower and loses
    # precision); t ** 0.75, AlexNet's beta, as sqrt(t) * sqrt(sqrt(t)) (pow is several times slower)
    x = ins[0]
    size = at["size"]
    c = x.shape[1]
    before = (size - 1) // 2
    sq = np.square(x, dtype=np.float32 if x.dtype.itemsize < 4 else x.dtype)
    padded = np.zeros((x.shape[0], c + size - 1) + x.shape[2:], sq.dtype)
    padded[:, before:before + c] = sq
    win = padded[:, 0:c].copy()
    for i in range(1, size):
        win += padded[:, i:i + c]
    win *= at["alpha"] / size
    win += at["bias"]
    if at["beta"] == 0.75:
        root = np.sqrt(win)
        np.sqrt(root, out=win)
        win *= root
    else:
        np.power(win, at["beta"], out=win)
    return (np.divide(x, win).astype(x.dtype, copy=False),)


@kernel("LpNormalization", 1)
def lp_normalization(ins, at):
    x, p = ins[0], at.get("p", 2)
    axis = at["axis"]
    norm = np.sum(np.abs(x), axis=axis, keepdims=True) if p == 1 else \
        np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm))
    return (y.astype(x.dtype, copy=False),)


@kernel("MeanVarianceNormalization", 9)
def mvn(ins, at):
    x = ins[0]
    axes = axes_of(at.get("axes") or [0, 2, 3], x.ndim)
    m = x.mean(axis=axes, keepdims=True)
    sd = np.sqrt(np.mean(np.square(x), axis=axes, keepdims=True) - m * m)
    return (((x - m) / (sd + 1e-9)).astype(x.dtype, copy=False),)


@kernel("Dropout", 1)
def dropout(ins, at):
    x = ins[0]
    ratio = float(ins[1]) if len(ins) > 1 and ins[1] is not None else at.get("ratio") or 0.5
    training = bool(ins[2]) if len(ins) > 2 and ins[2] is not None else False
    if not training or ratio == 0:
        return (x, np.ones(x.shape, dtype=bool))
    rng = np.random.default_rng(at.get("seed"))
    mask = rng.uniform(size=x.shape) >= ratio
    return ((x * mask / (1 - ratio)).astype(x.dtype), mask)
