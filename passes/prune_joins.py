"""Channel pruning across joins and forks: Concat and Split on the channel axis; the gate of a
join (x * hardsigmoid(conv(pool(x)))) whose producer loses the same channels (pull_back); the
layers on the other side of a residual join, found by walk_back, that the caller prunes as one
group with the layer it started from."""
from __future__ import annotations

import numpy as np
from onnx import helper

from .prune_base import BINARY, POOLS, UNARY, Carried, Refuse, Shapes, attr, producers
from .quantize.common import ModelView, node_label


def pull_back(view: ModelView, shapes: Shapes, join, tensor: str, c: Carried, total: int, edits: list) -> None:
    """Remove the same channels from the other operand of a join by walking back its producers
    (elementwise ops, each read only here) to a Conv/Gemm/MatMul whose output channels are sliced.
    Raises Refuse when the chain is anything else, so the layer is left alone."""
    why = Refuse(f"'{node_label(join)}' joins the channels with another activation")
    if c.rank is None:
        raise why
    chain = []
    while True:
        p = view.producer.get(tensor)
        if p is None or tensor in view.outputs or len(view.consumers.get(tensor, [])) != 1:
            raise why
        if p.op_type in UNARY and p.op_type != "Clip" or p.op_type == "Clip" and all(
                view.const(i) is not None and view.const(i).size == 1 for i in p.input[1:] if i):
            chain.append(p)
            tensor = p.input[0]
            continue
        if p.op_type in BINARY:
            consts = [(k, view.const(i)) for k, i in enumerate(p.input)]
            if sum(v is not None for _, v in consts) != 1:
                raise why
            (k, value), = [(k, v) for k, v in consts if v is not None]
            axis = (c.axis % c.rank) - (c.rank - value.ndim)
            if axis >= 0 and value.shape[axis] > 1:
                edits.append(("input", p, k, np.take(value, c.keep, axis=axis)))
            chain.append(p)
            tensor = p.input[1 - k]
            continue
        break
    w = view.const(p.input[1]) if len(p.input) > 1 else None
    if w is None or w.dtype.kind != "f" or p.op_type not in ("Conv", "Gemm", "MatMul"):
        raise why
    if p.op_type == "Conv":
        w_axis, ok = 0, attr(p, "group", 1) == 1 and c.axis % c.rank == 1
    elif p.op_type == "Gemm":
        w_axis, ok = (0 if attr(p, "transB", 0) else 1), c.axis % c.rank == c.rank - 1 and not attr(p, "transA", 0)
    else:
        w_axis, ok = 1, w.ndim == 2 and c.axis % c.rank == c.rank - 1
    if not ok or w.shape[w_axis] != total or (p.op_type == "Conv" and shapes.rank(p.output[0]) != c.rank):
        raise why  # a gate that broadcasts over the channels, or whose axes do not line up
    # the gate's layer may read the region too (sigmoid(conv(pool(x)))): its weight has already
    # lost input channels, and maybe gained a folded bias; slice the outputs of that edited value
    w_edit = _pop_edit(edits, p, 1)
    edits.append(("input", p, 1, np.take(w if w_edit is None else w_edit, c.keep, axis=w_axis)))
    b_edit = _pop_edit(edits, p, 2)
    if b_edit is not None or (len(p.input) > 2 and p.input[2]):
        b = b_edit if b_edit is not None else view.const(p.input[2])
        if b is None or b.ndim != 1 or b.size != w.shape[w_axis]:
            raise why
        edits.append(("input", p, 2, b[c.keep]))
    edits.append(("coupled", p, int(w.shape[w_axis]), c.keep))


def _pop_edit(edits: list, node, slot: int):
    """Remove and return the value of an earlier edit of node.input[slot] (None if none)."""
    for i, (kind, target, index, value) in enumerate(edits):
        if kind == "input" and target is node and index == slot:
            del edits[i]
            return value
    return None


