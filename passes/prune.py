"""Pruning: channel (weights really shrink), unstructured magnitude, and 2:4 semi-structured.

Channel mode (prune_channels.py) removes the lowest-L2-norm output channels of Conv / ConvTranspose
/ Gemm / MatMul and the matching inputs of every consumer, through BN, activations, elementwise ops,
Concat/Split, gates and residual joins (layers sharing channels are pruned as a group); a layer it
cannot follow is left alone with the reason in the report. Unstructured and 2:4 modes
zero weights in place (shapes stay).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.ir.graph import subgraph_reads

from .prune_base import attr as _attr
from .prune_base import infer_shapes as _shapes
from .prune_base import producers as _producers
from .prune_channels import prune_channels
from .quantize.common import ModelView, node_label

MODES = ("channel", "unstructured", "2:4")


@dataclass
class PruneReport:
    mode: str
    ratio: float
    pruned: dict = field(default_factory=dict)     # layer -> "kept/total channels" or sparsity
    refused: dict = field(default_factory=dict)    # layer -> reason
    coupled: dict = field(default_factory=dict)    # gate producer -> the layer it was pruned along with
    kept: dict = field(default_factory=dict)       # channel mode: layer -> surviving output channel indices
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


def _set_const(view: ModelView, node, index: int, value: np.ndarray) -> None:
    """Give node.input[index] a new initializer: shared weights are never edited in place."""
    node.input[index] = view.add_init(f"{node.input[index]}_pruned", value)


def prune(model: onnx.ModelProto, ratio: float, mode: str = "channel", sample_shapes: dict | None = None,
          scope: str = "layer", exclude=(), align: int = 4, scores: dict | None = None
          ) -> tuple[onnx.ModelProto, PruneReport]:
    """sample_shapes (input -> shape) fixes symbolic dims for the FLOP count only; scope "global"
    makes unstructured pruning use one magnitude threshold over all layers instead of one per layer;
    exclude names layers (node labels, as in the report) to leave unpruned. Channel mode keeps a
    multiple of `align` channels in layers of 16 or more (30% of 48 channels cuts 12, not 14):
    on ONNX Runtime's CPU kernels that measured faster than the exact ratio (bench/prune_bench.py);
    align=1 cuts exactly floor(ratio * channels). scores (channel mode): layer label -> per-channel
    importance used instead of weight norms (prune_select.activation_scores)."""
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
    if mode == "channel":
        prune_channels(m, view, ratio, report, exclude, align, scores)
    else:
        _prune_weights(view, ratio, mode, report, scope, set(exclude))
    from .quantize.static import drop_unused_initializers
    drop_unused_initializers(m)
    _drop_unused_constants(m)
    del m.graph.value_info[:]  # shapes changed; the checker / ORT infer them again
    report.params_after, report.nonzero_after, report.flops_after = _stats(m, sample_shapes)
    onnx.checker.check_model(m)
    return m, report


def _prune_weights(view: ModelView, ratio: float, mode: str, report: PruneReport, scope: str = "layer",
                   exclude: set = frozenset()) -> None:
    layers = [(n, w) for n, w in _producers(view) if node_label(n) not in exclude]
    global_thresh = None
    if mode == "unstructured" and scope == "global":
        every = np.concatenate([np.abs(w).ravel() for _, w in layers] or [np.zeros(0, np.float32)])
        k = int(np.floor(every.size * ratio))
        global_thresh = np.partition(every, k - 1)[k - 1] if k else None
        if global_thresh is None:
            return
    for node, w in layers:
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
            # ConvTranspose weights are (C_in, C_out, k...): their reduction axis is 0, as for MatMul
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


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    """Constant nodes whose weights were replaced by sliced initializers are now read by no one."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output} \
        | subgraph_reads(model.graph)
    dead = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]
    for n in dead:
        model.graph.node.remove(n)


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
