"""Reading runtime shape arithmetic as exporters write it, and proving which dims it stands for.

Exports with dynamic batch/sequence build a Reshape's target shape at run time, e.g. Hugging Face's
`x.view(x.size()[:-1] + (H, D))`:

    Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [H], [D])

`shape_elements` reads such a 1-D int64 tensor element by element: a constant int, or `Dim(t, i)`
(the run-time size of t's axis i), through Shape (start/end), Gather, Slice, Concat, Unsqueeze,
Squeeze, Reshape, Cast and Identity. Anything else (arithmetic on dims, data-dependent values) gives
None: the caller refuses and names the piece.

`same_dim(a, i, b, j)` proves that a's axis i and b's axis j have one size at run time: the same
tensor and axis, or both reached through ops that keep that leading axis (a projection MatMul with a
2-D constant weight, elementwise ops with a constant that does not broadcast that axis, last-axis
normalizations) from one tensor, or both static and equal, or the same symbolic name.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import attr_value


class Dim(NamedTuple):
    """The run-time size of `source`'s axis `axis` (axis >= 0)."""
    source: gs.Tensor
    axis: int


class Scaled(NamedTuple):
    """dim * factor (repeat_kv's heads: kv_heads * n_rep)."""
    dim: Dim
    factor: int


def _axes_input(node, opset, index=1):
    """Unsqueeze/Squeeze axes: the attribute before opset 13, the constant input from 13."""
    if opset < 13:
        value = attr_value(node, "axes", opset)
        return None if value is None else [int(a) for a in value]
    if len(node.inputs) <= index or node.inputs[index].is_empty():
        return None
    value = ir.const_value(node.inputs[index])
    return None if value is None else [int(a) for a in value.reshape(-1)]


def shape_elements(t: gs.Tensor, opset: int, depth: int = 0):
    """The elements of the 1-D (or scalar) int tensor t as a list of int | Dim, or None when unknown."""
    if depth > 12:
        return None
    value = ir.const_value(t)
    if value is not None:
        if value.ndim > 1 or not np.issubdtype(value.dtype, np.integer):
            return None
        return [int(v) for v in value.reshape(-1)]
    node = ir.producer(t)
    if node is None or (node.domain or "") not in ("", "ai.onnx"):
        return None
    op, ins = node.op, node.inputs

    def sub(i):
        return shape_elements(ins[i], opset, depth + 1) if len(ins) > i and not ins[i].is_empty() else None

    if op == "Shape":
        rank = ir.rank(ins[0])
        if rank is None:
            return None
        start = attr_value(node, "start", opset) or 0
        end = attr_value(node, "end", opset)
        return [Dim(ins[0], i) for i in range(rank)][slice(start, end)]
    if op in ("Identity", "Cast"):
        return sub(0)
    if op == "Mul" and len(ins) == 2:  # one run-time dim times a constant, or constants
        a, b = sub(0), sub(1)
        if a is None or b is None or len(a) != 1 or len(b) != 1:
            return None
        if isinstance(a[0], int) and isinstance(b[0], int):
            return [a[0] * b[0]]
        dim, k = (a[0], b[0]) if isinstance(b[0], int) else (b[0], a[0])
        return [Scaled(dim, k)] if isinstance(dim, Dim) and isinstance(k, int) else None
    if op == "Where" and len(ins) == 3:  # torch's expand: Where(Equal(c, -1), 1, c) is c when no -1
        cond, c = ir.producer(ins[0]), sub(2)
        minus = None if cond is None or cond.op != "Equal" else ir.const_value(cond.inputs[1])
        if c is None or minus is None or cond.inputs[0] is not ins[2] or not np.all(minus == -1):
            return None
        return c if -1 not in [e for e in c if isinstance(e, int)] else None
    if op == "Concat":
        if attr_value(node, "axis", opset) not in (0, -1):
            return None
        parts = [shape_elements(i, opset, depth + 1) for i in ins]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op in ("Unsqueeze", "Squeeze", "Reshape"):
        elems = sub(0)  # a scalar <-> [1] reshaping keeps the one element; other uses are not shape pieces
        if op == "Unsqueeze" and _axes_input(node, opset) not in ([0], [-1]):
            return None
        return elems if elems is not None and len(elems) == 1 else None
    if op == "Gather":
        elems, index = sub(0), ir.const_value(ins[1])
        if elems is None or index is None or attr_value(node, "axis", opset) not in (0, None) or index.ndim > 1:
            return None
        picked = []
        for i in index.reshape(-1):
            i = int(i) + (len(elems) if int(i) < 0 else 0)
            if not 0 <= i < len(elems):
                return None
            picked.append(elems[i])
        return picked
    if op == "Slice":
        elems = sub(0)
        if elems is None or opset < 10:
            return None
        values = [None if len(ins) <= i or ins[i].is_empty() else ir.const_value(ins[i]) for i in range(1, 5)]
        starts, ends, axes, steps = values
        if starts is None or ends is None or starts.size != 1 or ends.size != 1:
            return None
        if (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)) or (len(ins) > 3 and not ins[3].is_empty()
                                                                            and axes is None):
            return None
        if (steps is not None and int(steps.reshape(-1)[0]) != 1) or (len(ins) > 4 and not ins[4].is_empty()
                                                                      and steps is None):
            return None
        n = len(elems)
        lo, hi = (int(np.clip(int(v.reshape(-1)[0]), -n - 1, n)) for v in (starts, ends))
        return elems[slice(lo, hi)]
    return None


