"""Detection and column ops: NonMaxSuppression, RoiAlign, Col2Im, DeformConv."""
from __future__ import annotations

import itertools

import numpy as np

from ..registry import kernel
from ._util import ints


@kernel("NonMaxSuppression", 10)
def non_max_suppression(ins, at):
    boxes, scores = ins[0], ins[1]
    get = lambda i: ins[i] if len(ins) > i and ins[i] is not None and np.size(ins[i]) else None  # noqa: E731
    max_out = int(np.asarray(get(2)).reshape(-1)[0]) if get(2) is not None else 0
    iou_thr = float(np.asarray(get(3)).reshape(-1)[0]) if get(3) is not None else 0.0
    score_thr = float(np.asarray(get(4)).reshape(-1)[0]) if get(4) is not None else None
    b = boxes.astype(np.float64)
    if at.get("center_point_box"):
        xc, yc, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        y1, x1, y2, x2 = yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2
    else:
        y1, x1, y2, x2 = (np.minimum(b[..., 0], b[..., 2]), np.minimum(b[..., 1], b[..., 3]),
                          np.maximum(b[..., 0], b[..., 2]), np.maximum(b[..., 1], b[..., 3]))
    area = (y2 - y1) * (x2 - x1)
    selected = []
    for bi in range(scores.shape[0]):
        # pairwise IoU of this batch's boxes, computed once for all classes
        iy = np.maximum(0, np.minimum(y2[bi][:, None], y2[bi][None]) - np.maximum(y1[bi][:, None], y1[bi][None]))
        ix = np.maximum(0, np.minimum(x2[bi][:, None], x2[bi][None]) - np.maximum(x1[bi][:, None], x1[bi][None]))
        inter = iy * ix
        union = area[bi][:, None] + area[bi][None] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        for ci in range(scores.shape[1]):
            s = scores[bi, ci]
            order = np.argsort(-s, kind="stable")
            if score_thr is not None:
                order = order[s[order] > score_thr]
            keep = []
            for i in order:
                if len(keep) >= max_out:
                    break
                if all(iou[i, k] <= iou_thr for k in keep):
                    keep.append(i)
            selected += [(bi, ci, k) for k in keep]
    return (np.array(selected, dtype=np.int64).reshape(-1, 3),)


def _bilinear_roi(img, y, x):
    """Caffe2/ORT RoiAlign sampling of img (C, H, W) at y (A,) x (B,): four weighted corners (4, C, A, B)."""
    h, w = img.shape[1:]
    vy = (y >= -1) & (y <= h)
    vx = (x >= -1) & (x <= w)
    y = np.maximum(y, 0)
    x = np.maximum(x, 0)
    y_lo = np.floor(y).astype(np.int64)
    x_lo = np.floor(x).astype(np.int64)
    y_edge, x_edge = y_lo >= h - 1, x_lo >= w - 1
    y_lo = np.where(y_edge, h - 1, y_lo)
    x_lo = np.where(x_edge, w - 1, x_lo)
    y = np.where(y_edge, y_lo, y)
    x = np.where(x_edge, x_lo, x)
    y_hi = np.where(y_edge, y_lo, y_lo + 1)
    x_hi = np.where(x_edge, x_lo, x_lo + 1)
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1 - ly, 1 - lx
    valid = (vy[:, None] & vx[None, :])[None]
    corners = []
    for yy, wy in ((y_lo, hy), (y_hi, ly)):
        for xx, wx in ((x_lo, hx), (x_hi, lx)):
            v = img[:, yy[:, None], xx[None, :]] * (wy[:, None] * wx[None, :])[None]
            corners.append(np.where(valid, v, 0.0))
    return np.stack(corners)


@kernel("RoiAlign", 10)
def roi_align(ins, at):
    x, rois, batch_idx = ins
    oh, ow = at["output_height"], at["output_width"]
    scale, ratio = at["spatial_scale"], at["sampling_ratio"]
    half = (at.get("coordinate_transformation_mode") or "half_pixel") == "half_pixel"
    offset = 0.5 if half else 0.0
    out = np.zeros((rois.shape[0], x.shape[1], oh, ow), dtype=np.float64)
    for n, roi in enumerate(rois.astype(np.float64)):
        x1, y1, x2, y2 = roi * scale - offset
        rw, rh = x2 - x1, y2 - y1
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = ratio if ratio > 0 else int(np.ceil(rh / oh))
        gw = ratio if ratio > 0 else int(np.ceil(rw / ow))
        ys = (y1 + np.arange(oh)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh).reshape(-1)
        xs = (x1 + np.arange(ow)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw).reshape(-1)
        corners = _bilinear_roi(x[int(batch_idx[n])].astype(np.float64), ys, xs)  # (4, C, oh*gh, ow*gw)
        c = x.shape[1]
        if at["mode"] == "max":
            v = corners.max(axis=0).reshape(c, oh, gh, ow, gw)
            out[n] = v.max(axis=(2, 4))
        else:
            v = corners.sum(axis=0).reshape(c, oh, gh, ow, gw)
            out[n] = v.sum(axis=(2, 4)) / max(gh * gw, 1)
    return (out.astype(x.dtype),)


