"""O2 rotary position embedding (rotate_half form, as Llama/Mistral/Qwen/GPT-NeoX exports spell it):

    x = Transpose(Reshape(x3, [B, S, H, D]), [0, 2, 1, 3])                     (x3: (B, S, H*D))
    x * Unsqueeze(Cos(Concat(f, f)), 1) + Concat(-x[..., D/2:], x[..., :D/2]) * Unsqueeze(Sin(Concat(f, f)), 1)
        -> Transpose(Reshape(RotaryEmbedding(x3, Cos(f), Sin(f); num_heads=H), [B, S, H, D]), [0, 2, 1, 3])

f (B|1, S, D/2) are the angles (positions * inverse frequencies, computed at run time by the export);
the duplicated halves of Concat(f, f) are what makes the cos/sin of the standard op's half-size caches
the same numbers. Moving the rotation before the head split leaves the attention that follows in its
plain form, so fuse-attention takes it. Canonical op: ai.graphopt RotaryEmbedding (the standard op's
3-D form without position_ids); spelled as the standard RotaryEmbedding from opset 23 (onnx, ort),
with cos/sin expanded to x's batch (ONNX Runtime requires it); for ort below 23 as the same arithmetic
on the 3-D value (so the attention after it still fuses); graphopt runs it as it is.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import Op, Rule, Var, attr_value

from graphopt.compiler.pass_manager import register_rules

from . import shape_proof
from .lower import emit, register_spelling

INT_MAX = np.iinfo(np.int64).max


def _slice_range(node, opset, dim):
    """(start, end) of a Slice over the last axis with step 1 and constant bounds (clipped to dim)."""
    ins = [None if i >= len(node.inputs) or node.inputs[i].is_empty() else ir.const_value(node.inputs[i])
           for i in range(1, 5)]
    starts, ends, axes, steps = ins
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if axes is None or int(axes.reshape(-1)[0]) not in (-1, 3) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    if len(node.inputs) > 4 and not node.inputs[4].is_empty() and steps is None:
        return None
    clip = lambda v: int(np.clip(v + dim if v < 0 else v, 0, dim))  # noqa: E731
    return clip(int(starts.reshape(-1)[0])), clip(int(ends.reshape(-1)[0]))


def _angles(t, trig: str):
    """f when t = Unsqueeze(trig(Concat(f, f, axis=-1)), [1]); else None."""
    node = ir.producer(t)
    if node is None or node.op != "Unsqueeze":
        return None
    axes = ir.const_value(node.inputs[1]) if len(node.inputs) > 1 else attr_value(node, "axes", 11)
    if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] != [1]:
        return None
    fn = ir.producer(node.inputs[0])
    if fn is None or fn.op != trig:
        return None
    cat = ir.producer(fn.inputs[0])
    if cat is None or cat.op != "Concat" or len(cat.inputs) != 2 or cat.inputs[0] is not cat.inputs[1]:
        return None
    if cat.attrs.get("axis") not in (-1, 2) or ir.rank(cat.inputs[0]) != 3:
        return None
    return cat.inputs[0]


def _check(m) -> str | None:
    x, opset = m["x"], m.opset
    t = ir.producer(x)
    if t is None or t.op != "Transpose" or [int(p) for p in attr_value(t, "perm", opset) or []] != [0, 2, 1, 3]:
        return "the rotated value is not heads split by Transpose [0, 2, 1, 3]"
    split = ir.producer(t.inputs[0])
    if split is None or split.op != "Reshape":
        return "the rotated heads do not come from a Reshape"
    x3 = split.inputs[0]
    heads = shape_proof.head_split(x3, split.inputs[1], opset)  # constant or run-time (B, S, H, D)
    if isinstance(heads, str):
        return f"rotary input head split: {heads}"
    n_heads, dim = heads
    if dim % 2 or x3.dtype is None or np.dtype(x3.dtype) not in (np.dtype(np.float16), np.dtype(np.float32)):
        return "odd head size or not float16/float32"
    if _slice_range(m.nodes["lo"], opset, dim) != (0, dim // 2) or _slice_range(m.nodes["hi"], opset, dim) != (dim // 2, dim):
        return "the Slices are not the two halves of the head"
    if attr_value(m.nodes["cat"], "axis", opset) not in (-1, 3):
        return "rotate_half's Concat is not over the head dim"
    f = _angles(m["cos"], "Cos")
    if f is None or _angles(m["sin"], "Sin") is not f:
        return "cos/sin are not Unsqueeze(Cos/Sin(Concat(f, f)), 1) of one angle tensor f"
    if f.shape is None or f.shape[-1] != dim // 2:
        return f"the angles' last dim is not {dim // 2}"
    if np.dtype(f.dtype) != np.dtype(x3.dtype):
        return "the angles' dtype is not the input's"
    m.rotary = (x3, split.inputs[1], n_heads, f)
    return None


def _rotary(m):
    x3, split_shape, heads, f = m.rotary
    half = [f.shape[0], f.shape[1], f.shape[2]]
    cos = m.op("Cos", [f], dtype=f.dtype, shape=half)
    sin = m.op("Sin", [f], dtype=f.dtype, shape=half)
    y3 = emit(m, "RotaryEmbedding", [x3, cos, sin], {"num_heads": int(heads), "interleaved": 0},
              dtype=x3.dtype, shape=x3.shape)
    out = m.root.outputs[0]
    heads4 = m.op("Reshape", [y3, split_shape], dtype=x3.dtype)
    return m.op("Transpose", [heads4], {"perm": [0, 2, 1, 3]}, dtype=out.dtype, shape=out.shape)


def _rules():
    x = Var("x")
    rotated = Op("Concat", Op("Neg", Op("Slice", x, allow_extra_inputs=True, name="hi")),
                 Op("Slice", x, allow_extra_inputs=True, name="lo"), name="cat")
    pattern = Op("Add", Op("Mul", x, Var("cos"), commutative=True),
                 Op("Mul", rotated, Var("sin"), commutative=True), commutative=True)
    return [Rule("rotary", pattern, _rotary, _check)]
    # x*cos + rotate_half(x)*sin on split heads -> split(RotaryEmbedding(x3, cos(f), sin(f)))


def _spell_standard(graph, node, opset):
    """The standard RotaryEmbedding; ORT wants cos/sin of x's batch: Expand them to (B, S, D/2)."""
    x, cos, sin = node.inputs[:3]
    base = ir.fresh_name(f"{node.name or 'rotary'}_cache")

    def add(op, inputs, attrs=None, dtype=np.int64):
        out = gs.Variable(ir.fresh_name(f"{base}_{op}"), dtype=dtype)
        graph.nodes.append(gs.Node(op, name=ir.fresh_name(f"{base}_{op}"), attrs=attrs or {}, inputs=inputs,
                                   outputs=[out]))
        return out

    lead = add("Shape", [x], {"start": 0, "end": 2}) if opset >= 15 else None
    if lead is None:
        full = add("Shape", [x])
        lead = add("Slice", [full, gs.Constant(ir.fresh_name(base + "_zero"), np.array([0], np.int64)),
                             gs.Constant(ir.fresh_name(base + "_two"), np.array([2], np.int64))])
    last = gs.Constant(ir.fresh_name(base + "_half"), np.array([cos.shape[-1] if cos.shape else -1], np.int64))
    target = add("Concat", [lead, last], {"axis": 0})
    node.inputs[1] = add("Expand", [cos, target], dtype=cos.dtype)
    node.inputs[2] = add("Expand", [sin, target], dtype=sin.dtype)
    node.domain, node.attrs = None, {"num_heads": node.attrs["num_heads"], "interleaved": 0}


