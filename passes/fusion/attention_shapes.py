"""Shape reads of the values an attention fusion removes, moved onto values that survive it.

Exports read sizes off the intermediate attention values: Hugging Face's `context.size()[:-2]`
(the merged heads), torch's SDPA decomposition `Shape(q_heads)[2]` and `Shape(P @ V)[0]` for a view
of the product. Once Attention(Q, K, V) replaces those values, each `Gather(Shape(t), i)` must read
the same size elsewhere: `dim_origin` walks from (t, i) up through the fused region (Transpose
perms, shape-keeping ops, MatMul batch/row/column dims, Reshape targets read by shape_proof) to a
value outside it, e.g. (Q, 1) for the sequence length. The parse has already proven that the region
is attention (Q/K/V batches agree, the mask does not enlarge the scores), which is what makes the
MatMul and Add steps sound.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import attr_value

from . import shape_proof


def dim_origin(t: gs.Tensor, axis: int, inside: set, opset: int):
    """(tensor outside `inside` (node ids), axis) whose size t's `axis` has, or None when unknown."""
    for _ in range(64):
        node = ir.producer(t)
        if node is None or id(node) not in inside:
            return t, axis
        rank, op, ins = ir.rank(t), node.op, node.inputs
        if rank is None or not 0 <= axis < rank:
            return None
        if op == "Transpose":
            perm = attr_value(node, "perm", opset)
            if perm is None:
                return None
            t, axis = ins[0], int(perm[axis])
        elif op in ("Softmax", "Identity", "Cast"):
            t = ins[0]
        elif op == "Where":  # the NaN guard Where(IsNaN(p), 0, p) has p's shape
            t = ins[2]
        elif op in ("Mul", "Div", "Add"):
            # a scale (a scalar constant) or the mask (checked not to enlarge the scores): follow the
            # operand that comes from inside the region and has the output's rank
            nxt = [i for i in ins if ir.producer(i) is not None and id(ir.producer(i)) in inside and ir.rank(i) == rank]
            if len(nxt) != 1:
                return None
            t = nxt[0]
        elif op == "MatMul":  # batch dims and rows from A (the parse proved A's and B's batches equal)
            t = ins[1] if axis == rank - 1 else ins[0]
            if ir.rank(t) != rank:
                return None
        elif op == "Reshape":
            elems = shape_proof.shape_elements(ins[1], opset)
            if elems is None or len(elems) != rank:
                return None
            e = elems[axis]
            if isinstance(e, shape_proof.Dim):
                t, axis = e.source, e.axis
            elif e == 0 and not attr_value(node, "allowzero", opset):
                t = ins[0]
            else:
                return None  # a constant or -1: not a size another value carries
        else:
            return None
    return None


def plan(graph: gs.Graph, inside: set, opset: int, root: gs.Node):
    """For every Shape node reading a float value made inside the region but not itself inside it: its
    Gather readers and where each should read instead. Returns [(gather, source, [axes])] or a
    reason string naming the read that cannot be moved."""
    moves = []
    for node in [n for n in graph.nodes if id(n) in inside and n is not root]:  # the root's output is replaced
        for out in node.outputs:
            if out.dtype is None or not np.issubdtype(np.dtype(out.dtype), np.floating):
                continue  # int shape arithmetic on the way is shared freely; it goes when dead
            for shape in out.outputs:
                if id(shape) in inside:
                    continue
                if shape.op != "Shape":
                    return f"'{out.name}' has other consumers"
                start, end = attr_value(shape, "start", opset) or 0, attr_value(shape, "end", opset)
                rank = ir.rank(out)
                if rank is None or start != 0 or end not in (None, rank) or ir.is_graph_output(graph, shape.outputs[0]):
                    return f"Shape '{shape.name}' of '{out.name}' takes a range of dims or is a graph output"
                for g in shape.outputs[0].outputs:
                    index = ir.const_value(g.inputs[1]) if g.op == "Gather" and len(g.inputs) == 2 else None
                    if index is None or attr_value(g, "axis", opset) not in (0, None) or g.inputs[0] is not shape.outputs[0]:
                        return f"'{g.name}' reads the shape of '{out.name}' otherwise than by a constant Gather"
                    origins = [dim_origin(out, int(i) % rank, inside, opset) for i in index.reshape(-1)]
                    if any(o is None for o in origins) or len({id(o[0]) for o in origins}) != 1:
                        return f"'{g.name}' reads dims {index.reshape(-1).tolist()} of '{out.name}' that no kept value has"
                    moves.append((g, origins[0][0], np.array([o[1] for o in origins], np.int64).reshape(index.shape)))
    return moves


