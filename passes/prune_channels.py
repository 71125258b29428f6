"""Channel pruning: remove the lowest-L2-norm output channels of Conv / ConvTranspose (group 1) /
Gemm / MatMul and follow the pruned tensor through every reader that keeps the channel axis
aligned, so that weight shapes really shrink.

The region reached from one pruned producer is walked node by node in graph (topological) order,
so a node is visited once every input it reads from the region is known. Each region tensor carries
its own `keep` (the surviving channel indices of *that* tensor): Concat on the channel axis shifts
the producer's keep by the channel counts of the inputs before it and keeps the other inputs whole;
Split on the channel axis cuts keep into one per output and gets smaller split sizes. Followed:
unary activations, BatchNormalization, elementwise ops with a constant operand (or joining two region
tensors with the same channels, like x * hardsigmoid(x)), pooling, depthwise Conv (its channels go
too), Resize with channel scale 1, Flatten of a 1x1 map, Concat/Split on the channel axis. It stops
at the next Conv/ConvTranspose/Gemm/MatMul, whose input channels it slices. Anything else (a graph
output, a join whose other side no layer can shrink, a Concat on another axis, unknown channel
counts, ...) makes it refuse that layer and leave the graph alone, with the reason in the report.

Joins (prune_joins.py): a gate (x * hardsigmoid(conv(pool(x)))) takes its producing layer along;
a residual Add or an FPN merge makes every layer writing into it one group that loses the same
channels (lowest summed norms), all followed together. What the dropped channels held as a
constant (their bias, through the ops on the way) is folded into the bias of the layer ending
the region (prune_compensate.py).
"""
from __future__ import annotations

import heapq

import numpy as np
import onnx

from graphopt.ir.graph import subgraph_reads

from . import prune_compensate as comp
from .prune_base import BINARY, POOLS, UNARY, Carried, Join, Refuse, Shapes, attr, producers
from .prune_joins import pull_back, set_split_sizes, visit_concat, visit_split, walk_back
from .quantize.common import ModelView, node_label

MAX_GROUP = 64  # layers pruned together on shared channels (a long residual stage)


def prune_channels(model: onnx.ModelProto, view: ModelView, ratio: float, report, exclude=(),
                   align: int = 4, scores: dict | None = None) -> None:
    """Prune every producer not named in `exclude` (node labels); fills report.pruned / refused.
    Layers of 16 channels or more keep a multiple of `align` (rounding the cut down).
    Layers whose outputs meet at a join (a residual Add, an FPN merge) are pruned as one group,
    keeping the same channels; a gate's producer goes along with the layer it gates.
    scores (layer label -> per-output-channel importance, prune_select.py) replace the weight
    norms for the layers it covers (a group uses them only when every member has them)."""
    shapes = Shapes(model)
    captured = subgraph_reads(model.graph)
    excluded = set(exclude)
    done = set(excluded)  # and the layers already pruned (a second cut would compound)
    for node, _ in list(producers(view)):
        label = node_label(node)
        if label in done:
            continue
        group, planned, reason = [node], None, ""
        for _ in range(MAX_GROUP):
            try:
                plan = _plan_group(view, shapes, group, ratio, captured, align, scores or {})
                gates = [node_label(t) for kind, t, _, _ in (plan[0] if plan else []) if kind == "coupled"]
                if any(g in excluded for g in gates):
                    raise Refuse(f"its gate's producer '{next(g for g in gates if g in excluded)}' is excluded")
                planned = plan
                break
            except Join as join:
                new = [p for p in join.producers if all(p is not g for g in group)]
                blocked = [node_label(p) for p in new if node_label(p) in done]
                if not new or blocked:
                    reason = str(join) + (f" ('{blocked[0]}' is excluded or already pruned)" if blocked else "")
                    break
                group += new
            except Refuse as why:
                reason = str(why)
                break
        else:
            reason = f"more than {MAX_GROUP} layers share these channels"
        if planned is None and reason:
            report.refused[label] = reason
            continue
        if planned is None:  # the ratio removes no channel of this width
            continue
        edits, keep, total = planned
        kept = keep.size
        _apply(view, edits)
        view.refresh()
        shapes.stale = True
        for member in group:
            done.add(node_label(member))
            report.refused.pop(node_label(member), None)
            report.pruned[node_label(member)] = f"{kept}/{total} channels" + (
                "" if member is node else f" (with {label})")
            report.kept[node_label(member)] = keep
            if member is not node:
                report.coupled[node_label(member)] = label
        for kind, target, count, keep in edits:  # gate producers pruned along with this layer
            if kind == "group":  # a depthwise conv losing the same channels (recovery refits it)
                report.kept[node_label(target)] = keep
            if kind == "coupled":
                report.kept[node_label(target)] = keep
                done.add(node_label(target))
                report.pruned[node_label(target)] = f"{keep.size}/{count} channels (with {label})"
                report.coupled[node_label(target)] = label
                report.refused.pop(node_label(target), None)