def walk_back(view: ModelView, tensor: str, limit: int = 512) -> list | None:
    """The prunable layers whose channels make `tensor` (the other side of a residual join), found
    by walking back through per-channel ops: activations, BN, pooling, Resize, depthwise convs,
    elementwise ops (both sides of a join). None when the walk meets anything else (a graph input,
    a Concat, a Reshape, ...). The forward walk from them then proves the group legal or refuses."""
    prunable = {id(n) for n, _ in producers(view)}
    found, seen, stack = [], set(), [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        p = view.producer.get(t)
        if p is None or len(seen) > limit:
            return None
        if id(p) in prunable:
            if all(p is not f for f in found):
                found.append(p)
        elif p.op_type in UNARY or p.op_type in POOLS or p.op_type in ("BatchNormalization", "Resize", "Upsample"):
            stack.append(p.input[0])
        elif p.op_type == "Conv" and attr(p, "group", 1) > 1:  # depthwise keeps channels where they are
            stack.append(p.input[0])
        elif p.op_type in BINARY:
            stack.extend(i for i in p.input if view.const(i) is None)
        else:
            return None
    return found or None


def visit_concat(shapes: Shapes, node, ins: dict, carry) -> None:
    """Output keep = each input's keep (whole range for inputs outside the region), shifted by the
    channel counts before it."""
    label = node_label(node)
    some = next(iter(ins.values()))
    if some.rank is None:
        raise Refuse(f"rank unknown at '{label}'")
    axis = attr(node, "axis", 0) % some.rank
    if any(c.rank is None or c.axis % c.rank != axis for c in ins.values()):
        raise Refuse(f"'{label}' concatenates on axis {attr(node, 'axis', 0)}, not the channel axis")
    keep, drop, lost, offset = [], [], [], 0
    for k, tensor in enumerate(node.input):
        count = shapes.channels(tensor, axis, label)
        keep.append(offset + (ins[k].keep if k in ins else np.arange(count)))
        if k in ins:
            drop.append(offset + ins[k].drop)
            lost.append(ins[k].lost)
        offset += count
    lost = None if any(v is None for v in lost) else np.concatenate(lost)
    carry(node.output[0], Carried(axis, some.rank, np.concatenate(keep), np.concatenate(drop), lost))


def visit_split(view, shapes: Shapes, node, c: Carried, edits: list, carry) -> None:
    """Each output keeps the surviving channels inside its own range; the sizes shrink to match."""
    label = node_label(node)
    if c.rank is None or attr(node, "axis", 0) % c.rank != c.axis % c.rank:
        raise Refuse(f"'{label}' splits on axis {attr(node, 'axis', 0)}, not the channel axis")
    total = shapes.channels(node.input[0], c.axis, label)
    sizes = view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "split", None)
    if sizes is None:
        n = len(node.output)
        if total % n:  # opset 18 uneven num_outputs split: rare enough to leave alone
            raise Refuse(f"'{label}' splits {total} channels unevenly into {n}")
        sizes = [total // n] * n
    sizes = np.asarray(sizes, dtype=np.int64).ravel()
    if sizes.size != len(node.output) or int(sizes.sum()) != total:
        raise Refuse(f"split sizes of '{label}' do not match its {total} channels")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    new_sizes = []
    for out, start, size in zip(node.output, starts, sizes):
        part = c.keep[(c.keep >= start) & (c.keep < start + size)] - start
        if part.size == 0:
            raise Refuse(f"pruning would empty output '{out}' of '{label}'")
        new_sizes.append(part.size)
        inside = (c.drop >= start) & (c.drop < start + size)
        if part.size < size and out:  # an output that lost nothing needs no change downstream
            carry(out, Carried(c.axis, c.rank, part, c.drop[inside] - start, None if c.lost is None else c.lost[inside]))
    edits.append(("split", node, None, np.asarray(new_sizes)))


def set_split_sizes(view: ModelView, node, sizes: np.ndarray) -> None:
    sizes = sizes.astype(np.int64)
    if len(node.input) > 1 and node.input[1]:
        node.input[1] = view.add_init(f"{node.input[1]}_pruned", sizes)
        return
    for a in node.attribute:
        if a.name == "split":
            del a.ints[:]
            a.ints.extend(int(s) for s in sizes)
            return
    opset = next((o.version for o in view.model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset >= 13:  # sizes are an input since opset 13; num_outputs (18) may not come with them
        keep_attrs = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(keep_attrs)
        while len(node.input) < 2:
            node.input.append("")
        node.input[1] = view.add_init(f"{node_label(node)}_split", sizes)
    else:
        node.attribute.append(helper.make_attribute("split", [int(s) for s in sizes]))
