"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 output tile needs 16 multiplies per (input, output) channel pair instead of 36, so the
GEMM work (what a CNN's time is) drops by 2.25x. In NumPy every stage is a matrix product:
  V = (B^T (x) B^T) d   per 4x4 input tile d (a 16x16 matrix over all tiles at once)
  M_k = U_k @ V_k       16 GEMMs (M x C) @ (C x tiles), batched
  Y = (A^T (x) A^T) M   per tile (4x16), giving the 2x2 outputs
with U = G g G^T precomputed per filter at Session build. F(2x2, 3x3) keeps float32 error at
the level of the direct method (its transforms use only 0, +-1 and 1/2); the larger F(4x4, 3x3)
would not, so it is not used.
"""
from __future__ import annotations

import numpy as np

from ._scratch import padded, scratch
from ._util import strided_view

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def transform_filters(w: np.ndarray) -> np.ndarray:
    """(M, C, 3, 3) filters -> (16, M, C): G g G^T per filter, the 4x4 positions first."""
    u = np.einsum("ik,mckl,jl->ijmc", _G, w.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]).astype(w.dtype))


class Winograd:
    def __init__(self, w: np.ndarray):
        self.m, self.c = w.shape[:2]
        self.u = transform_filters(w)
        self.kb = np.kron(_BT, _BT).astype(w.dtype)  # (16, 16): vec(B^T d B) for row-major vec
        self.ka = np.kron(_AT, _AT).astype(w.dtype)  # (4, 16)

    def __call__(self, xp: np.ndarray, out_hw, bias: np.ndarray | None = None) -> np.ndarray:
        """xp: (N, C, H, W) already padded; returns (N, M, oh, ow) for a 3x3 stride-1 conv, plus
        `bias` ((1, M, 1) or None), added by the copies that put the tiles' outputs in place."""
        n, c, h, w = xp.shape
        oh, ow = out_hw
        th, tw = -(-oh // 2), -(-ow // 2)
        need_h, need_w = 2 * th + 2, 2 * tw + 2
        if need_h > h or need_w > w:  # odd output size: pad the last tile with zeros
            xp = padded(xp, [0, 0], [max(need_h - h, 0), max(need_w - w, 0)], role="winograd-grow")
        sn, sc, sh, sw = xp.strides
        tiles = strided_view(xp, (4, 4, c, n, th, tw), (sh, sw, sc, sn, 2 * sh, 2 * sw))
        d = scratch("winograd-d", tiles.shape, xp.dtype)
        np.copyto(d, tiles)
        d = d.reshape(16, -1)                                        # (16, C*N*T)
        v = np.matmul(self.kb, d, out=scratch("winograd-v", d.shape, xp.dtype)).reshape(16, c, -1)
        mm = np.matmul(self.u, v, out=scratch("winograd-m", (16, self.m, v.shape[2]), xp.dtype))
        mm = mm.reshape(16, -1)
        y = np.matmul(self.ka, mm, out=scratch("winograd-y", (4, mm.shape[1]), xp.dtype))
        y = y.reshape(2, 2, self.m, n, th, tw)  # output (a, b) of every tile
        out = np.empty((n, self.m, 2 * th, 2 * tw), xp.dtype)
        b4 = None if bias is None else bias.reshape(1, self.m, 1, 1)
        for a in range(2):
            for b in range(2):
                if b4 is None:
                    out[:, :, a::2, b::2] = y[a, b].transpose(1, 0, 2, 3)
                else:
                    np.add(y[a, b].transpose(1, 0, 2, 3), b4, out=out[:, :, a::2, b::2])
        if 2 * th != oh or 2 * tw != ow:
            out = np.ascontiguousarray(out[:, :, :oh, :ow])
        return out
