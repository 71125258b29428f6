"""Pooling specialized at Session build (registry.prepare): MaxPool, AveragePool, GlobalAveragePool,
GlobalMaxPool on float32/float64 inputs (MaxPool and GlobalMaxPool also on float16 and integers).

The generic kernels (nn.py) pad the whole input into a fresh array (np.full + copy) and reduce the
box axis by axis with one strided ufunc call per tap, each allocating its result. NumPy pays about
30 ns per innermost run of a strided call, and pooled maps have short rows (6-56 elements), so
those calls cost several times their arithmetic. Here, per (shape, dtype, thread), a _PoolPlan:
  * reduces one spatial axis at a time with _AxisPass: the first k-1 taps of every window as flat,
    contiguous calls over the whole array, then one call that adds the last tap and applies the
    stride and crop (a single 1-D strided run when the axis length is stride * output length);
  * handles pads and ceil-mode overhang without a padded copy, reducing the few "edge" output rows
    from their in-range taps only; small maps (below SMALL_PADDED) instead copy into a padded buffer
    of their own, whose border is written once (fewer calls than edge rows);
  * reduces a window that covers the whole map (ShuffleNet's final 7x7 average) over the flat plane;
  * divides AveragePool sums by a divisor map computed once by the generic kernel's rules (pads
    counted or not per count_include_pad, ceil-mode overhang never counted).
Global pools reduce a (N, C, H*W) view along its contiguous last axis (np.mean/np.max over a tuple
of axes take a slower multi-axis reduction), the average's sums as a GEMV (_util.row_sums).
MaxPool's Indices output, LpPool, half/integer averages, negative pads and very wide pads or
dilations (more than MAX_EDGE_ROWS edge rows) keep the generic kernel. Max results equal the
generic kernel's; sums add the same taps in the same order (padding zeros aside), except the
whole-map and global reductions (pairwise or BLAS order: rounding only).
Measured in bench/pool_bench.py.
"""
from __future__ import annotations

import threading

import numpy as np

from ..registry import prepare
from ._util import remember, row_sums, row_sums_fit
from .nn import pad_spatial, pool_window, pool_geometry

_AVG_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# padded maps up to this many elements are padded into a buffer of their own per node, geometry and
# thread (measured: 48x8x8 5x5 SPP pools 2x faster than with edge rows); bigger ones use edge rows
SMALL_PADDED = 1 << 14  # elements
MAX_PLANS = 8  # geometries (x threads) remembered per node: dynamic shapes keep memory bounded

_local = threading.local()
_ROLES = ("axis0", "axis1")  # intermediate results of consecutive axis passes