# ops whose output has their first input's shape
_KEEP_LEADING_UNARY = {"Identity", "Cast", "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Neg", "Sqrt", "Softmax",
                       "LayerNormalization", "RMSNormalization", "SkipLayerNormalization", "Dropout", "Elu",
                       "LeakyRelu", "HardSigmoid", "Softplus", "Abs", "Exp", "Log", "Reciprocal", "BiasGelu",
                       "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "FastGelu", "QuickGelu"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow"}


def _keeps_leading(node: gs.Node, rank: int) -> gs.Tensor | None:
    """The input whose axes 0..rank-2 the node's first output has (same rank), or None."""
    if not node.inputs or ir.rank(node.inputs[0]) != rank:
        return None
    x = node.inputs[0]
    if node.op in _KEEP_LEADING_UNARY:
        return x  # each keeps its first input's shape (the fused ones do not broadcast it)
    if node.op == "MatMul" and len(node.inputs) == 2:
        w = ir.const_value(node.inputs[1])
        return x if w is not None and w.ndim == 2 and rank >= 2 else None
    if node.op in _ELEMENTWISE and len(node.inputs) == 2:
        for a, b in (node.inputs, node.inputs[::-1]):
            c = ir.const_value(b)
            if c is not None and ir.rank(a) == rank and c.ndim <= rank and all(d == 1 for d in c.shape[:-1]):
                return a  # a constant varying along the last axis at most cannot change a leading dim
        return None
    return None


def leading_root(t: gs.Tensor, axis: int) -> gs.Tensor:
    """Walk up from t while the producer keeps t's axis `axis` (a leading axis): the farthest tensor."""
    rank = ir.rank(t)
    if rank is None or not 0 <= axis < rank - 1:
        return t
    for _ in range(64):
        node = ir.producer(t)
        if node is None:
            return t
        up = _keeps_leading(node, rank)
        if up is None:
            return t
        t = up
    return t


def same_dim(a: gs.Tensor, i: int, b: gs.Tensor, j: int) -> bool:
    """a's axis i and b's axis j are provably one size at run time (axes may be negative)."""
    ra, rb = ir.rank(a), ir.rank(b)
    if ra is None or rb is None:
        return False
    i, j = i % ra if -ra <= i < ra else -1, j % rb if -rb <= j < rb else -1
    if i < 0 or j < 0:
        return False
    da, db = a.shape[i], b.shape[j]
    if isinstance(da, int) and da == db:
        return True
    if isinstance(da, str) and da and da == db:
        return True  # one symbolic name (declared or merged by shape inference): one size
    return i == j and ra == rb and leading_root(a, i) is leading_root(b, j)


def proven(elem, x: gs.Tensor, axis: int) -> bool:
    """elem (from shape_elements) is x's axis `axis` at run time."""
    if isinstance(elem, Dim):
        return same_dim(elem.source, elem.axis, x, axis)
    return isinstance(elem, int) and elem >= 0 and x.shape is not None and x.shape[axis] == elem


def describe(elem) -> str:
    return f"dim {elem.axis} of '{elem.source.name}'" if isinstance(elem, Dim) else str(elem)


def head_split(x: gs.Tensor, shape_t: gs.Tensor, opset: int):
    """(heads, head_dim) when Reshape(x, shape_t) is provably x (B, S, H*D) -> (B, S, H, D); else a
    reason string naming the piece that could not be read or proven."""
    elems = shape_elements(shape_t, opset)
    if elems is None:
        return f"head split shape '{shape_t.name}' is not a constant or a Shape/Gather/Concat chain"
    if len(elems) != 4:
        return f"head split shape '{shape_t.name}' has {len(elems)} elements, not 4"
    hidden = x.shape[-1] if x.shape is not None and len(x.shape) == 3 else None
    if not isinstance(hidden, int):
        return f"'{x.name}' is not 3-D with a static last dim"
    heads, dim = elems[2], elems[3]
    if not isinstance(heads, int) or not isinstance(dim, int):
        return f"head split shape '{shape_t.name}': heads/head size {describe(heads)}, {describe(dim)} are not constant"
    if heads == -1 and dim > 0 and hidden % dim == 0:
        heads = hidden // dim
    elif dim == -1 and heads > 0 and hidden % heads == 0:
        dim = hidden // heads
    if heads <= 0 or dim <= 0 or heads * dim != hidden:
        return f"head split shape '{shape_t.name}' heads/head size {elems[2:]} do not split {hidden}"
    for axis, what in ((0, "batch"), (1, "sequence")):
        e = elems[axis]
        if e == 0 or proven(e, x, axis):
            continue
        if e == -1 and elems[1 - axis] == 0 or (e == -1 and proven(elems[1 - axis], x, 1 - axis)):
            continue
        return f"head split shape '{shape_t.name}' element {axis} ({describe(e)}) is not provably the {what} of '{x.name}'"
    return heads, dim
