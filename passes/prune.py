"""Pruning: channel (weights really shrink), unstructured magnitude, and 2:4 semi-structured.

Channel mode removes the lowest-L2-norm output channels of Conv (group 1) / Gemm / MatMul and
follows the pruned tensor through every consumer that keeps the channel axis aligned: unary
activations, BatchNormalization, elementwise ops with a constant operand, pooling, depthwise Conv
(its channels go too), Flatten of a 1x1 map; it stops at the next Conv/Gemm/MatMul, whose input
channels it slices. Anything else on the way (a graph output, a residual Add of two activations,
Concat, Reshape, ...) makes it refuse that layer and leave it alone, with the reason in the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .quantize.common import ModelView, node_label

UNARY = {"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu",
         "Softplus", "Identity", "Neg", "Abs", "Mish", "Dropout"}
POOLS = {"GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool"}
BINARY = {"Add", "Sub", "Mul", "Div"}
MODES = ("channel", "unstructured", "2:4")


@dataclass
class PruneReport:
    mode: str
    ratio: float
    pruned: dict = field(default_factory=dict)     # layer -> "kept/total channels" or sparsity
    refused: dict = field(default_factory=dict)    # layer -> reason
    params_before: int = 0
    params_after: int = 0
    nonzero_after: int = 0
    flops_before: int = 0
    flops_after: int = 0

    def to_text(self) -> str:
        lines = [f"prune ({self.mode}, ratio {self.ratio:g}): {len(self.pruned)} layer(s) pruned, "
                 f"{len(self.refused)} refused",
                 f"  parameters {self.params_before:,} -> {self.params_after:,}; sparsity "
                 f"{1 - self.nonzero_after / max(self.params_after, 1):.1%}; FLOPs (Conv/Gemm/MatMul) "
                 f"{self.flops_before / 1e6:.2f}M -> {self.flops_after / 1e6:.2f}M"]
        lines += [f"  pruned  {k}: {v}" for k, v in list(self.pruned.items())[:40]]
        lines += [f"  refused {k}: {v}" for k, v in list(self.refused.items())[:40]]
        return "\n".join(lines)


def _attr(node, name, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _set_const(view: ModelView, node, index: int, value: np.ndarray) -> None:
    """Give node.input[index] a new (sliced) initializer: shared weights are never edited in place."""
    node.input[index] = view.add_init(f"{node.input[index]}_pruned", value)


class _Refuse(Exception):
    pass


def _producers(view: ModelView):
    for node in view.model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            w = view.const(node.input[1])
            if w is None or w.dtype.kind != "f":
                continue
            if node.op_type == "Conv" and _attr(node, "group", 1) != 1:
                continue
            if node.op_type == "Gemm" and _attr(node, "transA", 0):
                continue
            if node.op_type == "MatMul" and w.ndim != 2:
                continue
            yield node, w


def _out_axis(node, w):
    """(axis of the output channel in the weight, axis of the channel in the output tensor)."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "Gemm":
        return (0 if _attr(node, "transB", 0) else 1), -1
    return 1, -1


def _plan_edits(view: ModelView, tensor: str, axis: int, rank: int | None, keep: np.ndarray, edits: list) -> None:
    """Collect (kind, node, input index, new value) edits for every reader of the pruned tensor and
    of everything that carries its channels on; raises _Refuse naming a reader it cannot follow.
    A join of two activations is allowed only when both carry these same pruned channels
    (x * hardsigmoid(x), a gate): checked once the whole region is known."""
    seen: set[str] = set()
    joins: list[tuple[str, str]] = []
    stack = [(tensor, axis, rank)]
    while stack:
        t, ax, rk = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        _follow(view, t, ax, rk, keep, edits, stack, joins)
    for label, other in joins:
        if other not in seen:
            raise _Refuse(f"'{label}' joins the channels with another activation")


