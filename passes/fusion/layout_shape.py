"""Checks and rewrites behind the layout rules in layout.py that need more than a few lines:
reshape-like pairs -> one Reshape, Split -> Concat of all parts, Reshape shapes built at run time from
Shape(x) that are really literals, and Transposes sunk through elementwise ops so they cancel."""
from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.compiler.rewrite import attr_value

from .common import axes_of, out_like, scalar_like

RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")  # ops that only relabel the shape, keeping element order
UNARY = ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf", "LeakyRelu", "Elu",
         "Selu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
         "Not", "Cast", "Clip", "Gelu", "Mish", "Celu", "ThresholdedRelu", "IsNaN")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Greater", "Less", "And", "Or")
ELEMENTWISE = UNARY + BINARY


# ---------------------------------------------------------------- two reshape-like ops -> one Reshape

def _literal_shape(out, x, allowzero: bool) -> list[int] | str:
    """A Reshape target that gives `out`'s shape from x: static dims as they are, a symbolic dim that
    equals x's dim at the same position as 0 (copy), one other symbolic dim as -1."""
    if out.shape is None:
        return "output shape is unknown"
    shape, free = [], 0
    for i, d in enumerate(out.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif isinstance(d, int):
            return "output has an empty or unknown dim"
        elif not allowzero and x.shape is not None and i < len(x.shape) and x.shape[i] == d:
            shape.append(0)
        else:
            shape.append(-1)
            free += 1
    if free > 1:
        return "more than one symbolic dim that x does not give at the same position"
    if free and 0 in shape:
        return "-1 next to copied dims is ambiguous for empty tensors"
    return shape


def pair_to_reshape_check(m) -> str | None:
    got = _literal_shape(m.root.outputs[0], m["x"], False)
    return got if isinstance(got, str) else None


def pair_to_reshape(m):
    shape = np.array(_literal_shape(m.root.outputs[0], m["x"], False), np.int64)
    return m.op("Reshape", [m["x"], m.constant(shape, "shape")], {}, **out_like(m))


# ---------------------------------------------------------------- Reshape(x, s) that keeps x's (symbolic) shape

def reshape_noop_check(m) -> str | None:
    x, target = m["x"], [int(v) for v in m.const("shape").reshape(-1)]
    copy = not attr_value(m.root, "allowzero", m.opset)
    if x.shape is None or len(target) != len(x.shape):
        return "rank changes or is unknown"
    if target.count(-1) > 1:
        return "more than one -1"
    for t, d in zip(target, x.shape):
        if not (t == -1 or (t == 0 and copy) or (isinstance(d, int) and t == d)):
            return f"target dim {t} is not known to equal the input's dim {d}"
    # a single -1 with every other dim equal to x's is x's dim too (numel is the same)
    return None


# ---------------------------------------------------------------- Concat(Split(x)) -> x

def _split_source(m):
    """(split node, its input) when the Concat joins every Split output in order on the same axis, or a reason."""
    concat = m.root
    split = ir.producer(concat.inputs[0])
    if split is None or split.op != "Split" or (split.domain or "") not in ("", "ai.onnx"):
        return "first input is not produced by a Split"
    if list(concat.inputs) != list(split.outputs):
        return "Concat does not take every Split output, once each, in order"
    x = split.inputs[0]
    rank = ir.rank(x)
    a, b = attr_value(concat, "axis", m.opset), attr_value(split, "axis", m.opset) or 0
    if a != b and (rank is None or a % rank != b % rank):
        return "Split and Concat axes differ"
    for out in split.outputs:
        if ir.is_graph_output(m.graph, out) or len(out.outputs) != 1:
            return f"Split output '{out.name}' has other consumers or is a graph output"
    return split, x


def split_concat_check(m) -> str | None:
    got = _split_source(m)
    if isinstance(got, str):
        return got
    out = m.root.outputs[0]
    if ir.is_graph_output(m.graph, out) and not ir.can_take_over(m.graph, out, got[1]):
        return "output is a graph output that must keep its name"
    return None


def split_concat(m):
    split, x = _split_source(m)
    m.matched.append(split)  # dead once the Concat is gone: let the driver drop it
    return x


# ---------------------------------------------------------------- Reshape(x, Concat(Shape(x)[i], ...)) -> literal

def _strip_unsqueeze0(t, opset):
    node = ir.producer(t)
    if node is not None and node.op == "Unsqueeze" and axes_of(node, opset, 13) in ([0], [-1]):
        return node.inputs[0]
    return t


def _copied_dim(t, x, opset) -> int | None:
    """i when t (one element) is dim i of x read by Shape(x) -> Gather(i) [-> Unsqueeze] or Shape(x) -> Slice(i:i+1)."""
    t = _strip_unsqueeze0(t, opset)
    node = ir.producer(t)
    if node is None or node.op not in ("Gather", "Slice"):
        return None
    shape = ir.producer(node.inputs[0])
    if shape is None or shape.op != "Shape" or shape.inputs[0] is not x or shape.attrs.get("start") or "end" in shape.attrs:
        return None
    if node.op == "Gather":
        idx = ir.const_value(node.inputs[1])
        if attr_value(node, "axis", opset) not in (0, None) or idx is None or idx.size != 1:
            return None
        i = int(idx.reshape(-1)[0])
    else:
        if opset < 10 or len(node.inputs) < 3:
            return None
        vals = [ir.const_value(t) for t in node.inputs[1:]]
        if any(v is None or v.size != 1 for v in vals) or (len(vals) > 3 and int(vals[3].reshape(-1)[0]) != 1):
            return None
        i, end = int(vals[0].reshape(-1)[0]), int(vals[1].reshape(-1)[0])
        if end != i + 1 or i < 0:
            return None
    rank = ir.rank(x)
    return i if i >= 0 else (None if rank is None else i + rank)


def _literal_target(m) -> list[int] | str:
    concat, x = m.nodes["concat"], m["x"]
    if attr_value(concat, "axis", m.opset) not in (0, -1):
        return "Concat is not along axis 0"
    allowzero = attr_value(m.root, "allowzero", m.opset) or 0
    target, unresolved, resolved_any = [], 0, False
    for pos, part in enumerate(concat.inputs):
        value = ir.const_value(part)
        if value is not None:
            target += [int(v) for v in value.reshape(-1)]
            continue
        if part.shape is None or list(part.shape) != [1]:
            return f"'{part.name}' is not known to hold one value"
        i = None if allowzero else _copied_dim(part, x, m.opset)
        if i is not None and i == len(target):
            target.append(0)  # Reshape copies x's dim i itself
            resolved_any = True
        else:
            target.append(-1)
            unresolved += 1
    if not resolved_any and not unresolved:
        return "shape is already constant"
    if unresolved > 1 or (unresolved and target.count(-1) > 1):
        return "more than one entry is computed at run time and is not a dim of x at the same position"
    if unresolved and any(v <= 0 for v in target if v != -1):
        return "a computed entry next to copied or empty dims cannot become -1"
    return target


def reshape_literal_check(m) -> str | None:
    got = _literal_target(m)
    return got if isinstance(got, str) else None


def _shape_reads(t, depth: int = 4) -> list:
    """The Unsqueeze/Gather/Slice/Shape nodes computing t, which die with the Concat when nothing else reads them."""
    node = ir.producer(t)
    if node is None or depth == 0 or node.op not in ("Unsqueeze", "Gather", "Slice", "Shape"):
        return []
    return [node] + _shape_reads(node.inputs[0], depth - 1)


def reshape_literal(m):
    shape = np.array(_literal_target(m), np.int64)
    for part in m.nodes["concat"].inputs:
        m.matched.extend(_shape_reads(part))  # the driver drops each one that is left without consumers
    return m.op("Reshape", [m["x"], m.constant(shape, "shape")], dict(m.root.attrs), **out_like(m))


# ---------------------------------------------------------------- Transpose(f(Transpose(x))) -> f(x)

def _perm_of(node, opset, rank):
    perm = attr_value(node, "perm", opset)
    if perm is not None:
        return [int(p) for p in perm]
    return None if rank is None else list(range(rank))[::-1]


def _sunk_perm(m):
    inner, rank = m.nodes["inner"], ir.rank(m["x"])
    p = _perm_of(inner, m.opset, rank)
    q = _perm_of(m.root, m.opset, len(p) if p is not None else rank)
    if p is None or q is None or len(p) != len(q):
        return None
    return [p[i] for i in q]


def sink_transpose_check(m) -> str | None:
    ew, t_out = m.nodes["ew"], m.nodes["inner"].outputs[0]
    if (ew.domain or "") not in ("", "ai.onnx"):
        return "elementwise op is not a standard op"
    for t in ew.inputs[1:]:
        if t.is_empty():
            continue
        value = ir.const_value(t)
        if t is t_out or value is None or not scalar_like(value, m["x"]):
            return f"'{t.name}' is not a one-element constant (it would need transposing too)"
    if _sunk_perm(m) is None:
        return "a default perm needs the rank, which is unknown"
    return None


def sink_transpose(m):
    ew, x = m.nodes["ew"], m["x"]
    inputs = [x] + list(ew.inputs[1:])
    perm = _sunk_perm(m)
    out = m.root.outputs[0]
    y = m.op(ew.op, inputs, dict(ew.attrs), dtype=out.dtype, shape=x.shape)
    if perm == list(range(len(perm))):
        return y
    return m.op("Transpose", [y], {"perm": perm}, **out_like(m))


# ---------------------------------------------------------------- f(Transpose(a, p), Transpose(b, p)) -> Transpose(f(a, b), p)

def _shared_perm(m) -> list[int] | str:
    ta, tb = m.nodes["ta"], m.nodes["tb"]
    ra, rb = ir.rank(m["a"]), ir.rank(m["b"])
    if ra is None or ra != rb:
        return "operand ranks are unknown or differ (the perm would not apply to both)"
    pa, pb = _perm_of(ta, m.opset, ra), _perm_of(tb, m.opset, rb)
    if pa != pb:
        return "the two Transposes have different perms"
    if (m.root.domain or "") not in ("", "ai.onnx"):
        return "not a standard op"
    return pa


def hoist_transpose_check(m) -> str | None:
    got = _shared_perm(m)
    return got if isinstance(got, str) else None


def hoist_transpose(m):
    perm = _shared_perm(m)
    out = m.root.outputs[0]
    y = m.op(m.root.op, [m["a"], m["b"]], dict(m.root.attrs), dtype=out.dtype)
    return m.op("Transpose", [y], {"perm": perm}, **out_like(m))
