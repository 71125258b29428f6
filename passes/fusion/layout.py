"""O2 layout simplification: chains of Transpose, Reshape, Flatten and Squeeze/Unsqueeze collapse to one op or
none; Split -> Concat of every part cancels; Reshape targets computed from Shape(x) become literals; Transposes
move through elementwise ops when that lets them cancel or merge (never when it would add a node).
The longer checks live in layout_shape.py."""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.compiler.pass_manager import register_rules
from graphopt.compiler.rewrite import Const, Op, Rule, Var, attr_value

from .common import axes_of, out_like, output_is_renamable
from .layout_shape import (
    BINARY,
    ELEMENTWISE,
    RESHAPES,
    hoist_transpose,
    hoist_transpose_check,
    pair_to_reshape,
    pair_to_reshape_check,
    reshape_literal,
    reshape_literal_check,
    reshape_noop_check,
    sink_transpose,
    sink_transpose_check,
    split_concat,
    split_concat_check,
)

# ---------------------------------------------------------------- Transpose(Transpose(x))

def _perm(node, opset: int, rank: int | None):
    perm = attr_value(node, "perm", opset)
    if perm is not None:
        return [int(p) for p in perm]
    return None if rank is None else list(range(rank))[::-1]


def _composed_perm(m):
    """Transpose(Transpose(x, p), q) == Transpose(x, [p[i] for i in q])."""
    rank = ir.rank(m["x"])
    inner = _perm(m.nodes["inner"], m.opset, rank)
    outer = _perm(m.root, m.opset, len(inner) if inner is not None else rank)
    if inner is None or outer is None or len(inner) != len(outer):
        return None
    return [inner[i] for i in outer]


def _transposes_check(m) -> str | None:
    perm = _composed_perm(m)
    if perm is None:
        return "a default perm needs the rank, which is unknown"
    if perm == list(range(len(perm))):
        return output_is_renamable(m)
    return None


def _merge_transposes(m):
    perm = _composed_perm(m)
    if perm == list(range(len(perm))):
        return m["x"]
    return m.op("Transpose", [m["x"]], {"perm": perm}, **out_like(m))


# ---------------------------------------------------------------- Reshape(Reshape(x))

def _outer_shape(m):
    """The outer Reshape's target with every copy-dim (0) resolved against x, or a reason."""
    outer = [int(d) for d in m.const("s2").reshape(-1)]
    if attr_value(m.root, "allowzero", m.opset) or 0 not in outer:
        return outer  # nothing refers to the intermediate's dims
    inner = m.nodes["inner"]
    inner_shape = ir.const_value(inner.inputs[1]) if inner.op == "Reshape" else None
    inner_zero = attr_value(m.nodes["inner"], "allowzero", m.opset) or 0
    mid = m.nodes["inner"].outputs[0].shape
    resolved = []
    for i, d in enumerate(outer):
        if d != 0:
            resolved.append(d)
            continue
        s = None if inner_shape is None or i >= inner_shape.size else int(inner_shape.reshape(-1)[i])
        if s is not None and s > 0:
            resolved.append(s)  # the intermediate's dim i is a literal
        elif s == 0 and not inner_zero and inner.op == "Reshape":
            resolved.append(0)  # it copied x's dim i, so copying from x is the same
        elif mid is not None and i < len(mid) and isinstance(mid[i], int) and mid[i] > 0:
            resolved.append(int(mid[i]))
        else:
            return f"outer Reshape copies dim {i} of the intermediate, which is not known"
    return resolved


def _reshapes_check(m) -> str | None:
    got = _outer_shape(m)
    return got if isinstance(got, str) else None


def _merge_reshapes(m):
    shape = np.array(_outer_shape(m), dtype=np.int64)
    attrs = {"allowzero": 1} if attr_value(m.root, "allowzero", m.opset) else {}
    return m.op("Reshape", [m["x"], m.constant(shape, "shape")], attrs, **out_like(m))


# ---------------------------------------------------------------- Squeeze / Unsqueeze pairs

def _normalized(axes, rank):
    if axes is None:
        return None
    if any(a < 0 for a in axes) and rank is None:
        return None
    return sorted(a % rank if a < 0 else a for a in axes)


def _squeeze_axes(node, opset, x_rank):
    """Axes a Squeeze removes, normalized against its input rank; None when unknown."""
    axes = axes_of(node, opset, 13)
    if axes is None:  # no axes: every dim of size 1, known only from a static shape
        shape = None if not node.inputs else node.inputs[0].shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return [i for i, d in enumerate(shape) if d == 1]
    return _normalized(axes, x_rank)