def _follow(view, tensor, axis, rank, keep, edits, stack, joins) -> None:
    if tensor in view.outputs:
        raise _Refuse(f"channels reach the graph output '{tensor}'")
    for reader in view.consumers.get(tensor, []):
        op, label = reader.op_type, node_label(reader)
        if op in UNARY or op in POOLS:
            if op == "Clip" and any(view.const(i) is not None and view.const(i).size > 1 for i in reader.input[1:] if i):
                raise _Refuse(f"'{label}' clips per channel")
            stack.append((reader.output[0], axis, rank))
        elif op == "BatchNormalization":
            params = [view.const(reader.input[k]) for k in range(1, 5)]
            if any(p is None for p in params):
                raise _Refuse(f"'{label}' has non-constant parameters")
            edits.extend(("input", reader, k, p[keep]) for k, p in zip(range(1, 5), params))
            stack.append((reader.output[0], axis, rank))
        elif op in BINARY:
            other = [i for i in reader.input if i != tensor]
            if not other:  # x * x
                stack.append((reader.output[0], axis, rank))
                continue
            c = view.const(other[0])
            if c is None:
                joins.append((label, other[0]))
                stack.append((reader.output[0], axis, rank))
                continue
            if rank is None:
                raise _Refuse(f"rank of '{tensor}' unknown at '{label}'")
            k = (axis % rank) - (rank - c.ndim)
            if k >= 0 and c.shape[k] > 1:
                edits.append(("input", reader, list(reader.input).index(other[0]), np.take(c, keep, axis=k)))
            stack.append((reader.output[0], axis, max(rank, c.ndim)))
        elif op == "Conv" and reader.input[0] == tensor:
            w = view.const(reader.input[1])
            group = _attr(reader, "group", 1)
            if w is None:
                raise _Refuse(f"'{label}' has a non-constant weight")
            if group == 1:
                edits.append(("input", reader, 1, w[:, keep]))
            elif group == w.shape[0] and w.shape[1] == 1:  # depthwise: its channels go too
                edits.append(("input", reader, 1, w[keep]))
                if len(reader.input) > 2 and reader.input[2]:
                    edits.append(("input", reader, 2, view.const(reader.input[2])[keep]))
                edits.append(("group", reader, int(keep.size), None))
                stack.append((reader.output[0], 1, rank))
            else:
                raise _Refuse(f"'{label}' is a grouped Conv")
        elif op in ("Resize", "Upsample") and reader.input[0] == tensor and rank is not None \
                and _keeps_channels(view, reader, axis % rank):
            stack.append((reader.output[0], axis, rank))
        elif op == "Flatten" and _attr(reader, "axis", 1) == 1 and rank is not None and axis % rank == 1 \
                and _spatial_is_one(view, tensor):
            stack.append((reader.output[0], 1, 2))
        elif op in ("Gemm", "MatMul") and reader.input[0] == tensor and (rank is None or axis % rank == rank - 1):
            w = view.const(reader.input[1])
            if w is None or (op == "MatMul" and w.ndim != 2):
                raise _Refuse(f"'{label}' has a non-constant or batched weight")
            if op == "Gemm" and _attr(reader, "transA", 0):
                raise _Refuse(f"'{label}' has transA")
            in_axis = 1 if op == "Gemm" and _attr(reader, "transB", 0) else 0
            edits.append(("input", reader, 1, np.take(w, keep, axis=in_axis)))
        else:
            raise _Refuse(f"cannot follow channels through '{label}' ({op})")


def _keeps_channels(view: ModelView, node, axis: int) -> bool:
    """Resize/Upsample whose scale on the channel axis is 1 (and no size given for it)."""
    scales = view.const(node.input[2]) if node.op_type == "Resize" and len(node.input) > 2 and node.input[2] \
        else view.const(node.input[1]) if node.op_type == "Upsample" and len(node.input) > 1 else None
    sizes = view.const(node.input[3]) if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] else None
    if sizes is not None and sizes.size:
        return False
    return scales is not None and scales.size > axis and float(scales[axis]) == 1.0


def _spatial_is_one(view: ModelView, tensor: str) -> bool:
    shape = view.shapes.get(tensor)
    return shape is not None and len(shape) > 2 and all(d == 1 for d in shape[2:])


def prune(model: onnx.ModelProto, ratio: float, mode: str = "channel", sample_shapes: dict | None = None,
          scope: str = "layer") -> tuple[onnx.ModelProto, PruneReport]:
    """sample_shapes (input -> shape) fixes symbolic dims for the FLOP count only; scope "global"
    makes unstructured pruning use one magnitude threshold over all layers instead of one per layer."""
    if scope not in ("layer", "global"):
        raise ValueError(f"prune scope must be layer or global, got {scope}")
    if mode not in MODES:
        raise ValueError(mode)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    report = PruneReport(mode, ratio)
    report.params_before, _, report.flops_before = _stats(m, sample_shapes)
    view = ModelView(m)
    view.shapes = _shapes(m)
    if mode == "channel":
        _prune_channels(view, ratio, report)
    else:
        _prune_weights(view, ratio, mode, report, scope)
    from .quantize.static import _drop_unused_initializers
    _drop_unused_initializers(m)
    del m.graph.value_info[:]  # shapes changed; the checker / ORT infer them again
    report.params_after, report.nonzero_after, report.flops_after = _stats(m, sample_shapes)
    onnx.checker.check_model(m)
    return m, report


