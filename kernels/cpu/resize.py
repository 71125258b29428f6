"""Resize / Upsample (separable: per resized axis, each output a few weighted input taps) and GridSample."""
from __future__ import annotations

import itertools

import numpy as np

from ..registry import contrib_alias, kernel
from ._util import ints


def _cubic(t, a):
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _source_coords(n_out, n_in, scale, mode, roi=None):
    x = np.arange(n_out, dtype=np.float64)
    length = n_in * scale  # the real-valued resized length, as the spec's formulas use it
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adj = n_out / (scale * n_in)
        center = n_in / 2
        return center * (1 - adj) + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if length > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return x * (n_in - 1) / (length - 1) if length > 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if n_out > 1:
            return start * (n_in - 1) + x * (end - start) * (n_in - 1) / (n_out - 1)
        return np.full(n_out, 0.5 * (start + end) * (n_in - 1))
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest(xs, mode):
    if mode == "round_prefer_floor":
        return np.ceil(xs - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(xs + 0.5)
    if mode == "floor":
        return np.floor(xs)
    if mode == "ceil":
        return np.ceil(xs)
    raise ValueError(f"unknown nearest_mode {mode!r}")


def resize_taps(n_out, n_in, scale, at, roi):
    """(index, coeff, outside): output i along the axis is sum_t coeff[i, t] * input[index[i, t]]
    (indices clipped into the input, as the spec's edge padding), and a mask of outputs that
    extrapolate. Nearest mode has one tap of weight 1: a plain selection."""
    xs = _source_coords(n_out, n_in, scale, at["coordinate_transformation_mode"], roi)
    outside = (xs < 0) | (xs > n_in - 1) if at["coordinate_transformation_mode"] == "tf_crop_and_resize" \
        else np.zeros(n_out, bool)
    mode = at["mode"]
    if mode == "nearest":
        idx = np.clip(_nearest(xs, at["nearest_mode"]), 0, n_in - 1).astype(np.intp)
        return idx[:, None], None, outside
    base = np.floor(xs)
    ratio = xs - base
    s = min(scale, 1.0) if at.get("antialias") else 1.0
    if mode == "linear":
        start = int(np.floor(-1 / s) + 1)
        taps = np.arange(start, 2 - start)
        coeff = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * s), 0, 1)
    else:  # cubic
        start = int(np.floor(-2 / s) + 1)
        taps = np.arange(start, 2 - start)
        coeff = _cubic((taps[None, :] - ratio[:, None]) * s, at["cubic_coeff_a"])
    idx = base[:, None].astype(np.intp) + taps[None, :]
    if at.get("exclude_outside"):
        coeff = np.where((idx < 0) | (idx > n_in - 1), 0.0, coeff)
    coeff = coeff / coeff.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), coeff, outside


def _resize_axis(y, a, idx, coeff):
    """Gathers along axis a instead of a dense (n_out, n_in) interpolation matrix: a few taps per
    output (1 nearest, 2 linear, 4 cubic) rather than n_in multiply-adds."""
    if coeff is None:
        return y.take(idx[:, 0], axis=a)
    shape = [1] * y.ndim
    shape[a] = -1
    out = None
    for t in range(idx.shape[1]):
        term = y.take(idx[:, t], axis=a)
        term *= coeff[:, t].astype(y.dtype).reshape(shape)
        out = term if out is None else np.add(out, term, out=out)
    return out


def resize(x, scales, sizes, roi, at):
    nd = x.ndim
    axes = list(range(nd)) if not at.get("axes") else [a % nd for a in at["axes"]]
    full_scales = [1.0] * nd
    out_shape = list(x.shape)
    if sizes is not None and len(sizes):
        sizes = ints(sizes)
        policy = at.get("keep_aspect_ratio_policy") or "stretch"
        if policy != "stretch":
            ratios = [sizes[i] / x.shape[a] for i, a in enumerate(axes)]
            r = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                full_scales[a] = r
                out_shape[a] = int(np.floor(r * x.shape[a] + 0.5))
        else:
            for i, a in enumerate(axes):
                out_shape[a] = sizes[i]
                full_scales[a] = sizes[i] / x.shape[a]
    else:
        sc = [float(v) for v in np.asarray(scales).reshape(-1)]
        for i, a in enumerate(axes):
            full_scales[a] = sc[i]
    rois = [(0.0, 1.0)] * nd
    if roi is not None and np.size(roi):
        r = np.asarray(roi, dtype=np.float64).reshape(-1)
        k = len(r) // 2
        for i, a in enumerate(axes if k == len(axes) else range(nd)):
            rois[a] = (r[i], r[i + k])
    if sizes is None or not len(sizes):
        for a in axes:
            span = rois[a][1] - rois[a][0] if at["coordinate_transformation_mode"] == "tf_crop_and_resize" else 1.0
            out_shape[a] = int(np.floor(x.shape[a] * span * full_scales[a]))
    nearest = at["mode"] == "nearest"  # a selection: any dtype as it is
    y = x if nearest or (x.dtype.kind == "f" and x.dtype.itemsize >= 4) else x.astype(np.float64)
    for a in reversed(range(nd)):
        if out_shape[a] == x.shape[a] and full_scales[a] == 1.0 and rois[a] == (0.0, 1.0):
            continue
        idx, coeff, outside = resize_taps(out_shape[a], x.shape[a], full_scales[a], at, rois[a])
        y = _resize_axis(y, a, idx, coeff)
        if outside.any():
            sel = [slice(None)] * nd
            sel[a] = outside
            y[tuple(sel)] = at.get("extrapolation_value", 0.0)
    if x.dtype.kind in "iu" and not nearest:
        y = np.rint(y)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False)


