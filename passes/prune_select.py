"""Data-driven channel importance for channel pruning (prune(..., scores=activation_scores(...))).

The weight-norm rule ranks a channel by the size of its filter; what the next layer actually
loses is the channel's *activation*. The score here is the variance of each output channel over
the calibration data, measured after the activations that follow the layer (Relu, HardSwish, BN,
...: a chain of per-channel ops read only there), i.e. on what the next layer reads. Variance, not
the mean square: a channel's constant part is not lost when it is pruned, since the refit after
pruning (prune_recover.py) absorbs it into the next layer's bias. Layers sharing channels (a
residual group) sum their scores, as they sum their norms. Streamed: per-channel sums only.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphopt.verify import tensor_reader

from .prune_base import UNARY, producers
from .quantize.common import ModelView, node_label

PER_CHANNEL = UNARY | {"BatchNormalization"}


def scored_tensor(view: ModelView, node) -> tuple[str, int]:
    """(tensor the next layers read, its channel axis): the layer's output, moved past a chain of
    per-channel ops that each are its only reader."""
    axis = 1 if node.op_type in ("Conv", "ConvTranspose") else -1
    tensor = node.output[0]
    while tensor not in view.outputs:
        readers = view.consumers.get(tensor, [])
        if len(readers) != 1 or readers[0].op_type not in PER_CHANNEL or readers[0].input[0] != tensor:
            break
        tensor = readers[0].output[0]
    return tensor, axis


def activation_scores(model: onnx.ModelProto, feeds, progress=None) -> dict:
    """layer label -> per-output-channel variance of what the next layers read (float64)."""
    view = ModelView(model)
    where = {node_label(n): scored_tensor(view, n) for n, _ in producers(view)}
    tensors = list(dict.fromkeys(t for t, _ in where.values()))
    if not tensors:
        return {}
    read = tensor_reader(model, tensors)
    axes = {t: a for t, a in where.values()}
    sums: dict[str, list] = {}
    for count, feed in enumerate(feeds, 1):
        for t, v in zip(tensors, read(feed)):
            v = np.moveaxis(np.asarray(v, np.float64), axes[t], 0)
            flat = v.reshape(v.shape[0], -1)
            s = sums.setdefault(t, [0, np.zeros(flat.shape[0]), np.zeros(flat.shape[0])])
            s[0] += flat.shape[1]
            s[1] += flat.sum(1)
            s[2] += (flat * flat).sum(1)
        if progress and count % 16 == 0:
            progress(f"channel scores: {count} feeds")
    out = {}
    for label, (t, _) in where.items():
        n, s1, s2 = sums[t]
        out[label] = np.maximum(s2 / n - (s1 / n) ** 2, 0.0)
    return out
