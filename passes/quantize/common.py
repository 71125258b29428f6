"""What every lossy pass needs: a ModelProto view (producers, consumers, initializers), weight
quantization with exact integer semantics, SQNR, and which nodes to leave in float.

The lossy passes work on the exported ModelProto (they run after the lossless pipeline), so the
edits here are plain protobuf edits; the model is re-checked by the caller.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from graphopt.errors import Unsupported, UsageError

# Ops whose second input is a weight we quantize per output channel: op -> (weight input index).
WEIGHTED_OPS = {"Conv": 1, "MatMul": 1, "Gemm": 1}


class ModelView:
    """Index over a ModelProto's main graph, rebuilt after edits with refresh()."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.refresh()

    def refresh(self) -> None:
        g = self.model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self._names = {t for n in g.node for t in itertools.chain(n.input, n.output)} | set(self.inits) \
            | {i.name for i in g.input} | {n.name for n in g.node}
        self._counter = itertools.count()

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def fresh(self, base: str) -> str:
        """A tensor/node name not yet used in the graph."""
        name = base
        while name in self._names:
            name = f"{base}_{next(self._counter)}"
        self._names.add(name)
        return name

    def add_init(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0]}"


def weight_axis(node: onnx.NodeProto, w: np.ndarray) -> int | None:
    """The output-channel axis of a node's weight, or None when it has no per-channel form."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return w.ndim - 1 if w.ndim >= 2 else None
    return None


def quantize_per_channel(w: np.ndarray, axis: int | None, bits: int = 8):
    """Symmetric signed quantization: scale = max|w| / qmax per channel, zero point 0.

    Rounds half to even and saturates exactly as QuantizeLinear does, so DequantizeLinear of the
    result reproduces what ORT computes from the same tensors."""
    qmax = (1 << (bits - 1)) - 1
    w = w.astype(np.float32)
    if axis is None:
        amax = np.array(np.abs(w).max(initial=0.0), np.float32)
    else:
        other = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.abs(w).max(axis=other, initial=0.0).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax - 1, qmax)
    return q.astype(np.int8), scale


def dequantize_per_channel(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    ref = ref.astype(np.float64)
    noise = float(((ref - approx.astype(np.float64)) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def activation_qparams(lo: float, hi: float, unsigned: bool = False):
    """Asymmetric 8-bit scale / zero point (int8, or uint8 when unsigned) for a calibrated range; the
    range always holds 0 so that zero (padding, ReLU's floor) is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = np.float32((hi - lo) / 255.0)
    qmin, dtype = (0, np.uint8) if unsigned else (-128, np.int8)
    if not np.isfinite(scale) or scale <= 0:
        return np.array(1.0, np.float32), np.array(0, dtype)
    zp = np.clip(np.rint(qmin - lo / float(scale)), qmin, qmin + 255)
    return np.array(scale, np.float32), np.array(zp, dtype)


# Layers with a constant weight that end a walk back from the outputs even though no quantizer here
# quantizes them: a detector's upsampling head ends in ConvTranspose, and the Conv before it is a
# feature layer, not the classifier (on PP-OCR det, keeping that 3x3 Conv float made ORT quantize
# it itself, per tensor, 1.4-3.6 ms slower than graphopt's per-channel QLinearConv).
HEAD_BOUNDARY_OPS = set(WEIGHTED_OPS) | {"ConvTranspose"}


def final_layers(view: ModelView) -> set[str]:
    """Names of the weighted nodes closest to a graph output (the classifier / regression head):
    walking back from each output, the first Conv/ConvTranspose/MatMul/Gemm with a constant weight
    on every path."""
    found, seen = set(), set()
    stack = list(view.outputs)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = view.producer.get(t)
        if node is None:
            continue
        if node.op_type in HEAD_BOUNDARY_OPS and len(node.input) > 1 and view.const(node.input[1]) is not None:
            found.add(node_label(node))
            continue
        stack.extend(i for i in node.input if i)
    return found


@dataclass
class Selection:
    """Which weighted nodes get quantized and why the others stay float."""
    quantize: list[onnx.NodeProto] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)  # node label -> reason


def select_nodes(view: ModelView, ops: set[str], exclude=(), keep_final: bool = True) -> Selection:
    """Nodes of `ops` to quantize. `exclude` holds node names or op types; the head stays float
    unless keep_final is False."""
    exclude = set(exclude)
    heads = final_layers(view) if keep_final else set()
    sel = Selection()
    for node in view.model.graph.node:
        if node.op_type not in ops:
            continue
        label = node_label(node)
        if node.name in exclude or node.op_type in exclude or label in exclude:
            sel.kept_float[label] = "excluded by --int8-exclude"
        elif label in heads:
            sel.kept_float[label] = "final layer (classifier) kept float"
        else:
            sel.quantize.append(node)
    return sel


def check_exclude_names(view: ModelView, exclude) -> None:
    """An --int8-exclude entry that names no node and no op type is a typo: say so."""
    names = {n.name for n in view.model.graph.node} | {node_label(n) for n in view.model.graph.node}
    ops = {n.op_type for n in view.model.graph.node}
    known_ops = {s.name for s in onnx.defs.get_all_schemas()}
    for e in exclude:
        if e not in names and e not in ops and e not in known_ops:
            raise UsageError(f"--int8-exclude: '{e}' is neither a node name nor an op type in the model")


def splice_nodes(model: onnx.ModelProto, replace: dict) -> None:
    """Put each node whose first output is a key of `replace` out, its replacement nodes in, in place."""
    nodes = []
    for n in model.graph.node:
        nodes.extend(replace.get(n.output[0], [n]) if n.output else [n])
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph (shape inference, then graph declarations)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001  (inference is a best effort; unknown tensors stay unknown)
        inferred = model
    g = inferred.graph
    types = {}
    for vi in itertools.chain(g.input, g.output, g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def at_least_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """A copy of the model at default-domain opset >= version (converted, not relabelled, since ops
    such as Squeeze and ReduceSum changed their signatures along the way)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    if current >= version:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    try:
        converted = onnx.version_converter.convert_version(model, version)
    except Exception as e:  # noqa: BLE001
        raise Unsupported(f"cannot raise the model from opset {current} to {version} for quantization: {e}") from None
    # the converter drops model-local functions (custom-domain ops) and their opset imports: keep them
    have = {(f.domain, f.name) for f in converted.functions}
    converted.functions.extend(f for f in model.functions if (f.domain, f.name) not in have)
    domains = {o.domain for o in converted.opset_import}
    converted.opset_import.extend(o for o in model.opset_import if o.domain not in domains)
    return converted
