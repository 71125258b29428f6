"""Kernels specialized at Session build for their constant inputs (registry.prepare).

Each hook gets (attrs, constants, generic) and returns a faster callable or None. The work that
depends only on weights happens once: conv weights reshaped to GEMM matrices (per group), Gemm's
B transposed and scaled by alpha, BatchNorm reduced to one scale and one shift per channel.
Elementwise kernels here write into a dying input when no one else can see it (_inplace.reusable),
which saves the allocation and keeps the working set in cache. Anything unusual (integer or
half dtypes, non-constant weights, old opset semantics) keeps the generic kernel.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..registry import DYNAMIC, prepare
from ._inplace import INPLACE_MIN_SIZE, reusable
from ._scratch import padded, scratch
from . import conv_gather
from ._util import clip_ufunc, remember, tiled
from .depthwise import RowWideConv
from .nn import conv_pads, windows
from .winograd import Winograd

_FLOAT = (np.dtype(np.float32), np.dtype(np.float64))
# Conv on a batch: one GEMM over all images when each has fewer output pixels than this and the
# weight matrix has at least MERGE_MIN_WEIGHTS entries (measured, float32, batches of 4-8: 1.2-2.7x
# faster at 1-49 pixels with 66k-2.4M weights; 0.76x at 16 pixels with 8k weights; even or
# slower from 100 pixels)
MERGE_MAX_PIXELS = 64
MERGE_MIN_WEIGHTS = 32 * 1024


# --- Conv -----------------------------------------------------------------------------------------
@prepare("Conv", 1)
def prepare_conv(at, consts, generic):
    w = consts[1]
    b = consts[2] if len(consts) > 2 else None
    if not isinstance(w, np.ndarray) or w.dtype not in _FLOAT or b is DYNAMIC:
        return None
    return PreparedConv(w, b, at, generic)


class ConvPath(NamedTuple):
    """How PreparedConv runs one input geometry: its pads and output size, and which path it takes."""
    begin: list
    end: list
    out: list
    pointwise: bool  # 1x1, stride 1, no pads: a GEMM on the input as is
    negative: bool   # negative pads: the generic kernel
    wino: bool       # Winograd F(2x2, 3x3)
    rowwide: bool    # depthwise.RowWideConv
    merge: bool      # a batch of small outputs: one GEMM for all images (_batch_merged)
    gather: np.ndarray | None  # a small im2col: one gather through this index (conv_gather.py)


class PreparedConv:
    """Conv with its weight pre-laid-out. Paths: 1x1/stride 1/no pad = one GEMM on the input as is;
    else im2col (one copy of a strided window view) + one GEMM, batched over groups. Depthwise
    conv takes the grouped path too: measured against a multiply-add per kernel offset (the
    generic kernel's way) on MobileNet/ShuffleNet shapes, the batched (1 x k*k) GEMM was 2-4x faster.
    1-D/2-D convs with a kernel larger than 1x1 now copy their columns row-wide instead
    (depthwise.RowWideConv: long contiguous runs, the same batched GEMM; 1.2-2.2x faster on
    depthwise), unless Winograd is the faster one (big dense 3x3 convs). `exact`: never Winograd,
    whose transforms round (integer-valued operands then give integer sums, see quant.py)."""

    def __init__(self, w, b, at, generic, exact=False):
        self.generic = generic
        self.m, self.cg = w.shape[0], w.shape[1]
        self.group = at["group"]
        self.kshape = list(at["kernel_shape"] or w.shape[2:])
        if list(w.shape[2:]) != self.kshape:
            raise ValueError("kernel_shape does not match the weight")
        nsp = len(self.kshape)
        self.nsp = nsp
        self.strides = list(at["strides"] or [1] * nsp)
        self.dil = list(at["dilations"] or [1] * nsp)
        self.pads, self.auto_pad = at["pads"], at["auto_pad"]
        self.dtype = w.dtype
        kk = int(np.prod(self.kshape))
        mg = self.m // self.group
        self.w_gemm = np.ascontiguousarray(w.reshape(self.group, mg, self.cg * kk))
        self.w_mat = self.w_gemm[0] if self.group == 1 else None
        # Winograd F(2x2,3x3) for 3x3 stride-1 convs with enough channels (measured: 15-45% faster
        # than im2col+GEMM from 32 channels and 7x7 tiles up; slower below, where transforms dominate)
        self.winograd = Winograd(w) if (not exact and self.kshape == [3, 3] and self.strides == [1, 1]
                                        and self.dil == [1, 1] and self.group == 1 and self.cg >= 32
                                        and self.m >= 32) else None
        self.bias = None if b is None else np.ascontiguousarray(b.reshape(1, self.m, 1)).astype(w.dtype)
        self.rowwide = RowWideConv(self.w_gemm, self.kshape, self.dil) if nsp in (1, 2) else None
        self.w_bias = None  # w_mat with the bias as a last column, made for the first gather path
        self.geometry = {}

    def _geometry(self, shape):
        begin, end, out = conv_pads(shape[2:], self.kshape, self.strides, self.dil, self.pads, self.auto_pad)
        pointwise = all(k == 1 for k in self.kshape) and all(s == 1 for s in self.strides) \
            and not any(begin) and not any(end)
        wino = self.winograd is not None and shape[0] * (-(-out[0] // 2)) * (-(-out[1] // 2)) >= 49
        rowwide = self.rowwide is not None and not pointwise and \
            RowWideConv.suits(self.kshape, out, self.strides) and (not wino or RowWideConv.beats_winograd(self.cg, self.m, out))
        wino = wino and not rowwide
        # a batch of images with few output pixels each: one GEMM over the whole batch
        merge = shape[0] > 1 and self.group == 1 and not wino and math.prod(out) < MERGE_MAX_PIXELS \
            and self.w_gemm[0].size >= MERGE_MIN_WEIGHTS
        rowwide = rowwide and not merge
        negative = any(v < 0 for v in begin + end)
        gather = None
        if self.group == 1 and not (pointwise or wino or merge or negative) and conv_gather.suits(
                shape[0] * shape[1] * math.prod(self.kshape) * math.prod(out), strided=max(self.strides) > 1):
            gather = conv_gather.gather_index(shape, self.kshape, self.strides, self.dil, begin, out,
                                              ones_row=self.bias is not None)
            rowwide = False
            if self.w_bias is None:  # the bias as a last weight column, against the index's row of ones
                self.w_bias = self.w_mat if self.bias is None else \
                    np.concatenate([self.w_mat, self.bias.reshape(-1, 1)], axis=1)
        # kept for a bounded number of input shapes: a gather index is up to a few hundred KiB
        return remember(self.geometry, shape, ConvPath(begin, end, out, pointwise, negative, wino, rowwide, merge, gather))

    def __call__(self, args, at):
        x = args[0]
        if x.dtype != self.dtype or x.ndim != self.nsp + 2 or x.shape[1] != self.cg * self.group:
            return self.generic(args, at)
        geo = self.geometry.get(x.shape) or self._geometry(x.shape)
        begin, end, out, pointwise, negative, wino, rowwide, merge, gather = geo
        if negative:
            return self.generic(args, at)
        n, c = x.shape[:2]
        m = self.m
        if merge:
            return (self._batch_merged(x, begin, end, out, pointwise),)
        if pointwise and self.group == 1:
            y = np.matmul(self.w_mat, x.reshape(c, -1) if n == 1 else x.reshape(n, c, -1))
        elif pointwise:
            y = np.matmul(self.w_gemm, x.reshape(n, self.group, self.cg, -1))
        elif rowwide:
            return (self.rowwide(x, begin, end, out, self.bias, self.strides),)
        elif gather is not None:  # bias included
            cols = conv_gather.gathered(x, gather)
            y = self.w_bias.dot(cols[0]) if n == 1 else np.matmul(self.w_bias, cols)
            return (y.reshape((n, m) + tuple(out)),)
        elif wino:  # bias included
            return (self.winograd(padded(x, begin, end), out, self.bias),)
        else:
            view = windows(padded(x, begin, end), self.kshape, self.strides, self.dil, out)
            cols = scratch("cols", view.shape, view.dtype)
            np.copyto(cols, view)
            pp = math.prod(out)
            if self.group == 1:
                ck = c * math.prod(self.kshape)
                y = np.matmul(self.w_mat, cols.reshape(ck, pp) if n == 1 else cols.reshape(n, ck, pp))
            else:  # grouped and depthwise: one batched GEMM over the groups
                y = np.matmul(self.w_gemm, cols.reshape(n, self.group, -1, pp))
        y = y.reshape(n, m, -1)
        if self.bias is not None:
            np.add(y, self.bias, out=y)
        return (y.reshape((n, m) + tuple(out)),)

    def _batch_merged(self, x, begin, end, out, pointwise):
        """Columns laid out (C*K, N, pixels), one GEMM for the whole batch, and the (M, N, pixels)
        result turned back to (N, M, pixels) by the copy that adds the bias. A batched matmul runs
        one thin GEMM per image, re-reading the weights each time."""
        n, c = x.shape[:2]
        if pointwise:
            view = x.reshape(n, c, -1)
        else:  # (N, C, *kernel, *out), a strided view: reshaping it would copy it
            view = windows(padded(x, begin, end), self.kshape, self.strides, self.dil, out)
        view = np.moveaxis(view, 0, view.ndim - (1 if pointwise else len(out)) - 1)  # (C, *kernel, N, *out)
        cols = scratch("cols-merged", view.shape, x.dtype)
        np.copyto(cols, view)
        pp = math.prod(out)
        y = self.w_mat.dot(cols.reshape(-1, n * pp)).reshape(self.m, n, pp)
        res = np.empty((n, self.m, pp), x.dtype)
        if self.bias is None:
            np.copyto(res, np.swapaxes(y, 0, 1))
        else:
            np.add(np.swapaxes(y, 0, 1), self.bias, out=res)
        return res.reshape((n, self.m) + tuple(out))


# --- Gemm -----------------------------------------------------------------------------------------
@prepare("Gemm", 7)
def prepare_gemm(at, consts, generic):
    b = consts[1]
    c = consts[2] if len(consts) > 2 else None
    if not isinstance(b, np.ndarray) or b.dtype not in _FLOAT or b.ndim != 2 or c is DYNAMIC:
        return None
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    bm = b.T if at.get("transB") else b
    bm = np.ascontiguousarray(bm * b.dtype.type(alpha) if alpha != 1.0 else bm)
    cm = None if c is None else np.ascontiguousarray(c * c.dtype.type(beta) if beta != 1.0 else c).astype(b.dtype)
    trans_a = bool(at.get("transA"))
    dt = bm.dtype
    tiles = {}  # C tiled to the output's shape, per shape (_util.tiled)

    def gemm(args, at):
        a = args[0]
        if a.dtype is not dt and a.dtype != dt or a.ndim != 2:
            return generic(args, at)
        # ndarray.dot: for 2-D operands the same BLAS call as np.matmul (bit-identical results,
        # checked over 900 shape/dtype/layout combinations) without the ufunc machinery (~0.6 us)
        y = (a.T if trans_a else a).dot(bm)
        if cm is not None:
            y += tiled(tiles, cm, y.shape)  # np.add(y, c, out=y) through the operator slot: no keyword parsing
        return (y,)
    return gemm


# --- BatchNormalization ---------------------------------------------------------------------------
@prepare("BatchNormalization", 7)
def prepare_batch_norm(at, consts, generic):
    scale, bias, mean, var = consts[1:5]
    if not all(isinstance(v, np.ndarray) for v in (scale, bias, mean, var)) or at.get("training_mode") \
            or at["__n_outputs__"] != 1 or at.get("spatial", 1) != 1:
        return None
    inv = scale / np.sqrt(var + at.get("epsilon", 1e-5))
    shift = bias - mean * inv
    per_dtype = {}

    def batch_norm(args, at):
        own = reusable(args, 0)
        x = args[0]
        if x.dtype.kind != "f" or x.ndim < 2:
            return generic(args, at)
        key = (x.dtype, x.ndim)
        sv = per_dtype.get(key)
        if sv is None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            sv = per_dtype[key] = (inv.astype(x.dtype).reshape(shape), shift.astype(x.dtype).reshape(shape))
        y = np.multiply(x, sv[0], out=x if own else None)
        np.add(y, sv[1], out=y)
        return (y,)
    return batch_norm


# --- elementwise, in place when the input dies here -----------------------------------------------
# Relu, Sigmoid and the other unary float ops: elementwise.py


@prepare("Clip", 11)
def prepare_clip(at, consts, generic):
    def clip(args, at):
        if reusable(args, 0) and args[0].dtype.kind == "f":
            x = args[0]
            lo = args[1] if len(args) > 1 else None
            hi = args[2] if len(args) > 2 else None
            if (lo is None or lo.dtype == x.dtype) and (hi is None or hi.dtype == x.dtype):
                if lo is not None and hi is not None:
                    return (clip_ufunc(x, lo, hi, out=x),)  # min(max(x, lo), hi), as below
                if lo is not None:
                    np.maximum(x, lo, out=x)
                if hi is not None:
                    np.minimum(x, hi, out=x)
                return (x,)
        return generic(args, at)
    return clip


def _binary_in_place(ufunc):
    """Add/Sub/Mul/Div on floats of one dtype: into a dying operand the result fits (the other one
    broadcasts to its shape) unless it is small, else the generic kernel's new array. The broadcast
    check runs once per pair of shapes; the hot path is a size test, a reference-count check, a
    dtype check, a shape compare and the ufunc."""
    def prep(at, consts, generic):
        fits = {}  # (shape of the other operand, shape of the one written) -> it broadcasts to it
        # a constant operand that broadcasts over the other is tiled to its shape (_util.tiled)
        constant = [c if isinstance(c, np.ndarray) and c.ndim else None for c in consts[:2]]
        tiles = {}

        def into(other, target):  # other, target: shapes
            ok = fits.get((other, target))
            if ok is None:
                ok = remember(fits, (other, target), _shape_broadcasts_to(other, target))
            return ok

        def run(args, at):
            # before binding args[i] to a name (a local is one more reference)
            if args[0].size >= INPLACE_MIN_SIZE and reusable(args, 0):
                a = args[0]
                b = args[1]
                dt = a.dtype
                if not (b.dtype is dt or b.dtype == dt) or dt.kind != "f":
                    return generic(args, at)
                sb = b.shape
                if not sb or sb == a.shape:
                    return (ufunc(a, b, a),)  # out positionally: no keyword parsing
                if into(sb, a.shape):
                    return (ufunc(a, tiled(tiles, b, a.shape) if b is constant[1] else b, a),)
                del a, b  # args[1] may be the dying one the result fits
            if args[1].size >= INPLACE_MIN_SIZE and reusable(args, 1):
                a = args[0]
                b = args[1]
                dt = b.dtype
                if (a.dtype is dt or a.dtype == dt) and dt.kind == "f":
                    sa = a.shape
                    if not sa or sa == b.shape:
                        return (ufunc(a, b, b),)
                    if into(sa, b.shape):
                        return (ufunc(tiled(tiles, a, b.shape) if a is constant[0] else a, b, b),)
            return generic(args, at)  # small (a new array costs no more), or nothing to write into
        return run
    return prep


def _shape_broadcasts_to(small: tuple, big: tuple) -> bool:
    """Broadcasting `small` against `big` gives `big` (so the result may be written into big)."""
    if len(small) > len(big):
        return False
    return all(s == 1 or s == g for s, g in zip(small[::-1], big[::-1]))


def _broadcasts_to(small, big) -> bool:
    return small.shape == big.shape or _shape_broadcasts_to(small.shape, big.shape)


for _op, _uf in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}.items():
    prepare(_op, 7)(_binary_in_place(_uf))


@prepare("Sum", 8)
def prepare_sum(at, consts, generic):
    def run(args, at):
        if len(args) >= 2 and reusable(args, 0):
            acc = args[0]
            rest = args[1:]
            if acc.dtype.kind == "f" and all(r is not None and r.dtype == acc.dtype and _broadcasts_to(r, acc)
                                             for r in rest):
                for r in rest:
                    np.add(acc, r, out=acc)
                return (acc,)
        return generic(args, at)
    return run


# --- Reshape with a constant shape: the target dims parsed once ----------------------------------
@prepare("Reshape", 5)
def prepare_reshape(at, consts, generic):
    shape = consts[1]
    if not isinstance(shape, np.ndarray) or shape.dtype.kind not in "iu":
        return None
    dims = [int(v) for v in shape.reshape(-1)]
    if at.get("allowzero") or 0 not in dims:
        return lambda args, at: (args[0].reshape(dims),)
    zeros = [i for i, d in enumerate(dims) if d == 0]

    def reshape(args, at):  # a 0 copies the input's dimension at that position
        x = args[0]
        target = list(dims)
        for i in zeros:
            target[i] = x.shape[i]
        return (x.reshape(target),)
    return reshape


# --- Pow with a constant scalar exponent (LayerNorm's x^2, tanh-GELU's x^3) -----------------------
@prepare("Pow", 7)
def prepare_pow(at, consts, generic):
    e = consts[1]
    if not isinstance(e, np.ndarray) or e.size != 1 or e.dtype.kind != "f":
        return None
    e = float(e.reshape(-1)[0])
    # np.power with a general exponent runs exp/log per element; these are exact rewrites
    fast = {2.0: np.square, 3.0: lambda x: x * x * x, 1.0: np.copy, 0.5: np.sqrt}.get(e)
    if fast is None:
        return None

    def power(args, at):
        x = args[0]
        if x.dtype not in _FLOAT:
            return generic(args, at)
        return (fast(x),)
    return power
