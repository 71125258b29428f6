"""The im2col of a small conv as one gather through an index made once per input geometry.

On tiny layers (an audio model's 1-D convs over a few frames, the last stages of a CNN at 1x1 to
4x4 pixels) the column matrix holds a few thousand values, and the other im2col paths' fixed
costs (a padded copy of the input, window views, one copy per kernel offset, zeroing the columns
that wrapped) are most of the conv: 10-30 NumPy calls of 1-2 us each. Here the columns are one
fancy-indexing read of the flat input followed by a zero and a one: an index entry that falls in
the padding points at the zero, and a last row of ones multiplies the bias, appended to the
weights as a column, so that one GEMM gives the biased result (prepared.PreparedConv).
"""
from __future__ import annotations

import math

import numpy as np


# at most this many column entries (N * C * kernel size * output pixels) take the gather: past it
# the other paths' strided copies move the same data with fewer index reads. Measured, float32,
# single thread, dense 3x3 convs against the other paths (bias included in both): stride 1 0.40x
# the time at 2k columns (16 channels at 4x4), 0.69x at 9k, 0.86x at 18k, 1.06-1.27x from 22k to
# 28k; stride 2 0.55-0.63x at 7k-18k, 0.74-0.80x at 22k-42k, 0.98x at 56k, 1.10x at 85k. The
# 1-D convs of a voice detector (1-4 frames): 2.3-3.9x faster.
GATHER_MAX_COLUMNS = 16 * 1024
GATHER_MAX_COLUMNS_STRIDED = 48 * 1024


def suits(n_columns: int, strided: bool) -> bool:
    return n_columns <= (GATHER_MAX_COLUMNS_STRIDED if strided else GATHER_MAX_COLUMNS)


def gather_index(shape, kernel_shape, strides, dilations, begin, out_shape, ones_row: bool) -> np.ndarray:
    """Index (N, C * kernel size [+ 1], output pixels) into x.ravel() followed by a zero (at x.size)
    and a one (at x.size + 1). Row c*K + k of image n holds the input positions o*stride +
    k*dilation - pad_begin of channel c (x.size where that is padding); with `ones_row`, a last
    row of ones lets the GEMM add the bias (a bias column appended to the weights)."""
    n, c, spatial = shape[0], shape[1], shape[2:]
    nsp = len(spatial)
    flat = (np.arange(n)[:, None] * c + np.arange(c)[None, :]).reshape((n, c) + (1,) * 2 * nsp)
    valid = np.ones((1,) * (2 + 2 * nsp), bool)
    for d in range(nsp):  # axes: n, c, kernel dims, output dims
        k_axis = [1] * (2 + 2 * nsp)
        o_axis = list(k_axis)
        k_axis[2 + d] = kernel_shape[d]
        o_axis[2 + nsp + d] = out_shape[d]
        pos = (np.arange(kernel_shape[d]) * dilations[d]).reshape(k_axis) + \
            (np.arange(out_shape[d]) * strides[d] - begin[d]).reshape(o_axis)
        flat = flat * spatial[d] + pos
        valid = valid & (pos >= 0) & (pos < spatial[d])
    size = math.prod(shape)
    index = np.where(valid, flat, size).reshape(n, c * math.prod(kernel_shape), math.prod(out_shape))
    if ones_row:
        index = np.concatenate([index, np.full((n, 1, index.shape[2]), size + 1)], axis=1)
    return np.ascontiguousarray(index, dtype=np.intp)


def gathered(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The columns: x's values (and the zero and one after them) at `index` (gather_index). Fresh
    arrays: at these sizes np.empty costs less than looking up a scratch buffer."""
    ext = np.empty(x.size + 2, x.dtype)
    ext[:-2] = x.reshape(-1)
    ext[-2] = 0
    ext[-1] = 1
    return ext[index]  # fancy indexing: 0.4 us here against 1.6 us through np.take's wrapper