@kernel("Col2Im", 18)
def col2im(ins, at):
    cols, image, block = ins[0], ints(ins[1]), ints(ins[2])
    nsp = len(image)
    dil = at.get("dilations") or [1] * nsp
    pads = at.get("pads") or [0] * (2 * nsp)
    strides = at.get("strides") or [1] * nsp
    n = cols.shape[0]
    kk = int(np.prod(block))
    c = cols.shape[1] // kk
    padded = [i + pads[j] + pads[j + nsp] for j, i in enumerate(image)]
    blocks = [(p - (d * (k - 1) + 1)) // s + 1 for p, d, k, s in zip(padded, dil, block, strides)]
    cols = cols.reshape((n, c) + tuple(block) + tuple(blocks))
    y = np.zeros((n, c) + tuple(padded), dtype=cols.dtype)
    for koff in itertools.product(*[range(k) for k in block]):
        dst = (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + s * (L - 1) + 1, s) for o, d, s, L in zip(koff, dil, strides, blocks))
        y[dst] += cols[(slice(None), slice(None)) + koff]
    crop = (slice(None), slice(None)) + tuple(slice(pads[j], pads[j] + image[j]) for j in range(nsp))
    return (np.ascontiguousarray(y[crop]),)


def _sample_linear(xg, coords):
    """Linear interpolation of xg (N, C, *sp) at coords [per dim (N, K, *out)], zero outside."""
    n, c = xg.shape[:2]
    sp = xg.shape[2:]
    flat_x = xg.reshape(n, c, -1)
    base = [np.floor(p).astype(np.int64) for p in coords]
    frac = [p - b for p, b in zip(coords, base)]
    out = np.zeros((n, c) + coords[0].shape[1:], dtype=np.float64)
    m = coords[0][0].size
    for offs in itertools.product((0, 1), repeat=len(sp)):
        idx = [b + o for b, o in zip(base, offs)]
        wgt = np.ones(coords[0].shape)
        valid = np.ones(coords[0].shape, bool)
        flat = np.zeros(coords[0].shape, np.int64)
        for i, (ix, f, o) in enumerate(zip(idx, frac, offs)):
            wgt = wgt * (f if o else 1 - f)
            valid &= (ix >= 0) & (ix < sp[i])
            flat = flat * sp[i] + np.clip(ix, 0, sp[i] - 1)
        vals = np.take_along_axis(flat_x, flat.reshape(n, 1, m), axis=2).reshape(out.shape)
        out += vals * (wgt * valid).reshape((n, 1) + coords[0].shape[1:])
    return out


@kernel("DeformConv", 19)
def deform_conv(ins, at):
    x, w, offset = ins[0], ins[1], ins[2]
    b = ins[3] if len(ins) > 3 else None
    mask = ins[4] if len(ins) > 4 else None
    n, c = x.shape[:2]
    nsp = x.ndim - 2
    oc = w.shape[0]
    kshape = list(at.get("kernel_shape") or w.shape[2:])
    strides = at.get("strides") or [1] * nsp
    dil = at.get("dilations") or [1] * nsp
    pads = at.get("pads") or [0] * (2 * nsp)
    group, og = at.get("group") or 1, at.get("offset_group") or 1
    out = list(offset.shape[2:])
    kk = int(np.prod(kshape))
    off = offset.reshape([n, og, kk, nsp] + out).astype(np.float64)
    msk = mask.reshape([n, og, kk] + out) if mask is not None else np.ones([n, og, kk] + out)
    kidx = np.array(list(itertools.product(*[range(k) for k in kshape])))  # (K, nsp)
    cols = np.zeros((n, c, kk) + tuple(out))
    cpg = c // og
    for g in range(og):
        coords = []
        for i in range(nsp):
            grid = np.arange(out[i]).reshape([1] * (i + 1) + [out[i]] + [1] * (nsp - i - 1))
            base = grid * strides[i] - pads[i] + (kidx[:, i] * dil[i]).reshape([1, kk] + [1] * nsp)
            coords.append(np.broadcast_to(base + off[:, g, :, i], (n, kk) + tuple(out)))
        sampled = _sample_linear(x[:, g * cpg:(g + 1) * cpg].astype(np.float64), coords)
        cols[:, g * cpg:(g + 1) * cpg] = sampled * msk[:, g][:, None]
    p = int(np.prod(out))
    cg, mg = c // group, oc // group
    y = np.matmul(w.reshape(group, mg, cg * kk).astype(np.float64)[None], cols.reshape(n, group, cg * kk, p))
    y = y.reshape((n, oc) + tuple(out))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return (y.astype(x.dtype),)
