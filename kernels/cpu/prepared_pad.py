"""Build-time specialization of Pad with constant pads (and value and axes, when given).

The generic kernel calls np.pad, a Python function that costs ~20-100 us per call whatever the
size (it validates and broadcasts its arguments, then pads one axis at a time), more than the
convolution that follows a small reflect-pad (an audio model's STFT front end). Here everything
that depends only on the input shape is worked out once per shape: constant mode is an empty
array, one fill and one copy of x into its interior; edge/reflect/wrap are one gather (np.take)
per padded axis with the source index of every output position, taken from np.pad itself on
np.arange, so the modes' rules are np.pad's, as in the generic kernel. Negative pads (crops)
keep the generic kernel.
"""
from __future__ import annotations

import numpy as np

from ..registry import DYNAMIC, prepare
from ._util import axes_of, remember


@prepare("Pad", 11)
def prepare_pad(at, consts, generic):
    pads = consts[1]
    value = consts[2] if len(consts) > 2 else None
    axes = consts[3] if len(consts) > 3 else None
    if not isinstance(pads, np.ndarray) or value is DYNAMIC or axes is DYNAMIC:
        return None
    if value is not None and value.size == 0:
        value = None
    mode = at.get("mode") or "constant"
    per_shape: dict = {}

    def pad(args, at):
        x = args[0]
        if type(x) is not np.ndarray:
            return generic(args, at)
        key = (x.shape, x.dtype)
        plan = per_shape.get(key)
        if plan is None:
            plan = remember(per_shape, key, _plan(x, pads, value, axes, mode))
        if not plan:  # a crop, or an axis the generic kernel must reject
            return generic(args, at)
        if mode == "constant":
            out_shape, interior, fill = plan
            y = np.empty(out_shape, x.dtype)
            y.fill(fill)
            y[interior] = x
            return (y,)
        for axis, index in plan:  # at least one padded axis (no padding at all: the generic kernel)
            x = x.take(index, axis)
        return (x,)
    return pad


def _plan(x, pads, value, axes, mode):
    """Constant mode: (output shape, interior index, fill value); other modes: [(axis, source
    index per output position)] for the padded axes; False for what the generic kernel handles."""
    try:
        axes = axes_of(axes, x.ndim) if axes is not None else tuple(range(x.ndim))
    except (ValueError, IndexError, TypeError):
        return False
    flat = [int(p) for p in pads.reshape(-1)]
    n = len(axes)
    if len(flat) != 2 * n or min(flat, default=0) < 0 or len(set(axes)) != n:
        return False
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a] = (flat[i], flat[i + n])
    if mode == "constant":
        out_shape = tuple(d + b + e for d, (b, e) in zip(x.shape, width))
        interior = tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, width))
        fill = np.zeros((), x.dtype) if value is None else np.asarray(value).reshape(-1)[:1].astype(x.dtype)[0]
        return out_shape, interior, fill
    if mode not in ("edge", "reflect", "wrap"):
        return False
    takes = []
    for a, (b, e) in enumerate(width):
        if b or e:
            if x.shape[a] == 0:
                return False  # nothing to repeat: np.pad's error, from the generic kernel
            takes.append((a, np.pad(np.arange(x.shape[a]), (b, e), mode=mode)))
    return takes
