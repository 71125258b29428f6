"""Convolutions as "row-wide" im2col + GEMM: depthwise, grouped and dense, 1-D and 2-D.

The plain im2col (prepared.PreparedConv) copies a (C, kh, kw, Ho, Wo) window view whose innermost run
is one output row (Wo elements, 7-28 on MobileNet/ShuffleNet depthwise layers), so the copy is
dominated by per-row overhead, and a depthwise conv is mostly that copy. Here the output is
computed on rows as wide as the input (W) and each channel plane is stored flat with only its
zero rows above and below: for stride 1, kernel offset (i, j) then reads one contiguous run of
Ho*W elements starting at (i*dy)*W + j*dx - pad_left, so the columns are one strided-view copy
with long inner runs, and for "same" padding (Wo == W) the GEMM output is the result, no crop.
A read left of column 0 or right of column W-1 wraps into the neighbouring row; those entries
are the horizontal zero padding and are zeroed in the columns after the copy. Stride sx > 1
splits the input into sx column phases (phase q: columns q, q+sx, ...) so that each offset still
reads contiguous runs; the vertical stride is a row stride of the view. Columns are copied and
multiplied in blocks of groups that stay in cache (BLOCK_BYTES). Small layers spend as much in view
bookkeeping as in arithmetic, so the padded buffer and its views are made once per input geometry
(_Plan).

Measured single-thread float32 against the plain path (interleaved runs on a shared 2-core
machine, lower quartiles): depthwise 3x3 stride 1 1.6-2.2x faster from 7x7 to 112x112 planes
(272x14x14: 631 -> 362 us), 5x5 1.7-3x; depthwise stride 2 1.2-1.5x (on par at 112x56x56);
grouped 3x3 1.6x; dense 3x3 1.1-1.7x, except where Winograd wins (beats_winograd). The result
differs from the plain path's only by float rounding (the GEMM sees other matrix shapes).
"""
from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._scratch import scratch
from ._util import remember

# column-block size for the copy + GEMM, in blocks of groups: past a few MiB the columns leave the
# L3 cache (measured, single thread, depthwise 3x3 / 5x5 against 512 KiB blocks (the size of L2):
# 4 MiB 13-25% faster from 24x56x56 to 128x100x76 and 32x112x112, stride 2 6% faster; 32 MiB,
# i.e. unblocked, 1.7x slower on 128x100x76 5x5). Small layers are one block.
BLOCK_BYTES = 4 << 20
# Winograd F(2x2,3x3) (prepared.PreparedConv) beats this path on dense 3x3 convs once its GEMMs dominate
# its transforms, i.e. with enough channel pairs (C_in * C_out), and when its 2x2 output tiles waste
# little on an odd-sized map. Measured, float32, one thread, Winograd time / this path's: 64x96 at
# 28x28 0.84, 96x96 0.79 at 28x28 and 0.95 at 14x14, 64x128 at 14x14 0.96, 128x64 at 20x20 0.89,
# 128x128 0.75-0.85, 256x128 and up 0.71-0.77; but 64x64 1.15 at 14x14, 1.02 at 16x16 and
# 0.93-0.94 from 40x40 up, 32x64 at 56x56 1.09, 64x32 at 40x40 1.13, 128x32 at 56x56 1.25 (against
# this path's row slabs), and on 13x13 maps (tiles cover 14x14) 48x192 1.18, 64x256 1.04
WINOGRAD_MIN_PAIRS = 6144
WINOGRAD_MIN_CHANNELS_BIG_MAP = 64  # in and out, with WINOGRAD_MIN_WORK pairs x output pixels
# and at most this many output pixels (64x64 channels: Winograd 0.88-0.92x this path's time at
# 56x56, 1.07x at 80x80, 1.13-1.24x from 112x112 to 224x224, where the row slabs stay in cache
# and Winograd's transforms do not; 64x128 at 112x112 0.95x, 128x128 0.77-0.83x)
WINOGRAD_MAX_PIXELS_FEW_PAIRS = 64 * 64
WINOGRAD_MIN_WORK = 8 << 20
WINOGRAD_MIN_TILE_USE = 0.9  # output pixels / pixels the tiles cover
# padded inputs up to this size get a buffer of their own per conv and geometry, zeros written
# once and views made once (that bookkeeping costs more than the arithmetic on small layers);
# bigger ones share a scratch buffer (measured: 0.7-8 MiB per Session on the light zoo models)
OWN_BUFFER_BYTES = 512 * 1024
# a conv whose columns for one group pass SLAB_MIN_BYTES (dense convs on big maps) copies and
# multiplies them in slabs of output rows of about SLAB_BYTES, which stay in cache (measured,
# float32, one thread, 3x3: 96->24 channels at 80x80, 22.7 MB of columns, 5.5 -> 4.5 ms with
# 2.3 MB slabs; 128->32 at 56x56, 15 MB, 3.9 -> 3.6 ms; no gain at 7.5 MB (64->64 at 56x56))
SLAB_MIN_BYTES = 12 << 20
SLAB_BYTES = 2 << 20
MAX_PLANS = 8  # input geometries (x threads) remembered per conv, each holding a padded-input buffer
# a horizontal stride > 1 makes one view (one copy call) per kernel column, where the plain im2col
# makes one copy in all: past this kernel width the calls cost more than the long runs save
# (measured: a 1-D STFT-like conv, kernel 256 stride 128 on 4x832 samples, 688 us row-wide against
# 40 us plain)
MAX_STRIDED_KERNEL_WIDTH = 8