def _buffer(role: str, n: int, dtype) -> np.ndarray:
    """A flat scratch array of n elements, this thread's buffer for `role` (shared by every pooling
    node; grown to the largest request). _scratch.scratch does the same from a shape, but its
    np.prod costs a third of a small pool's time."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    buf = pool.get(role)
    nbytes = n * dtype.itemsize
    if buf is None or buf.nbytes < nbytes:
        buf = pool[role] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype)


def _low(dtype):
    """The identity of max for this dtype: what pads and ceil-mode overhang read as."""
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


class _AxisPass:
    """Reduce windows along one spatial axis of a C-contiguous array viewed as (pre, I, post).

    NumPy pays ~30 ns per innermost run of a strided operation, and pooled maps have short rows
    (7-56 elements), so the k taps are not reduced as k strided views of the output. Interior
    output rows (windows inside the input), by stride:
      * stride 1: the k-1 first taps with flat, contiguous ufunc calls over the whole array (tap j
        is the array shifted by j*dil*post; positions whose window runs off the end are garbage and
        never read), then one strided call adds the last tap and crops;
      * strided innermost axis whose rows chain into one 1-D run (size == stride * out): all k taps
        flat at full resolution, then one strided copy of the window starts;
      * other strides: one call per tap on the output rows (runs of `post` elements);
      * output rows whose window reaches into padding or the ceil-mode overhang ("edge" rows,
        a few per side) are reduced from their valid taps only, which is what padding with the
        ufunc's identity (-inf for max, 0 for sums) gives, without copying the input into a pad.
    """

    MAX_EDGE_ROWS = 8  # more (huge pads or dilations): the generic kernel, not a Python loop per row

    def __init__(self, pre, size, post, k, s, d, begin, out, fill):
        self.pre, self.size, self.post, self.k, self.s, self.d, self.out = pre, size, post, k, s, d, out
        self.fill = fill
        self.n_out = pre * out * post
        span = (k - 1) * d
        lo = min(out, -(-begin // s))
        hi = max(lo, min(out, (size - 1 - span + begin) // s + 1)) if size > span else lo
        self.inner = (lo, hi, lo * s - begin)  # interior output rows and the first one's window start
        # size == stride * out: output row (p, o) starts its window at flat input row s*(p*out + o) - begin,
        # so all pre blocks are done by one call with a uniform row step (for a W pass: one 1-D strided
        # run instead of one short run per row); rows whose window crosses into the neighbouring block are
        # edge rows, rewritten afterwards
        self.flat_rows = None
        if size == s * out and size > span:
            q0 = -(-begin // s)
            q1 = (pre * size - 1 - span + begin) // s + 1
            if q1 > q0:
                self.flat_rows = (q0, q1, q0 * s - begin)
        self.edges = []  # (output row, input rows of its taps that lie inside the input)
        for o in list(range(lo)) + list(range(hi, out)):
            rows = [o * s - begin + j * d for j in range(k)]
            self.edges.append((o, [r for r in rows if 0 <= r < size]))
        if len(self.edges) > self.MAX_EDGE_ROWS:
            raise ValueError("too many edge rows")

    def run(self, x, f, y, zbuf):
        """x: flat input (pre*size*post), y: output (pre, out, post); zbuf: scratch as big as x."""
        pre, size, post, k, s, d = self.pre, self.size, self.post, self.k, self.s, self.d
        lo, hi, first = self.inner
        x3 = x.reshape(pre, size, post)
        if self.flat_rows is not None:
            lo, hi, first = self.flat_rows
            x3, y = x.reshape(1, pre * size, post), y.reshape(1, pre * self.out, post)
        if hi > lo:
            rows = slice(first, first + s * (hi - lo - 1) + 1, s)
            if k == 1:
                np.copyto(y[:, lo:hi], x3[:, rows])
            elif s > 1 and post == 1 and self.flat_rows is not None:
                # strided along the innermost axis, all rows as one 1-D run: a ufunc reading every s-th
                # element is ~3x slower per element than a contiguous one, a strided copy is not, so
                # every tap is reduced at full resolution with flat calls and the window starts are
                # copied out (measured 1.5x faster on ShuffleNet's 3x3/s2 pools; with one run per
                # output row, odd-sized maps, the copy's per-row cost makes it slower than the taps)
                n = x.size - (k - 1) * d
                z = zbuf[:n]
                f(x[:n], x[d:d + n], out=z)
                for j in range(2, k):
                    f(z, x[j * d:j * d + n], out=z)
                np.copyto(y[:, lo:hi], zbuf[:x.size].reshape(x3.shape)[:, rows])
            elif s > 1:
                # strided along an outer axis: the taps are runs of `post` contiguous elements; a flat
                # call would compute s times the windows needed, so each tap is read where it is
                dst = y[:, lo:hi]
                f(x3[:, rows], x3[:, first + d:first + d + s * (hi - lo - 1) + 1:s], out=dst)
                for j in range(2, k):
                    f(dst, x3[:, first + j * d:first + j * d + s * (hi - lo - 1) + 1:s], out=dst)
            else:
                acc = x3
                if k > 2:
                    n = x.size - (k - 2) * d * post
                    z = zbuf[:n]
                    f(x[:n], x[d * post:d * post + n], out=z)
                    for j in range(2, k - 1):
                        f(z, x[j * d * post:j * d * post + n], out=z)
                    acc = zbuf[:x.size].reshape(x3.shape)
                last = slice(first + (k - 1) * d, first + (k - 1) * d + s * (hi - lo - 1) + 1, s)
                f(acc[:, rows], x3[:, last], out=y[:, lo:hi])
        x3, y = x.reshape(pre, size, post), y.reshape(pre, self.out, post)
        for o, rows in self.edges:
            dst = y[:, o]
            if not rows:
                dst.fill(self.fill)
            elif len(rows) == 1:
                np.copyto(dst, x3[:, rows[0]])
            else:
                f(x3[:, rows[0]], x3[:, rows[1]], out=dst)
                for r in rows[2:]:
                    f(dst, x3[:, r], out=dst)


class _PoolPlan:
    """One input geometry of one pooling node: a pass per spatial axis, the divisor map."""

    def __init__(self, shape, dtype, at, ufunc, average):
        self.ufunc = ufunc
        kshape, strides, dil, begin, end, extra, out = pool_geometry(_Shape(shape), at)
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape[:2]) + tuple(out)
        if any(v < 0 for v in begin + end) or min(out, default=1) <= 0:
            raise ValueError("negative pads or an empty output: the generic kernel handles it")
        self.dtype = dtype
        fill = 0 if average else _low(dtype)
        tail = [e + x for e, x in zip(end, extra)]
        self.divisor = None
        if average:
            ones = np.ones((1, 1) + tuple(self.in_shape[2:]), dtype)
            if at.get("count_include_pad"):
                mask = pad_spatial(pad_spatial(ones, begin, end, 1), [0] * len(out), extra, 0)
            else:
                mask = pad_spatial(ones, begin, tail, 0)
            self.divisor = np.ascontiguousarray(pool_window(mask, kshape, strides, dil, out, np.add))
        # one window covering the whole map (a final 7x7 average): a reduction over the flat plane
        self.whole = all(o == 1 and dl == 1 and b >= 0 and k - b >= i
                         for o, dl, b, k, i in zip(out, dil, begin, kshape, shape[2:]))
        # small padded maps (SPP's 5x5 on 8x8): padding into a buffer whose border is written once
        # takes fewer NumPy calls than the edge rows of each axis pass
        self.pad = None
        pshape = tuple(shape[:2]) + tuple(i + b + t for i, b, t in zip(shape[2:], begin, tail))
        if (any(begin) or any(tail)) and int(np.prod(pshape)) <= SMALL_PADDED and not self.whole:
            self.pad = (np.full(pshape, fill, dtype), (slice(None),) * 2 +
                        tuple(slice(b, b + i) for b, i in zip(begin, shape[2:])))
            shape, begin = pshape, [0] * len(begin)
        # (measured: running all passes per block of channels that fits in L2 was 5-35% slower on
        # the zoo's pools, more so the smaller the blocks: per-call costs, not memory, dominate)
        self.passes = [] if self.whole else _axis_passes(shape, kshape, strides, dil, begin, out, fill)
        self.identity = not self.whole and not self.passes
        self.zsize = max([int(np.prod(shape))] + [p.n_out for p in self.passes])

    def run(self, x):
        f = self.ufunc
        if self.whole:
            n, c = x.shape[:2]
            y = f.reduce(x.reshape(n, c, -1), axis=2).reshape(self.out_shape)
        elif self.identity:  # a 1x1 window, stride 1, no pads: the input, never a view of it
            return x.copy()
        else:
            y = self._passes(x)
        if self.divisor is not None:
            np.divide(y, self.divisor, out=y)
        return y

    def _passes(self, x):
        f = self.ufunc
        if self.pad is not None:
            xp, interior = self.pad
            xp[interior] = x
            x = xp
        cur = np.ascontiguousarray(x).reshape(-1)
        y = np.empty(self.out_shape, self.dtype)
        zbuf = _buffer("z", self.zsize, self.dtype)
        last = len(self.passes) - 1
        for i, p in enumerate(self.passes):
            dst = y if i == last else _buffer(_ROLES[i % 2], p.n_out, self.dtype)
            p.run(cur, f, dst.reshape(p.pre, p.out, p.post), zbuf)
            cur = dst.reshape(-1)
        return y


def _axis_passes(shape, kshape, strides, dil, begin, out, fill):
    """The _AxisPass per spatial axis of `shape` (axes whose window is 1 long, unstrided and unpadded
    are left out)."""
    passes, cur = [], list(shape)
    for d, (k, s, dl, b, o) in enumerate(zip(kshape, strides, dil, begin, out)):
        axis = 2 + d
        if k == 1 and s == 1 and b == 0 and o == cur[axis]:
            continue
        pre, post = int(np.prod(cur[:axis])), int(np.prod(cur[axis + 1:]))
        passes.append(_AxisPass(pre, cur[axis], post, k, s, dl, b, o, fill))
        cur[axis] = o
    return passes


class _Shape:
    """Stands in for an array where pool_geometry only reads ndim and shape."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(shape)