def _axes(node, w):
    """(axis of the output channels in the weight, axis of the channels in the output)."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "ConvTranspose":
        return 1, 1
    if node.op_type == "Gemm":
        return (0 if attr(node, "transB", 0) else 1), -1
    return 1, -1


def _plan_group(view: ModelView, shapes: Shapes, group: list, ratio: float, captured: set, align: int,
                scores: dict):
    """Edits pruning the same lowest-norm channels (norms summed over the group) from every layer
    of the group and following them; None when the ratio drops nothing; raises Refuse / Join."""
    weights = [view.const(n.input[1]) for n in group]  # read again: earlier cuts may have sliced inputs
    axes = [_axes(n, w) for n, w in zip(group, weights)]
    totals = {w.shape[a] for w, (a, _) in zip(weights, axes)}
    if len(totals) != 1:
        raise Refuse(f"layers joined on the same channels have different widths {sorted(totals)}")
    total = totals.pop()
    drop = int(np.floor(total * ratio))
    if align > 1 and total >= 16:  # keep a multiple of `align`: ORT's blocked conv kernels run faster
        drop = total - min(total, -(-(total - drop) // align) * align)
    if drop == 0:
        return None
    norms = sum((np.moveaxis(w, a, 0).reshape(total, -1).astype(np.float64) ** 2).sum(1)
                for w, (a, _) in zip(weights, axes))
    if all(node_label(n) in scores and scores[node_label(n)].size == total for n in group):
        norms = sum(scores[node_label(n)].astype(np.float64) for n in group)
    order = np.argsort(norms, kind="stable")
    keep, gone = np.sort(order[drop:]), np.sort(order[:drop])
    edits, starts = [], []
    for node, w, (w_axis, out_axis) in zip(group, weights, axes):
        edits.append(("input", node, 1, np.take(w, keep, axis=w_axis)))
        lost = np.zeros(drop)
        if len(node.input) > 2 and node.input[2]:
            b = view.const(node.input[2])
            if b is None or b.ndim not in (1, 2) or b.size != total or (b.ndim == 2 and b.shape[0] != 1):
                raise Refuse(f"bias of '{node_label(node)}' is not a constant per-channel vector")
            edits.append(("input", node, 2, np.take(b, keep, axis=-1)))
            lost = b.reshape(-1)[gone].astype(np.float64) * (attr(node, "beta", 1.0) if node.op_type == "Gemm" else 1)
        rank = shapes.rank(node.output[0]) or \
            (w.ndim if node.op_type in ("Conv", "ConvTranspose") else 2 if node.op_type == "Gemm" else None)
        starts.append((node, Carried(out_axis, rank, keep, gone, lost)))
    _plan(view, shapes, starts, edits, captured)
    return edits, keep, total


def _apply(view: ModelView, edits: list) -> None:
    for kind, target, index, value in edits:
        if kind == "input":  # a new (sliced) initializer: shared weights are never edited in place
            while len(target.input) <= index:  # a bias the layer did not have (compensation)
                target.input.append("")
            target.input[index] = view.add_init(f"{target.input[index] or node_label(target) + '_bias'}_pruned", value)
        elif kind == "coupled":
            pass  # bookkeeping only: its weight edits are in the list
        elif kind == "group":
            for a in target.attribute:
                if a.name == "group":
                    a.i = index
        else:  # "split": new split sizes
            set_split_sizes(view, target, value)


def _plan(view: ModelView, shapes: Shapes, starts: list, edits: list, captured: set) -> None:
    """Walk the region of the pruned tensors in graph order, appending edits; raises Refuse."""
    order = {id(n): i for i, n in enumerate(view.model.graph.node)}
    carried: dict[str, Carried] = {}
    heap: list[int] = []
    nodes = {}

    def carry(tensor: str, c: Carried) -> None:
        if tensor in view.outputs:
            raise Refuse(f"channels reach the graph output '{tensor}'")
        if tensor in captured:
            raise Refuse(f"'{tensor}' is read inside a subgraph (If/Loop/Scan body)")
        carried[tensor] = c
        for reader in view.consumers.get(tensor, []):
            nodes[order[id(reader)]] = reader
            heapq.heappush(heap, order[id(reader)])

    for source, start in starts:
        carry(source.output[0], start)
    done: set[int] = set()
    while heap:
        idx = heapq.heappop(heap)
        if idx in done:
            continue
        done.add(idx)
        reader = nodes[idx]
        ins = {k: carried[t] for k, t in enumerate(reader.input) if t in carried}
        _visit(view, shapes, reader, ins, edits, carry)
    slots = [(id(node), index) for kind, node, index, _ in edits if kind == "input"]
    if len(slots) != len(set(slots)):  # e.g. a layer both read by the region and gating it
        raise Refuse("a weight would be sliced twice (the layer reaches itself through a join)")
    if any(kind == "coupled" and any(node is s for s, _ in starts) for kind, node, _, _ in edits):
        raise Refuse("the layer gates its own channels")


def _visit(view, shapes, node, ins: dict, edits: list, carry) -> None:
    op, label = node.op_type, node_label(node)
    first = ins.get(0)
    if op in POOLS or op == "BatchNormalization":  # these treat axis 1 as the channel axis
        if first is not None and (first.rank is None or first.axis % first.rank != 1):
            raise Refuse(f"channels of '{node.input[0]}' are not on axis 1 at '{label}'")
    if op in UNARY or op in POOLS:
        if first is None or len(ins) > 1:
            raise Refuse(f"channels reach a parameter input of '{label}'")
        if op == "Clip" and any(view.const(i) is not None and view.const(i).size > 1 for i in node.input[1:] if i):
            raise Refuse(f"'{label}' clips per channel")
        carry(node.output[0], first if op in POOLS else first.like(lost=comp.unary(view, node, first.lost)))
    elif op == "BatchNormalization":
        params = [view.const(node.input[k]) for k in range(1, 5)]
        if first is None or len(ins) > 1 or any(p is None for p in params):
            raise Refuse(f"'{label}' has non-constant parameters")
        edits.extend(("input", node, k, p[first.keep]) for k, p in zip(range(1, 5), params))
        s, t, m, v = (p.astype(np.float64)[first.drop] for p in params)
        lost = None if first.lost is None else s * (first.lost - m) / np.sqrt(v + attr(node, "epsilon", 1e-5)) + t
        carry(node.output[0], first.like(lost=lost))
    elif op in BINARY:
        _visit_binary(view, shapes, node, ins, edits, carry)
    elif op == "Conv":  # with pads, the folded constant is exact inside and approximate at the border
        _visit_conv(view, node, ins, edits, carry)
    elif op == "ConvTranspose" and list(ins) == [0] and attr(node, "group", 1) == 1 \
            and view.const(node.input[1]) is not None and first.rank is not None and first.axis % first.rank == 1:
        # weight (C_in, C_out, k...): the input channels are axis 0. A transposed conv spreads a
        # constant unevenly (stride overlaps), so the dropped channels' constants are not folded.
        edits.append(("input", node, 1, view.const(node.input[1])[first.keep]))
    elif op in ("Resize", "Upsample") and list(ins) == [0] and first.rank is not None \
            and _keeps_channels(view, node, first.axis % first.rank):
        carry(node.output[0], first)
    elif op == "Flatten" and list(ins) == [0] and attr(node, "axis", 1) == 1 and first.rank is not None \
            and first.axis % first.rank == 1 and _spatial_is_one(shapes.spatial(node.input[0])):
        carry(node.output[0], first.like(1, 2))
    elif op in ("Gemm", "MatMul") and list(ins) == [0] and (first.rank is None or first.axis % first.rank == first.rank - 1):
        w = view.const(node.input[1])
        if w is None or (op == "MatMul" and w.ndim != 2):
            raise Refuse(f"'{label}' has a non-constant or batched weight")
        if op == "Gemm" and attr(node, "transA", 0):
            raise Refuse(f"'{label}' has transA")
        in_axis = 1 if op == "Gemm" and attr(node, "transB", 0) else 0
        edits.append(("input", node, 1, np.take(w, first.keep, axis=in_axis)))
        bias = comp.gemm_bias(view, node, w, in_axis, first.drop, first.lost)
        if bias is not None:
            edits.append(("input", node, 2, bias))
        folded = comp.matmul_bias(view, node, w, first.drop, first.lost) if op == "MatMul" else None
        if folded is not None:  # into the Add that follows: x @ W + b
            edits.append(("input", *folded))
    elif op == "Concat":
        visit_concat(shapes, node, ins, carry)
    elif op == "Split" and list(ins) == [0]:
        visit_split(view, shapes, node, first, edits, carry)
    else:
        raise Refuse(f"cannot follow channels through '{label}' ({op})")


def _visit_binary(view, shapes, node, ins, edits, carry) -> None:
    label = node_label(node)
    if len(ins) == 2:  # both operands carry pruned channels: only legal when they are the same ones
        a, b = ins[0], ins[1]
        if a.rank is None or b.rank is None or a.axis % a.rank - a.rank != b.axis % b.rank - b.rank \
                or not np.array_equal(a.keep, b.keep):
            raise Refuse(f"'{label}' joins differently pruned channels")
        lost = None if a.lost is None or b.lost is None else comp.binary(node.op_type, a.lost, b.lost)
        carry(node.output[0], a.like(a.axis % a.rank - a.rank, max(a.rank, b.rank), lost))
        return
    (pos, c_in), = ins.items()
    other = node.input[1 - pos]
    c = view.const(other)
    if c is None:  # a gate (x * sigmoid(conv(pool(x)))): its channels must go too
        total = shapes.channels(node.input[pos], c_in.axis, label)
        try:
            pull_back(view, shapes, node, other, c_in, total, edits)
        except Refuse as why:  # not a gate: maybe a residual join, prunable with the other side's layers
            makers = walk_back(view, other)
            if makers:
                raise Join(str(why), makers) from None
            raise
        carry(node.output[0], c_in.like(lost=None))  # the gate's value is not a constant
        return
    if c_in.rank is None:
        raise Refuse(f"rank of '{node.input[pos]}' unknown at '{label}'")
    k = (c_in.axis % c_in.rank) - (c_in.rank - c.ndim)
    if k >= 0 and c.shape[k] > 1:
        edits.append(("input", node, 1 - pos, np.take(c, c_in.keep, axis=k)))
    rank = max(c_in.rank, c.ndim)
    values = None if c_in.lost is None else comp.per_channel(c, k, c_in.drop)
    lost = None if values is None else \
        comp.binary(node.op_type, *((c_in.lost, values) if pos == 0 else (values, c_in.lost)))
    if lost is not None and not np.all(np.isfinite(lost)):
        lost = None
    carry(node.output[0], c_in.like(c_in.axis % c_in.rank - c_in.rank + rank, rank, lost))


def _visit_conv(view, node, ins, edits, carry) -> None:
    label, first = node_label(node), ins.get(0)
    w = view.const(node.input[1])
    if first is None or len(ins) > 1:
        raise Refuse(f"channels reach a parameter input of '{label}'")
    if w is None:
        raise Refuse(f"'{label}' has a non-constant weight")
    if first.rank is None or first.axis % first.rank != 1:
        raise Refuse(f"channels of '{node.input[0]}' are not on axis 1 at '{label}'")
    group = attr(node, "group", 1)
    if group == 1:
        edits.append(("input", node, 1, w[:, first.keep]))
        bias = comp.conv_bias(view, node, w, first.drop, first.lost)
        if bias is not None:
            edits.append(("input", node, 2, bias))
    elif group == w.shape[0] and w.shape[1] == 1:  # depthwise: its channels go too
        edits.append(("input", node, 1, w[first.keep]))
        b = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], w.dtype)
        if b is None:
            raise Refuse(f"'{label}' has a non-constant bias")
        if len(node.input) > 2 and node.input[2]:
            edits.append(("input", node, 2, b[first.keep]))
        edits.append(("group", node, int(first.keep.size), first.keep))
        lost = None if first.lost is None else \
            first.lost * w[first.drop].reshape(first.drop.size, -1).sum(1) + b[first.drop]
        carry(node.output[0], first.like(1, lost=lost))
    else:
        raise Refuse(f"'{label}' is a grouped Conv")


def _keeps_channels(view: ModelView, node, axis: int) -> bool:
    """Resize/Upsample whose scale on the channel axis is 1 (and no size given for it)."""
    scales = view.const(node.input[2]) if node.op_type == "Resize" and len(node.input) > 2 and node.input[2] \
        else view.const(node.input[1]) if node.op_type == "Upsample" and len(node.input) > 1 else None
    sizes = view.const(node.input[3]) if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] else None
    if sizes is not None and sizes.size:
        return False
    return scales is not None and scales.size > axis and float(scales[axis]) == 1.0


def _spatial_is_one(spatial) -> bool:
    return bool(spatial) and all(d == 1 for d in spatial)
