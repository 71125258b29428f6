"""Activation ranges that minimize the expected 8-bit quantization error (calibration method "mse").

min/max spends the 256 levels on the rare extremes; a tighter range clips a few values but rounds
all others on a finer grid. For a candidate range [lo, hi] the expected squared error over the
calibration histogram is

    sum over values below lo of (x - lo)^2  +  sum over values above hi of (x - hi)^2
    +  (values inside) * step^2 / 12,   step = (hi - lo) / 255

(clipping, plus uniform rounding noise). Prefix sums of n, n*x, n*x^2 over the histogram make each
candidate O(1); candidates shrink each end of the observed range independently (a signed tensor's
tails are rarely symmetric). The range always keeps 0 (exact zero point), like min/max.
"""
from __future__ import annotations

import numpy as np

FRACTIONS = np.linspace(1.0, 0.1, 46)  # each end of the observed range times these (2% steps)


def mse_range(hist: np.ndarray, radius: float, lo: float, hi: float, levels: int = 256) -> tuple[float, float]:
    """The (lo', hi') within the observed [lo, hi] that minimizes the expected squared quantization
    error of the histogram `hist` (equal bins over [-radius, radius])."""
    n = hist.astype(np.float64)
    if n.sum() == 0 or radius <= 0:
        return lo, hi
    edges = np.linspace(-radius, radius, len(n) + 1)
    c = (edges[:-1] + edges[1:]) / 2
    p0, p1, p2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (n, n * c, n * c * c))
    total = p0[-1]
    los = lo * FRACTIONS if lo < 0 else np.zeros(1)
    his = hi * FRACTIONS if hi > 0 else np.zeros(1)
    kl = np.searchsorted(c, los, side="left")        # bins strictly below each candidate lo
    kh = np.searchsorted(c, his, side="right")       # bins up to each candidate hi
    below = p2[kl] - 2 * los * p1[kl] + los ** 2 * p0[kl]
    above = (p2[-1] - p2[kh]) - 2 * his * (p1[-1] - p1[kh]) + his ** 2 * (p0[-1] - p0[kh])
    inside = total - p0[kl][:, None] - (p0[-1] - p0[kh])[None, :]
    step = (his[None, :] - los[:, None]) / (levels - 1)
    err = below[:, None] + above[None, :] + np.maximum(inside, 0) * step ** 2 / 12
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return float(los[i]), float(his[j])