def _planned(at, ufunc, average, ok, generic):
    plans = {}

    def run(args, attrs):
        x = args[0]
        if type(x) is not np.ndarray or x.ndim < 3 or not ok(x.dtype) or x.size == 0:
            return generic(args, attrs)
        key = (x.shape, x.dtype, threading.get_ident())
        plan = plans.get(key)
        if plan is None:
            try:
                plan = _PoolPlan(x.shape, x.dtype, at, ufunc, average)
            except ValueError:
                plan = False
            remember(plans, key, plan, MAX_PLANS)
        if plan is False:
            return generic(args, attrs)
        return (plan.run(x),)
    return run


@prepare("MaxPool", 1)
def prepare_max_pool(at, consts, generic):
    if at.get("__n_outputs__", 1) > 1 or not at.get("kernel_shape"):  # Indices: the generic kernel
        return None
    return _planned(at, np.maximum, False, lambda dt: dt.kind in "fiu", generic)


@prepare("AveragePool", 1)
def prepare_average_pool(at, consts, generic):
    if not at.get("kernel_shape"):
        return None
    return _planned(at, np.add, True, lambda dt: dt in _AVG_DTYPES, generic)


def _global(reduce, average, ok):
    def prep(at, consts, generic):
        counts = {}  # (pixels, dtype) -> the pixel count as a 0-d array of the dtype

        def run(args, attrs):
            x = args[0]
            if type(x) is not np.ndarray or x.ndim < 3 or not ok(x.dtype) or x.size == 0:
                return generic(args, attrs)
            n, c = x.shape[:2]
            hw = x.size // (n * c)
            if not average:
                y = reduce(x.reshape(n, c, hw), axis=2)
            elif row_sums_fit(x) and hw < 1 << 24:  # float32/64: the sums as a GEMV, divided by the
                count = counts.get((hw, x.dtype))   # count in the dtype (exact: a correctly rounded quotient)
                if count is None:
                    count = remember(counts, (hw, x.dtype), np.array(hw, x.dtype))
                y = row_sums(x.reshape(n, c, hw))
                np.divide(y, count, y)
            else:
                y = reduce(x.reshape(n, c, hw), axis=2)
                np.divide(y, np.intp(hw), out=y, casting="unsafe")
            return (y.reshape((n, c) + (1,) * (x.ndim - 2)),)
        return run
    return prep


prepare("GlobalAveragePool", 1)(_global(np.add.reduce, True, lambda dt: dt in _AVG_DTYPES))
prepare("GlobalMaxPool", 1)(_global(np.maximum.reduce, False, lambda dt: dt.kind in "fiu"))