def _prune_channels(view: ModelView, ratio: float, report: PruneReport) -> None:
    for node, _ in list(_producers(view)):
        w = view.const(node.input[1])  # read again: an earlier layer may have sliced its input channels
        w_axis, out_axis = _out_axis(node, w)
        total = w.shape[w_axis]
        drop = int(np.floor(total * ratio))
        if drop == 0:
            continue
        norms = np.sqrt((np.moveaxis(w, w_axis, 0).reshape(total, -1).astype(np.float64) ** 2).sum(1))
        keep = np.sort(np.argsort(norms, kind="stable")[drop:])
        edits = [("input", node, 1, np.take(w, keep, axis=w_axis))]
        if len(node.input) > 2 and node.input[2]:
            b = view.const(node.input[2])
            if b is None or b.ndim != 1 or b.size != total:
                report.refused[node_label(node)] = "bias is not a constant per-channel vector"
                continue
            edits.append(("input", node, 2, b[keep]))
        rank = len(view.shapes[node.output[0]]) if node.output[0] in view.shapes else (w.ndim if node.op_type == "Conv" else None)
        try:
            _plan_edits(view, node.output[0], out_axis, rank, keep, edits)
        except _Refuse as why:
            report.refused[node_label(node)] = str(why)
            continue
        for kind, target, index, value in edits:
            if kind == "group":
                for a in target.attribute:
                    if a.name == "group":
                        a.i = index
            else:
                _set_const(view, target, index, value.astype(value.dtype))
        view.refresh()
        report.pruned[node_label(node)] = f"{keep.size}/{total} channels"


def _prune_weights(view: ModelView, ratio: float, mode: str, report: PruneReport, scope: str = "layer") -> None:
    global_thresh = None
    if mode == "unstructured" and scope == "global":
        every = np.concatenate([np.abs(w).ravel() for _, w in _producers(view)] or [np.zeros(0, np.float32)])
        k = int(np.floor(every.size * ratio))
        global_thresh = np.partition(every, k - 1)[k - 1] if k else None
        if global_thresh is None:
            return
    for node, w in list(_producers(view)):
        if mode == "unstructured":
            if global_thresh is None:
                k = int(np.floor(w.size * ratio))
                if k == 0:
                    continue
                thresh = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
            else:
                thresh = global_thresh
            mask = np.abs(w) > thresh
        else:  # 2:4 along the reduction (input-channel) axis: keep the 2 largest of every 4
            in_axis = 1 if node.op_type == "Conv" or (node.op_type == "Gemm" and _attr(node, "transB", 0)) else 0
            moved = np.moveaxis(w, in_axis, -1)
            if moved.shape[-1] % 4:
                report.refused[node_label(node)] = f"input channels ({moved.shape[-1]}) not a multiple of 4"
                continue
            groups = np.abs(moved).reshape(*moved.shape[:-1], -1, 4)
            order = np.argsort(groups, axis=-1, kind="stable")
            keep = np.zeros_like(groups, dtype=bool)
            np.put_along_axis(keep, order[..., 2:], True, axis=-1)
            mask = np.moveaxis(keep.reshape(moved.shape), -1, in_axis)
        _set_const(view, node, 1, np.where(mask, w, 0).astype(w.dtype))
        view.refresh()
        report.pruned[node_label(node)] = f"{1 - mask.mean():.1%} zeros"


def _shapes(model: onnx.ModelProto) -> dict:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _stats(model: onnx.ModelProto, sample_shapes: dict | None = None) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, multiply-accumulates of Conv/Gemm/MatMul per sample)."""
    if sample_shapes:
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
        for vi in fixed.graph.input:
            if vi.name in sample_shapes:
                for d, size in zip(vi.type.tensor_type.shape.dim, sample_shapes[vi.name]):
                    d.dim_value = int(size)
        model = fixed
    params = nonzero = 0
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f":
            params += a.size
            nonzero += int(np.count_nonzero(a))
    shapes, flops = _shapes(model), 0
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits:
            w = list(inits[n.input[1]].dims)
            out = shapes.get(n.output[0])
            if not out or any(d is None for d in out[1:]):
                continue
            per_out = int(np.prod(w[1:])) if n.op_type == "Conv" else w[0] if n.op_type == "MatMul" or not _attr(
                n, "transB", 0) else w[1]
            flops += int(np.prod(out[1:])) * per_out
    return params, nonzero, flops