def apply(m, moves) -> None:
    """Each planned Gather reads its index from a new Shape of its source (CSE merges repeats)."""
    shapes, seen = {}, {id(n) for n in m.matched}
    for g, source, index in moves:
        old = ir.producer(g.inputs[0])
        if id(old) not in seen:  # the driver removes it with the region once nothing reads it
            seen.add(id(old))
            m.matched.append(old)
        if id(source) not in shapes:
            rank = ir.rank(source)
            shapes[id(source)] = m.op("Shape", [source], dtype=np.int64, shape=[rank] if rank is not None else None)
        g.inputs[0] = shapes[id(source)]
        g.inputs[1] = gs.Constant(ir.fresh_name(f"{g.name or 'gather'}_index"), index)


def static_dim(t: gs.Tensor, axis: int, opset: int) -> int | None:
    """t's axis as a known int: from its shape, or through Transposes to a Reshape's constant element."""
    for _ in range(8):
        if t.shape is not None and 0 <= axis < len(t.shape) and isinstance(t.shape[axis], int):
            return t.shape[axis]
        node = ir.producer(t)
        if node is None or node.op not in ("Transpose", "Reshape"):
            return None
        if node.op == "Transpose":
            perm = attr_value(node, "perm", opset)
            if perm is None:
                return None
            t, axis = node.inputs[0], int(perm[axis])
            continue
        elems = shape_proof.shape_elements(node.inputs[1], opset)
        e = None if elems is None or axis >= len(elems) else elems[axis]
        if e == -1 and axis == 2 and len(elems) == 4 and isinstance(elems[3], int) and elems[3] > 0 \
                and ir.rank(node.inputs[0]) == 3 and isinstance(node.inputs[0].shape[2], int):
            return node.inputs[0].shape[2] // elems[3]  # (B, S, -1, D) of a static hidden size: its heads
        return e if isinstance(e, int) and e > 0 else None
    return None


def repeat_kv(t: gs.Tensor, opset: int):
    """(x, n_rep) when t = Reshape(Expand(Unsqueeze(x, [2]), [B, h, n_rep, S, D]), [B, h*n_rep, S, D]) with
    x (B, h, S, D), every piece proven: Hugging Face's repeat_kv of grouped-query attention."""
    outer = ir.producer(t)
    if outer is None or outer.op != "Reshape":
        return None
    expand = ir.producer(outer.inputs[0])
    if expand is None or expand.op != "Expand" or len(outer.inputs[0].outputs) != 1:
        return None
    unsq = ir.producer(expand.inputs[0])
    if unsq is None or unsq.op != "Unsqueeze" or len(expand.inputs[0].outputs) != 1:
        return None
    axes = ir.const_value(unsq.inputs[1]) if len(unsq.inputs) > 1 else attr_value(unsq, "axes", opset)
    x = unsq.inputs[0]
    if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] != [2] or ir.rank(x) != 4:
        return None
    wide = shape_proof.shape_elements(expand.inputs[1], opset)
    back = shape_proof.shape_elements(outer.inputs[1], opset)
    if wide is None or back is None or len(wide) != 5 or len(back) != 4:
        return None
    n_rep, kv = wide[2], static_dim(x, 1, opset)
    if not isinstance(n_rep, int) or n_rep < 1 or kv is None:
        return None
    if not all(e == 1 or _is_dim(e, x, a, opset) for e, a in zip(wide[:2] + wide[3:], (0, 1, 2, 3))):
        return None
    heads = back[1]
    heads_ok = heads == kv * n_rep or (isinstance(heads, shape_proof.Scaled) and heads.factor == n_rep
                                       and _is_dim(heads.dim, x, 1, opset))
    others = [(back[0], 0), (back[2], 2), (back[3], 3)]
    if not all(_is_dim(e, x, a, opset) or (e == -1 and a == 3 and heads_ok) for e, a in others):
        return None
    if not heads_ok and heads != -1:  # -1 with every other dim proven: the element count leaves kv*n_rep
        return None
    return x, n_rep


def _is_dim(e, x: gs.Tensor, axis: int, opset: int) -> bool:
    if isinstance(e, shape_proof.Dim):
        return e.source is x and e.axis == axis or shape_proof.same_dim(e.source, e.axis, x, axis)
    return isinstance(e, int) and e > 0 and static_dim(x, axis, opset) == e