def _spell_decomposed(graph, node, opset):
    """Below opset 23 (ORT's contrib RotaryEmbedding wants position ids and fixed-size caches, which the
    export's run-time angles are not): the same arithmetic on the 3-D value, viewed (B, S, H, D), so the
    attention after it stays fused. x*cos + rotate_half(x)*sin with cos/sin duplicated over the halves."""
    x, cos, sin = node.inputs[:3]
    heads, y = int(node.attrs["num_heads"]), node.outputs[0]
    dim = x.shape[-1] // heads
    base = ir.fresh_name(f"{node.name or 'rotary'}_rope")
    const = lambda name, v: gs.Constant(ir.fresh_name(f"{base}_{name}"), np.array(v, np.int64))  # noqa: E731
    made = []

    def add(op, inputs, attrs=None, out=None):
        out = out or gs.Variable(ir.fresh_name(f"{base}_{op}"), dtype=x.dtype)
        made.append(gs.Node(op, name=ir.fresh_name(f"{base}_{op}"), attrs=attrs or {}, inputs=inputs, outputs=[out]))
        return out

    def full(t):  # (B|1, S, D/2) -> (B|1, S, 1, D): both halves, broadcast over the heads
        both = add("Concat", [t, t], {"axis": -1})
        return add("Unsqueeze", [both, const("axis", [2])]) if opset >= 13 else add("Unsqueeze", [both], {"axes": [2]})

    x4 = add("Reshape", [x, const("heads", [0, 0, heads, dim])])
    one, axis = const("step", [1]), const("last", [3])
    lo = add("Slice", [x4, const("zero", [0]), const("half", [dim // 2]), axis, one])
    hi = add("Slice", [x4, const("half2", [dim // 2]), const("end", [dim]), axis, one])
    rotated = add("Concat", [add("Neg", [hi]), lo], {"axis": -1})
    y4 = add("Add", [add("Mul", [x4, full(cos)]), add("Mul", [rotated, full(sin)])])
    ir.detach(node)
    add("Reshape", [y4, const("merge", [0, 0, heads * dim])], out=y)
    graph.nodes = [n for n in graph.nodes if n is not node] + made


def _spell_ort(graph, node, opset):
    return _spell_standard(graph, node, opset) if opset >= 23 else _spell_decomposed(graph, node, opset)


register_spelling("RotaryEmbedding", "onnx", _spell_standard, min_opset=23)
register_spelling("RotaryEmbedding", "ort", _spell_ort)
register_rules("fuse-rotary", _rules(), produces={"rotary": "RotaryEmbedding"}, level=2,
                      doc="rotate_half rotary embedding on split heads -> RotaryEmbedding before the split "
                          "(onnx/ort targets: opset >= 23)")