_LEGACY = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor", "cubic_coeff_a": -0.75,
           "exclude_outside": 0, "extrapolation_value": 0.0}


@kernel("Resize", 11)
def resize_kernel(ins, at):
    x = ins[0]
    roi = ins[1] if len(ins) > 1 else None
    scales = ins[2] if len(ins) > 2 else None
    sizes = ins[3] if len(ins) > 3 else None
    if scales is not None and not np.size(scales):
        scales = None
    return (resize(x, scales, sizes, roi, at),)


@kernel("Resize", 10)
def resize_v10(ins, at):
    return (resize(ins[0], ins[1], None, None, {**_LEGACY, "mode": at["mode"]}),)


@kernel("Upsample", 9)
def upsample(ins, at):
    return (resize(ins[0], ins[1], None, None, {**_LEGACY, "mode": at["mode"]}),)


@kernel("Upsample", 7)
def upsample_v7(ins, at):
    return (resize(ins[0], np.array(at["scales"]), None, None, {**_LEGACY, "mode": at["mode"]}),)


# --- GridSample -------------------------------------------------------------------------------
def _reflect(c, lo, hi):
    span = hi - lo
    if span <= 0:
        return np.zeros_like(c)
    c = np.abs(c - lo) % (2 * span)
    return lo + np.where(c > span, 2 * span - c, c)


@kernel("GridSample", 16)
def grid_sample(ins, at):
    x, grid = ins
    n, c = x.shape[:2]
    sp = x.shape[2:]
    nsp = len(sp)
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(at["mode"], at["mode"])
    pad, align = at["padding_mode"], at["align_corners"]
    coords = []
    for i in range(nsp):  # grid's last axis is (x, y, z...): x indexes the last spatial dim
        g = grid[..., nsp - 1 - i].astype(np.float64)
        size = sp[i]
        p = (g + 1) / 2 * (size - 1) if align else ((g + 1) * size - 1) / 2
        if pad == "border":
            p = np.clip(p, 0, size - 1)
        elif pad == "reflection":
            p = _reflect(p, 0, size - 1) if align else _reflect(p, -0.5, size - 0.5)
        coords.append(p)
    out_sp = grid.shape[1:-1]
    xf = x.reshape(n, c, -1).astype(np.float64)

    def fetch(idx):  # idx: per-dim integer arrays (N, *out); returns (N, C, *out)
        valid = np.ones(idx[0].shape, bool)
        flat = np.zeros(idx[0].shape, np.int64)
        for i, ix in enumerate(idx):
            if pad == "zeros":
                valid &= (ix >= 0) & (ix < sp[i])
            elif pad == "reflection":
                ix = np.rint(_reflect(ix.astype(np.float64), 0, sp[i] - 1) if align else
                             _reflect(ix.astype(np.float64), -0.5, sp[i] - 0.5))
            ix = np.clip(ix, 0, sp[i] - 1).astype(np.int64)
            flat = flat * sp[i] + ix
        vals = np.take_along_axis(xf, flat.reshape(n, 1, -1), axis=2).reshape((n, c) + out_sp)
        return vals * valid.reshape((n, 1) + out_sp)

    if mode == "nearest":
        y = fetch([np.rint(p).astype(np.int64) for p in coords])
    else:
        base = [np.floor(p).astype(np.int64) for p in coords]
        frac = [p - b for p, b in zip(coords, base)]
        taps = range(0, 2) if mode == "linear" else range(-1, 3)
        y = np.zeros((n, c) + out_sp)
        for offs in itertools.product(taps, repeat=nsp):
            wgt = np.ones(base[0].shape)
            for o, f in zip(offs, frac):
                wgt = wgt * (1 - np.abs(o - f) if mode == "linear" else _cubic(o - f, -0.75))
            y += fetch([b + o for b, o in zip(base, offs)]) * wgt.reshape((n, 1) + out_sp)
    return (y.astype(x.dtype),)


# PyTorch exports grid_sample below opset 16 as com.microsoft GridSample: the standard op's semantics
# (GridSample-16), with the same attributes and defaults
contrib_alias("GridSample", grid_sample, defaults={"mode": "bilinear", "padding_mode": "zeros", "align_corners": 0})
