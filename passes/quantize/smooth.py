"""SmoothQuant-style scale migration (Xiao et al. 2023) for MatMuls fed by a normalization.

Transformer activations have a few outlier channels (100x the others); one per-tensor int8 scale
for the activation then leaves the ordinary channels a handful of levels. With a per-input-channel
factor s_k the product is unchanged,

    X @ W  =  (X / s) @ (s * W),     s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)

and the outliers move into the weights, which are quantized per output channel and absorb them.
X / s costs nothing when X is written by a LayerNormalization or by the decomposed form's final
Mul(gamma) -> Add(beta): gamma and beta are divided by s. Every reader of X must be a MatMul with a
constant 2-D weight (Q/K/V projections share one normalized input; they get one s from the max of
their weights); otherwise, or when gamma/beta are shared, the MatMul is left alone.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphopt.verify import tensor_reader

from .common import ModelView
from .static import drop_unused_initializers


def _norm_constants(view: ModelView, x: str):
    """[(initializer name, axis-of-channels ok)] holding gamma and beta of the normalization that
    writes x, or None when x is not written by one we can rescale."""
    node = view.producer.get(x)
    if node is None:
        return None
    if node.op_type == "LayerNormalization":
        names = [n for n in node.input[1:3] if n]
        return names if all(n in view.inits for n in names) else None
    if node.op_type == "Add":  # decomposed: ... -> Mul(gamma) -> Add(beta)
        beta = next((i for i in node.input if i in view.inits), None)
        other = next((i for i in node.input if i != beta), None)
        mul = view.producer.get(other) if other else None
        if beta is None or mul is None or mul.op_type != "Mul" or len(view.consumers.get(other, [])) != 1:
            return None
        gamma = next((i for i in mul.input if i in view.inits), None)
        return [gamma, beta] if gamma is not None else None
    return None


def _channel_absmax(model: onnx.ModelProto, tensors: list[str], feeds) -> dict[str, np.ndarray]:
    read = tensor_reader(model, tensors)
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        for t, v in zip(tensors, read(feed)):
            v = np.abs(np.asarray(v, np.float32))
            cur = v.reshape(-1, v.shape[-1]).max(axis=0)
            out[t] = np.maximum(out[t], cur) if t in out else cur
    return out


def smooth_matmuls(model: onnx.ModelProto, feeds, alpha: float = 0.5) -> tuple[onnx.ModelProto, int]:
    """A copy with the scale migration applied to every eligible normalized MatMul input;
    returns (model, tensors smoothed). `feeds`: calibration data (float model run by ORT)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    view = ModelView(m)
    uses: dict[str, int] = {}
    for n in m.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    plans = {}  # x -> (norm constants, matmul readers)
    for x, readers in view.consumers.items():
        if x in view.outputs or not readers:
            continue
        if not all(r.op_type == "MatMul" and r.input[0] == x and r.input[1] in view.inits
                   and view.const(r.input[1]).ndim == 2 and uses.get(r.input[1], 0) == 1 for r in readers):
            continue
        consts = _norm_constants(view, x)
        if not consts or any(uses.get(c, 0) != 1 for c in consts):
            continue
        k = view.const(readers[0].input[1]).shape[0]
        if any(view.const(c).size not in (1, k) for c in consts):
            continue
        plans[x] = (consts, readers, k)
    if not plans:
        return m, 0
    absmax = _channel_absmax(m, sorted(plans), feeds)
    done = 0
    for x, (consts, readers, k) in plans.items():
        act = absmax.get(x)
        if act is None or act.shape != (k,):
            continue
        wmax = np.max([np.abs(view.const(r.input[1])).max(axis=1) for r in readers], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.power(act.astype(np.float64), alpha) / np.power(wmax.astype(np.float64), 1.0 - alpha)
        s = np.where(np.isfinite(s) & (s > 0), s, 1.0).clip(1e-4, 1e4)
        for c in consts:  # gamma / s, beta / s
            value = view.const(c).astype(np.float64)
            value = np.broadcast_to(value, value.shape[:-1] + (k,)) if value.size == 1 else value
            _replace(view, c, (value / s).astype(np.float32))
        for r in readers:  # s * W, row k times s_k
            _replace(view, r.input[1], (view.const(r.input[1]).astype(np.float64) * s[:, None]).astype(np.float32))
        done += 1
    drop_unused_initializers(m)
    return m, done


def _replace(view: ModelView, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper
    view.inits[name].CopyFrom(numpy_helper.from_array(value, name))
