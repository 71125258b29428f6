"""GPTQ: int4 weights chosen by reconstruction of the layer's output on calibration data.

For y = x W (W [K, N]), rounding W to the int4 grid changes the output by x dW; its expected
squared size over the data is tr(dW^T H dW) with H = X^T X / rows. GPTQ (Frantar et al. 2022)
quantizes the K input rows one at a time and spreads each row's rounding error over the rows not
yet quantized, weighted by H^-1 (the optimal brain surgeon update), so correlated inputs absorb
it. Implemented with the upper Cholesky factor of H^-1, in lazy blocks of `gptq_block` rows.
Damping: H += damp * mean(diag(H)) * I (inputs that were always zero get weight 0 and diag 1).
act_order quantizes the rows of largest H_ii first; then the block scales are fixed up front
from the float weights (static groups), otherwise each block's scale is taken from the
error-updated weights when quantization reaches it. The output format is quantize_blocks'
(int4 values [K, N], one scale per block of `block` rows and output column).
"""
from __future__ import annotations

import numpy as np
import onnx

from graphopt.verify import tensor_reader

from .common import node_label


def _scale(rows: np.ndarray) -> np.ndarray:
    """Symmetric int4 scale per column of one block [block, N] (as quantize_blocks: amax / 7)."""
    amax = np.abs(rows).max(axis=0)
    return np.where(amax > 0, amax / 7.0, 1.0)


def gptq_quantize(w: np.ndarray, h: np.ndarray, block: int, act_order: bool = False, damp: float = 0.01,
                  gptq_block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] float, h [K, K] = X^T X (any positive scale) -> (q int8 in [-8, 7] [K, N], scale [ceil(K/block), N])."""
    k, n = w.shape
    gptq_block = block * max(1, gptq_block // block)  # a scale block never straddles two lazy blocks
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    blocks = -(-k // block)
    scales = np.ones((blocks, n))
    if act_order:  # static groups: every block's scale from the float weights
        for b in range(blocks):
            scales[b] = _scale(w[b * block:(b + 1) * block])
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[perm], h[perm][:, perm]
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: row i holds the update weights for rows > i
    q = np.zeros((k, n))
    for start in range(0, k, gptq_block):
        end = min(start + gptq_block, k)
        err = np.zeros((end - start, n))
        for i in range(start, end):
            row = perm[i]
            b = row // block
            if not act_order and row % block == 0:  # first row of its block: scale from the updated weights
                scales[b] = _scale(w[i:i + min(block, k - row)])
            q[i] = np.clip(np.rint(w[i] / scales[b]), -8, 7)
            e = (w[i] - q[i] * scales[b]) / hinv[i, i]
            w[i + 1:end] -= np.outer(hinv[i, i + 1:end], e)
            err[i - start] = e
        w[end:] -= hinv[start:end, end:].T @ err  # the block's errors, applied to the rows after it at once
    out = np.zeros((k, n), np.int8)
    out[perm] = q.astype(np.int8)
    return out, scales.astype(np.float32)


def collect_hessians(model: onnx.ModelProto, nodes: list, feeds, max_rows: int = 4096, progress=None) -> dict:
    """node label -> X^T X of its input (float64, [K, K]) over the feeds, streamed; rows beyond
    max_rows per feed are subsampled (seeded)."""
    names = list(dict.fromkeys(nd.input[0] for nd in nodes))
    read = tensor_reader(model, names)
    rng = np.random.default_rng(0)
    grams: dict[str, np.ndarray] = {}
    count = 0
    for count, feed in enumerate(feeds, 1):
        values = dict(zip(names, read(feed)))
        for t, v in values.items():
            x = np.asarray(v, np.float64).reshape(-1, np.shape(v)[-1])
            if len(x) > max_rows:
                x = x[rng.choice(len(x), max_rows, replace=False)]
            grams[t] = grams.get(t, 0) + x.T @ x
        if progress and count % 16 == 0:
            progress(f"GPTQ statistics: {count} feeds")
    if progress:
        progress(f"GPTQ statistics: {count} feeds, {len(names)} layer inputs")
    return {node_label(nd): grams[nd.input[0]] for nd in nodes}
