"""Reductions, arg-reductions, cumulative ops and the softmax family."""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import axes_of, ints, row_sums, row_sums_fit


def _axes(ins, at, ndim):
    """The axes to reduce, or None for 'reduce nothing' (noop_with_empty_axes with no axes)."""
    if len(ins) > 1 and ins[1] is not None:
        axes = ints(ins[1])
    else:
        axes = at.get("axes") or []
    if not axes:
        return None if at.get("noop_with_empty_axes") else tuple(range(ndim))
    return axes_of(axes, ndim)


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min if dtype.kind in "iu" else False


def _highest(dtype):
    return np.inf if dtype.kind == "f" else np.iinfo(dtype).max if dtype.kind in "iu" else True


def _reduce(op, f, since_list):
    def run(ins, at):
        x = ins[0]
        axes = _axes(ins, at, x.ndim)
        if axes is None:
            return (f(x, None, True, identity=True),)
        return (np.asarray(f(x, axes, bool(at.get("keepdims", 1)))).astype(x.dtype, copy=False),)
    for since in since_list:
        kernel(op, since)(run)


def _sum(x, axes, keep, identity=False):
    return x if identity else np.sum(x, axis=axes, keepdims=keep)


def _mean(x, axes, keep, identity=False):
    return x if identity else np.mean(x, axis=axes, keepdims=keep)


def _prod(x, axes, keep, identity=False):
    return x if identity else np.prod(x, axis=axes, keepdims=keep)


def _max(x, axes, keep, identity=False):
    if identity:
        return x
    return np.max(x, axis=axes, keepdims=keep, initial=_lowest(x.dtype)) if x.size == 0 else \
        np.max(x, axis=axes, keepdims=keep)


def _min(x, axes, keep, identity=False):
    if identity:
        return x
    return np.min(x, axis=axes, keepdims=keep, initial=_highest(x.dtype)) if x.size == 0 else \
        np.min(x, axis=axes, keepdims=keep)


def _l1(x, axes, keep, identity=False):
    return np.abs(x) if identity else np.sum(np.abs(x), axis=axes, keepdims=keep)


def _l2(x, axes, keep, identity=False):
    if identity:
        return np.abs(x)
    return np.sqrt(np.sum(np.square(x.astype(np.float64) if x.dtype.kind in "iu" else x), axis=axes,
                          keepdims=keep))


def _sum_square(x, axes, keep, identity=False):
    return np.square(x) if identity else np.sum(np.square(x), axis=axes, keepdims=keep)


def _log_sum(x, axes, keep, identity=False):
    return np.log(x) if identity else np.log(np.sum(x, axis=axes, keepdims=keep))


def _log_sum_exp(x, axes, keep, identity=False):
    if identity:
        return x
    if x.size == 0:
        return np.log(np.sum(np.exp(x), axis=axes, keepdims=keep))
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    s = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return s if keep else np.squeeze(s, axis=axes)


for _op, _f in {"ReduceMean": _mean, "ReduceMax": _max, "ReduceMin": _min, "ReduceProd": _prod,
                "ReduceL1": _l1, "ReduceL2": _l2, "ReduceSumSquare": _sum_square, "ReduceLogSum": _log_sum,
                "ReduceLogSumExp": _log_sum_exp}.items():
    _reduce(_op, _f, [1, 18])
_reduce("ReduceSum", _sum, [1, 13])


def _arg(op, f):
    def run(ins, at):
        x = ins[0]
        axis = at["axis"] % max(x.ndim, 1)
        if at.get("select_last_index"):
            flipped = np.flip(x, axis)
            idx = x.shape[axis] - 1 - f(flipped, axis=axis)
        else:
            idx = f(x, axis=axis)
        if at.get("keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return (np.asarray(idx, dtype=np.int64),)
    kernel(op, 1)(run)


_arg("ArgMax", np.argmax)
_arg("ArgMin", np.argmin)


def _cumulative(op, f, since):
    def run(ins, at):
        x = ins[0]
        axis = int(np.asarray(ins[1]).reshape(-1)[0]) % x.ndim
        if at.get("reverse"):
            x = np.flip(x, axis)
        y = f(x, axis=axis, dtype=x.dtype)
        if at.get("exclusive"):
            first = np.take(x, [0], axis=axis)
            neutral = np.zeros_like(first) if f is np.cumsum else np.ones_like(first)
            y = np.concatenate([neutral, np.take(y, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
        if at.get("reverse"):
            y = np.flip(y, axis)
        return (np.ascontiguousarray(y),)
    kernel(op, since)(run)


_cumulative("CumSum", np.cumsum, 11)
_cumulative("CumProd", np.cumprod, 26)


# np.maximum.reduce / np.add.reduce are what np.max / np.sum run, without their Python wrapper
# (several microseconds, more than the arithmetic on an attention block's scores)
def _softmax_last(x, axis):
    e = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    if axis == e.ndim - 1 and row_sums_fit(e):  # e is a fresh array: a GEMV sums its rows (_util.row_sums)
        e /= row_sums(e)[..., None]
    else:
        e /= np.add.reduce(e, axis=axis, keepdims=True)
    return e


def _log_softmax_last(x, axis):
    s = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    return s - np.log(np.add.reduce(np.exp(s), axis=axis, keepdims=True))


def _hardmax(x, axis):
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, 1, axis=axis)
    return out


def _softmax_family(op, f):
    def v13(ins, at):
        x = ins[0]
        return (f(x, at["axis"] % x.ndim if x.ndim else 0).astype(x.dtype, copy=False),)

    def v1(ins, at):  # before 13: the input is coerced to 2-D at `axis`
        x = ins[0]
        axis = at["axis"] % x.ndim if x.ndim else 0
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return (f(flat, 1).reshape(x.shape).astype(x.dtype, copy=False),)
    kernel(op, 1)(v1)
    kernel(op, 13)(v13)


_softmax_family("Softmax", _softmax_last)
_softmax_family("LogSoftmax", _log_softmax_last)
_softmax_family("Hardmax", _hardmax)