class RowWideConv:
    """A 1-D or 2-D conv with weights laid out as (groups, M/groups, C/groups*kh*kw)."""

    def __init__(self, w_gemm: np.ndarray, kshape, dilations):
        self.w_gemm = w_gemm
        self.group, self.mg, self.ckk = w_gemm.shape
        self.kshape = [1] * (2 - len(kshape)) + list(kshape)
        self.dil = [1] * (2 - len(dilations)) + list(dilations)
        self._plans = {}

    @staticmethod
    def suits(kshape, out_shape, strides) -> bool:
        """Whether a conv takes this path: 1-D/2-D with a kernel larger than 1x1 (pointwise convs
        are one GEMM on the input as is, or one strided copy and a GEMM when strided), and not a
        wide kernel with a horizontal stride (one copy per kernel column)."""
        return len(kshape) in (1, 2) and any(k > 1 for k in kshape) and min(out_shape) > 0 \
            and (strides[-1] == 1 or kshape[-1] <= MAX_STRIDED_KERNEL_WIDTH)

    @staticmethod
    def beats_winograd(c_in: int, c_out: int, out_shape) -> bool:
        pairs, pixels = c_in * c_out, int(np.prod(out_shape))
        covered = int(np.prod([2 * (-(-o // 2)) for o in out_shape]))
        winograd = pixels >= WINOGRAD_MIN_TILE_USE * covered and (pairs >= WINOGRAD_MIN_PAIRS or (
            min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS_BIG_MAP and pairs * pixels >= WINOGRAD_MIN_WORK
            and pixels <= WINOGRAD_MAX_PIXELS_FEW_PAIRS))
        return not winograd

    def __call__(self, x: np.ndarray, begin, end, out_shape, bias, strides=(1, 1)) -> np.ndarray:
        if x.ndim == 3:  # 1-D conv: a 2-D one with a single row
            y = self(x[:, :, None, :], [0] + list(begin), [0] + list(end), [1] + list(out_shape), bias,
                     [1] + list(strides))
            return y.reshape(y.shape[:2] + (y.shape[3],))
        key = (x.shape, x.dtype, tuple(begin), tuple(end), tuple(strides), threading.get_ident())
        plan = self._plans.get(key)
        if plan is None:  # at most MAX_PLANS kept: dynamic shapes keep memory bounded
            plan = remember(self._plans, key, _Plan(self, x.shape, x.dtype, begin, end, out_shape, strides), MAX_PLANS)
        return plan.run(x, bias)


class _Plan:
    """Everything about one input geometry that does not depend on the input values, made on its
    first run: the padded-input layout, the views each kernel offset reads, the wrapped columns.
    A small padded input gets a buffer of its own whose zeros are written once (only the input
    rows are rewritten per run) and whose views are made once; one plan per thread, since every
    run rewrites the buffer. A big one uses a shared scratch buffer, re-zeroed and re-viewed."""

    def __init__(self, conv: RowWideConv, shape, dtype, begin, end, out_shape, strides):
        n, c, h, w = shape
        (kh, kw), (dy, dx), (sy, sx) = conv.kshape, conv.dil, strides
        (pt, pl), pb = begin, end[0]
        ho, wo = out_shape
        wq = -(-w // sx)  # columns per stride phase
        gap = max(pl, end[1])
        # stride 1 with pads of 2+ columns (5x5 kernels): rows `gap` zero columns wider than the
        # input, so that no read wraps into a neighbouring row and no wrapped columns need zeroing
        # in the columns (short strided writes, 2 per side and offset). The output then has garbage
        # columns to crop, one more pass, which costs 3x3 kernels more than their zeroing (measured,
        # float32, depthwise unless noted: 5x5 0.72-0.93x the time from 384x10x10 to 128x100x76;
        # 3x3 1.07-1.19x from 544x7x7 to 16x160x160, dense 96->24 at 80x80 1.02x). No pads: no
        # gap, and no zeroing (every wrapped read lands in a cropped column).
        self.gapped = sx == 1 and gap != 1
        if self.gapped:
            wq = max(w + gap, wo)
        self.grow = 0 if self.gapped else max(0, wo - wq) * sx  # pads wider than the kernel reaches: real zero columns
        if self.grow:
            w += self.grow
            wq = wo
        # kernel column j reads input column ox*sx + j*dx - pl, i.e. column ox + shift[j] of the
        # stride phase phase[j] (phase q holds input columns q, q+sx, ...)
        shift = [(j * dx - pl) // sx for j in range(kw)]
        phase = [(j * dx - pl) % sx for j in range(kw)]
        hp = h + pt + pb
        plane = hp * wq
        head, tail = max(0, -shift[0]), max(0, shift[-1])
        self.layout = (n, c, h, w, hp, wq, pt, head, tail, sx, dtype)
        self.view_args = (kh, kw, ho, plane, dy, dx, sy, shift, phase)
        self.flat = None
        if sx * (head + n * c * plane + tail) * np.dtype(dtype).itemsize <= OWN_BUFFER_BYTES:
            self.flat = self._zeroed(np.empty(sx * (head + n * c * plane + tail), dtype))
            self.interior, self.views = self._bind(self.flat)
        # a column outside 0..wq-1 of its phase wrapped into a neighbouring row: it belongs to
        # the zero padding
        self.wrapped = [] if self.gapped else [(j, lo, hi) for j, (lo, hi) in enumerate(
            (max(0, min(wq, -d)), max(0, min(wq, wq - d))) for d in shift) if lo or hi < wq]
        self.conv, self.sx = conv, sx
        self.n, self.c, self.ho, self.wo, self.wq, self.kh, self.kw = n, c, ho, wo, wq, kh, kw
        cpg = c // conv.group
        row_bytes = n * cpg * kh * kw * wq * np.dtype(dtype).itemsize  # one group's columns per output row
        self.gb = max(1, min(conv.group, BLOCK_BYTES // max(row_bytes * ho, 1)))
        # one group's columns past SLAB_MIN_BYTES: copied and multiplied a slab of output rows at a time
        self.rows = ho if row_bytes * ho <= SLAB_MIN_BYTES else max(1, SLAB_BYTES // row_bytes)

    def _zeroed(self, flat):
        """Write the zeros of the padded-input layout into `flat`: per stride phase, a region of
        `head` zeros, the channel planes (zero rows above and below the input rows, and a zero
        last column where the phase is a column short), `tail` zeros. Only wrapped (zeroed in the
        columns) or garbage columns read head and tail: zeros there keep garbage finite."""
        n, c, h, w, hp, wq, pt, head, tail, sx, _ = self.layout
        region = flat.shape[0] // sx
        for q in range(sx):
            flat[q * region:q * region + head] = 0
            flat[(q + 1) * region - tail:(q + 1) * region] = 0
            xp = flat[q * region + head:(q + 1) * region - tail].reshape(n, c, hp, wq)
            xp[:, :, :pt] = 0
            xp[:, :, pt + h:] = 0
            xp[:, :, pt:pt + h, -(-(w - q) // sx):] = 0
        return flat

    def _bind(self, flat):
        """(where each phase of x is copied, the view each kernel offset reads) over `flat`."""
        n, c, h, w, hp, wq, pt, head, tail, sx, _ = self.layout
        kh, kw, ho, plane, dy, dx, sy, shift, phase = self.view_args
        region = flat.shape[0] // sx
        interior = []
        for q in range(sx):
            xp = flat[q * region + head:(q + 1) * region - tail].reshape(n, c, hp, wq)
            interior.append((xp[:, :, pt:pt + h, :-(-(w - q) // sx)], q))
        it = flat.itemsize
        st = (c * plane * it, plane * it, dy * wq * it)
        if sx == 1:  # one view for all kernel offsets: offset (i, j) starts at i*dy*wq + shift[j]
            views = [(slice(None), as_strided(flat[head + shift[0]:], (n, c, kh, kw, ho, wq),
                                              st + (dx * it, sy * wq * it, it), writeable=False))]
        else:
            views = [(j, as_strided(flat[phase[j] * region + head + shift[j]:], (n, c, kh, ho, wq),
                                    st + (sy * wq * it, it), writeable=False)) for j in range(kw)]
        return interior, views

    def run(self, x, bias):
        if self.grow:
            x = np.concatenate([x, np.zeros(x.shape[:3] + (self.grow,), x.dtype)], axis=3)
        sx = self.sx
        if self.flat is not None:
            interior, views = self.interior, self.views
        else:  # big input: a shared scratch buffer, so its zeros and views are redone each run
            n, c, _, _, hp, wq, _, head, tail, sx, dtype = self.layout
            size = sx * (head + n * c * hp * wq + tail)
            interior, views = self._bind(self._zeroed(scratch("rowwide_pad", (size,), dtype)))
        for dst, q in interior:
            np.copyto(dst, x if sx == 1 else x[:, :, :, q::sx])
        conv, n, c, ho, wq = self.conv, self.n, self.c, self.ho, self.wq
        g, mg, ckk, gb = conv.group, conv.mg, conv.ckk, self.gb
        cpg, span = c // g, ho * wq  # output rows as wide as a phase; columns wo.. are garbage
        y = np.empty((n, g, mg, span), x.dtype)
        rows, kh, kw = self.rows, self.kh, self.kw
        cols = scratch("cols", (n * gb * cpg * kh * kw * rows * wq,), x.dtype)
        for g0 in range(0, g, gb):
            g1 = min(g, g0 + gb)
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                nb, nr = (g1 - g0) * cpg, r1 - r0
                block = cols[:n * nb * kh * kw * nr * wq].reshape(n, nb, kh, kw, nr, wq)
                for j, view in views:
                    if g > gb:
                        view = view[:, g0 * cpg:g1 * cpg]
                    np.copyto(block[:, :, :, j], view[..., r0:r1, :] if nr < ho else view)
                for j, lo, hi in self.wrapped:
                    if lo:
                        block[:, :, :, j, :, :lo] = 0
                    if hi < wq:
                        block[:, :, :, j, :, hi:] = 0
                np.matmul(conv.w_gemm[g0:g1] if g > gb else conv.w_gemm, block.reshape(n, g1 - g0, ckk, nr * wq),
                          out=y[:, g0:g1, :, r0 * wq:r1 * wq] if nr < ho else y[:, g0:g1] if g > gb else y)
        y = y.reshape(n, g * mg, ho, wq)
        if self.wo < wq:
            res = np.empty((n, g * mg, ho, self.wo), x.dtype)
            if bias is None:
                np.copyto(res, y[..., :self.wo])
            else:
                np.add(y[..., :self.wo], bias.reshape(1, -1, 1, 1), out=res)
            return res
        if bias is not None:
            np.add(y, bias.reshape(1, -1, 1, 1), out=y)
        return y