def _pair_check(m) -> str | None:
    x_rank = ir.rank(m["x"])
    inner, outer = m.nodes["inner"], m.root
    if m.root.op == "Squeeze":  # Squeeze(Unsqueeze(x, a), b): both index the unsqueezed rank
        a = axes_of(inner, m.opset, 13)
        mid_rank = None if x_rank is None or a is None else x_rank + len(a)
        na, nb = _normalized(a, mid_rank), _squeeze_axes(outer, m.opset, mid_rank)
    else:  # Unsqueeze(Squeeze(x, b), a): both index x's rank
        nb, na = _squeeze_axes(inner, m.opset, x_rank), _normalized(axes_of(outer, m.opset, 13), x_rank)
    if na is None or nb is None:
        return "axes are not constant or need a rank that is unknown"
    if na != nb:
        return "axes differ"
    return output_is_renamable(m)


LAYOUT_RULES = [
    Rule("transpose-transpose", Op("Transpose", Op("Transpose", Var("x"), name="inner")), _merge_transposes,
         _transposes_check),  # Transpose(Transpose(x, p), q) -> Transpose(x, p∘q) | x
    Rule("reshape-reshape", Op("Reshape", Op(RESHAPES, Var("x"), allow_extra_inputs=True, name="inner"), Const("s2")),
         _merge_reshapes, _reshapes_check),  # Reshape(Reshape|Flatten|Squeeze|Unsqueeze(x), s2) -> Reshape(x, s2)
    Rule("squeeze-unsqueeze", Op("Squeeze", Op("Unsqueeze", Var("x"), allow_extra_inputs=True, name="inner"),
                                 allow_extra_inputs=True), lambda m: m["x"], _pair_check),  # Squeeze(Unsqueeze(x, a), a) -> x
    Rule("unsqueeze-squeeze", Op("Unsqueeze", Op("Squeeze", Var("x"), allow_extra_inputs=True, name="inner"),
                                 allow_extra_inputs=True), lambda m: m["x"], _pair_check),  # Unsqueeze(Squeeze(x, a), a) -> x
    Rule("reshape-like-pair", Op(("Flatten", "Squeeze", "Unsqueeze"), Op(RESHAPES, Var("x"), allow_extra_inputs=True,
                                                                        name="inner"), allow_extra_inputs=True),
         pair_to_reshape, pair_to_reshape_check),  # Flatten|Squeeze|Unsqueeze(Reshape-like(x)) -> Reshape(x, known)
    Rule("reshape-noop", Op("Reshape", Var("x"), Const("shape")), lambda m: m["x"],
         lambda m: reshape_noop_check(m) or output_is_renamable(m)),  # Reshape(x[N,4], [0, 4] | [-1, 4]) -> x
    Rule("split-concat", Op("Concat", Var("first"), allow_extra_inputs=True), split_concat,
         split_concat_check),  # Concat(Split(x, a)..., a) -> x  (all parts, in order)
    Rule("reshape-shape-chain", Op("Reshape", Var("x"), Op("Concat", Var("part0"), allow_extra_inputs=True,
                                                           single_use=False, name="concat")),
         reshape_literal, reshape_literal_check),  # Reshape(x, Concat(Shape(x)[0], 12, 64)) -> Reshape(x, [0, 12, 64])
    Rule("sink-transpose", Op("Transpose", Op(ELEMENTWISE, Op("Transpose", Var("x"), name="inner"), allow_extra_inputs=True,
                                              name="ew")),
         sink_transpose, sink_transpose_check),  # Transpose(f(Transpose(x, p)), q) -> Transpose(f(x), p∘q) | f(x)
    Rule("hoist-transpose", Op(BINARY, Op("Transpose", Var("a"), name="ta"), Op("Transpose", Var("b"), name="tb")),
         hoist_transpose, hoist_transpose_check),  # f(Transpose(a, p), Transpose(b, p)) -> Transpose(f(a, b), p)
]

register_rules("simplify-layout", LAYOUT_RULES, level=2,
               doc="Merge or cancel Transpose/Reshape/Flatten/Squeeze/Unsqueeze chains, Split->Concat, literal Reshape shapes, "
                   "sink Transposes through elementwise ops")