def flat_transpose(t: gs.Tensor, opset: int) -> gs.Tensor | None:
    """x when t = Reshape(Transpose(Reshape(x, [-1, S, D]), [0, 2, 1]), [B, H, D, S]) with x (B, H, S, D),
    every piece proven: torch's export of k.transpose(-2, -1) through 3-D, i.e. x with perm [0,1,3,2]."""
    outer = ir.producer(t)
    if outer is None or outer.op != "Reshape":
        return None
    mid = ir.producer(outer.inputs[0])
    if mid is None or mid.op != "Transpose" or [int(p) for p in attr_value(mid, "perm", opset) or []] != [0, 2, 1]:
        return None
    inner = ir.producer(mid.inputs[0])
    if inner is None or inner.op != "Reshape" or len(outer.inputs[0].outputs) != 1 or len(mid.inputs[0].outputs) != 1:
        return None
    x = inner.inputs[0]
    if ir.rank(x) != 4:
        return None
    flat, back = shape_proof.shape_elements(inner.inputs[1], opset), shape_proof.shape_elements(outer.inputs[1], opset)
    if flat is None or back is None or len(flat) != 3 or len(back) != 4:
        return None
    if flat[0] != -1 or not _is_dim(flat[1], x, 2, opset) or not _is_dim(flat[2], x, 3, opset):
        return None
    if not all(_is_dim(e, x, a, opset) for e, a in zip(back, (0, 1, 3, 2))):
        return None
    return x


def repeat_heads(graph: gs.Graph, t: gs.Tensor, kv_heads: int, n_rep: int) -> gs.Tensor:
    """t (B, T, kv*D) with each of its kv heads repeated n_rep times, in order: (B, T, kv*n_rep*D).
    For targets whose attention ops take as many K/V heads as query heads (ORT's MultiHeadAttention)."""
    dim = t.shape[-1] // kv_heads if t.shape is not None and isinstance(t.shape[-1], int) else None
    base = ir.fresh_name(f"{t.name}_repeat")

    def add(op, inputs):
        out = gs.Variable(ir.fresh_name(f"{base}_{op}"), dtype=t.dtype)
        graph.nodes.append(gs.Node(op, name=ir.fresh_name(f"{base}_{op}"), inputs=inputs, outputs=[out]))
        return out

    const = lambda name, v: gs.Constant(ir.fresh_name(f"{base}_{name}"), np.array(v, np.int64))  # noqa: E731
    split = add("Reshape", [t, const("split", [0, 0, kv_heads, 1, dim])])
    wide = add("Expand", [split, const("reps", [1, 1, 1, n_rep, 1])])
    out = add("Reshape", [wide, const("merge", [0, 0, kv_heads * n_rep * dim])])
    out.shape = None if t.shape is None else [t.shape[0], t.shape[1], kv_heads * n_rep * dim]
    return out


def repeat_cache(graph: gs.Graph, node: gs.Node, which: int, kv_heads: int, n_rep: int) -> gs.Tensor:
    """For ORT's MultiHeadAttention (as many K/V heads as query heads): the node's past (which: 0 key,
    1 value; (B, kv, P, D)) with each head repeated n_rep times, and its present output (B, kv*n_rep, T, D)
    cut back to every n_rep-th head, the original present (B, kv, T, D)."""
    past, present = node.inputs[4 + which], node.outputs[1 + which]
    base = ir.fresh_name(f"{node.name or 'attention'}_cache{which}")
    const = lambda name, v: gs.Constant(ir.fresh_name(f"{base}_{name}"), np.array(v, np.int64))  # noqa: E731

    def add(op, inputs, out=None):
        out = out or gs.Variable(ir.fresh_name(f"{base}_{op}"), dtype=past.dtype)
        graph.nodes.append(gs.Node(op, name=ir.fresh_name(f"{base}_{op}"), inputs=inputs, outputs=[out]))
        return out

    dim = past.shape[3] if past.shape is not None and isinstance(past.shape[3], int) else -1
    wide = add("Expand", [add("Unsqueeze", [past, const("axis", [2])]), const("reps", [1, 1, n_rep, 1, 1])])
    repeated = add("Reshape", [wide, const("merge", [0, kv_heads * n_rep, -1, dim])])
    full = gs.Variable(ir.fresh_name(f"{base}_present"), dtype=present.dtype)
    node.outputs[1 + which] = full
    add("Slice", [full, const("start", [0]), const("end", [kv_heads * n_rep]), const("axes", [1]),
                  const("step", [n_rep])], out=present)
    return repeated
