"""What channel pruning's planner shares: the region tensor (Carried), the refusal, the op
families it follows, the layers it prunes, and shapes kept current as layers shrink."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .quantize.common import ModelView

UNARY = {"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu",
         "Softplus", "Identity", "Neg", "Abs", "Mish", "Dropout", "Erf", "Exp", "Log", "Sqrt", "Reciprocal",
         "Softsign"}  # elementwise: each channel on its own
POOLS = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow"}


class Refuse(Exception):
    """Raised while planning: the reason the layer is left alone."""


class Join(Refuse):
    """The channels meet another activation at a join: prunable only together with `producers`,
    the layers that make that activation (the caller retries with them in the group)."""

    def __init__(self, message: str, producers: list):
        super().__init__(message)
        self.producers = producers


@dataclass
class Carried:
    """A region tensor: its channel axis, rank (None if unknown), the channel indices that stay and
    those that go, with the constant each dropped channel is taken to hold (None: not known), which
    the layer ending the region folds into its bias (prune_compensate.py)."""
    axis: int
    rank: int | None
    keep: np.ndarray
    drop: np.ndarray
    lost: np.ndarray | None

    def like(self, axis=None, rank=None, lost=False) -> Carried:
        """The same channels on an op's output (axis/rank re-expressed there, lost values changed)."""
        return Carried(self.axis if axis is None else axis, self.rank if rank is None else rank, self.keep,
                       self.drop, self.lost if lost is False else lost)


def attr(node, name, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def producers(view: ModelView):
    """(node, weight) of every layer whose output channels can be pruned."""
    for node in view.model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            w = view.const(node.input[1])
            if w is None or w.dtype.kind != "f":
                continue
            if node.op_type in ("Conv", "ConvTranspose") and attr(node, "group", 1) != 1:
                continue
            if node.op_type == "Gemm" and attr(node, "transA", 0):
                continue
            if node.op_type == "MatMul" and w.ndim != 2:
                continue
            yield node, w


def infer_shapes(model: onnx.ModelProto) -> dict:
    """tensor -> list of dims (None where symbolic); {} when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (custom ops, >2 GB: the callers refuse what needs shapes)
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


class Shapes:
    """Shapes of the model as it is now: re-inferred lazily after a layer was pruned, because
    Concat offsets and Split sizes need the *current* channel counts."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.stale, self.known = model, False, infer_shapes(model)
        self.first = self.known  # ranks and spatial sizes never change under channel pruning

    def rank(self, tensor: str) -> int | None:
        shape = self.first.get(tensor)
        return None if shape is None else len(shape)

    def spatial(self, tensor: str):
        """Dims after the channel axis (of the original model: pruning never changes them)."""
        shape = self.first.get(tensor)
        return None if shape is None or len(shape) < 2 else shape[2:]

    def get(self, tensor: str):
        if self.stale:
            del self.model.graph.value_info[:]  # stale after an edit; dropped at the end anyway
            self.known, self.stale = infer_shapes(self.model), False
        return self.known.get(tensor)

    def channels(self, tensor: str, axis: int, where: str) -> int:
        shape = self.get(tensor)
        if shape is None or not -len(shape) <= axis < len(shape) or shape[axis] is None:
            raise Refuse(f"channel count of '{tensor}' unknown at '{where}'")
        return int(shape[axis])
