"""How each target spells the canonical fused ops of the transformer and activation rule files.

Fusion rules stay declarative and target-blind: a rule builds one canonical ai.graphopt op with
`emit(m, kind, ...)` and registers with `register_rules(..., produces={rule: kind})`; the
registry of spellings is graphopt.compiler.targets. This file holds the spellings (and the
neighbour-absorbing graphopt refinements) of Gelu, LayerNormalization, SkipLayerNormalization,
RMSNormalization and Attention:

    graphopt  keeps the canonical op (graphopt's runtime executes it); a graphopt spelling may still
              take neighbours in (a bias Add into SkipLayerNormalization, Q/K/V projections packed
              into one MatMul): fewer planned steps for the runtime
    ort       com.microsoft contrib op, or a standard op where ORT has one
    onnx      the standard op, only from the opset that defines it

The ort spellings were checked against onnxruntime 1.32 (tests/unit/test_targets.py runs each one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.targets import (FUSED, NO_KERNEL, ORT, SPELLINGS, emit, register_spelling,  # noqa: F401
                                       spell_all, target_of, unavailable)

from .attention_shapes import repeat_cache, repeat_heads

# ---------------------------------------------------------------- spelling helpers

def to_domain(domain: str, op: str | None = None, keep=None, drop=(), rename=None) -> Callable:
    """A spelling that renames the node (domain, op) and filters/renames its attributes."""

    def spell(graph, node, opset):
        attrs = {k: v for k, v in node.attrs.items() if k not in drop and (keep is None or k in keep)}
        for old, new in (rename or {}).items():
            if old in attrs:
                attrs[new] = attrs.pop(old)
        node.domain, node.op, node.attrs = domain or None, op or node.op, attrs
    return spell


def _gelu_ort(graph, node, opset):
    tanh = node.attrs.get("approximate", "none") == "tanh"
    node.domain, node.attrs = ORT, {}
    node.op = "FastGelu" if tanh else ("BiasGelu" if node.op == "BiasGelu" else "Gelu")


def _gelu_onnx(graph, node, opset):
    node.domain = None
    if node.attrs.get("approximate", "none") == "none":
        node.attrs = {}


def _skip_layernorm_ort(graph, node, opset):
    """com.microsoft SkipLayerNormalization; it also takes a bias vector added with the skip (its 5th
    input), so a residual branch ending in MatMul(x, W) + bias [hidden] gives its Add to it."""
    to_domain(ORT, keep=("epsilon",))(graph, node, opset)
    _take_bias_add(graph, node)


def _skip_layernorm_graphopt(graph, node, opset) -> bool:
    """graphopt's SkipLayerNormalization takes the bias as ORT's does (its kernels add a 5th input
    with the skip): one planned step less per skip-LN. Runs again after later passes: a node that
    has its bias already is left alone."""
    return len(node.inputs) in (3, 4) and _take_bias_add(graph, node)


def _take_bias_add(graph, node) -> bool:
    """The bias Add of X or R (X first) moved into the skip node as its 5th input; whether one was."""
    scale = ir.const_value(node.inputs[2])
    for at in (0, 1):
        found = _bias_add(graph, node.inputs[at], scale)
        if found is None:
            continue
        add, value, bias = found
        inputs = list(node.inputs)
        inputs[at] = value
        if len(inputs) < 4:
            inputs.append(gs.Variable.empty())  # no beta
        node.inputs = inputs + [bias]
        ir.detach(add)
        graph.nodes = [n for n in graph.nodes if n is not add]
        return True
    return False


def _bias_add(graph, t: gs.Tensor, scale):
    """(Add node, v, bias) when t = v + bias, bias a constant vector of the hidden size and t's dtype,
    v of t's shape (the vector cannot broadcast it), t read only by the skip node; else None."""
    add = ir.producer(t)
    if add is None or add.op != "Add" or (add.domain or "") not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    if len(t.outputs) != 1 or ir.is_graph_output(graph, t) or scale is None:
        return None
    for value, bias in (add.inputs, reversed(add.inputs)):
        vec = ir.const_value(bias)
        if vec is None or vec.ndim != 1 or vec.shape[0] != scale.size or ir.const_value(value) is not None:
            continue
        if value.dtype is None or t.dtype is None or np.dtype(value.dtype) != np.dtype(t.dtype) \
                or vec.dtype != np.dtype(t.dtype):
            continue
        if value.shape is None or len(value.shape) < 1 or value.shape[-1] != scale.size:
            continue
        return add, value, bias
    return None


def _projected_from(t: gs.Tensor) -> gs.Tensor | None:
    """x when t = MatMul(x, W) or MatMul(x, W) + b (the projection keeps x's leading dims)."""
    node = ir.producer(t)
    if node is not None and node.op == "Add" and len(node.inputs) == 2:
        node = next((ir.producer(i) for i in node.inputs if ir.producer(i) is not None
                     and ir.producer(i).op == "MatMul"), None)
    return node.inputs[0] if node is not None and node.op == "MatMul" else None


def _mask_rows(graph, node, mask: gs.Tensor) -> gs.Tensor:
    """ORT's attention kernels need the additive mask's row dim (-2) to equal the query length; a
    (B,1,1,T) padding mask is expanded to (B,1,S,T) at run time. In self-attention (Q and K projected
    from one value, so S == T) S is read from the mask itself: every layer then builds the same
    Expand, which CSE shares; otherwise from the query's shape."""
    q, k = node.inputs[0], node.inputs[1]
    rows = mask.shape[-2] if mask.shape is not None and len(mask.shape) >= 2 else None
    if rows is not None and q.shape is not None and len(q.shape) == 3 and rows == q.shape[1] and rows != 1:
        return mask
    source = _projected_from(q)
    self_attention = source is not None and source is _projected_from(k) and mask.shape is not None \
        and len(mask.shape) == 4 and len(node.inputs) <= 4  # with a KV cache the keys outnumber the queries
    base = ir.fresh_name(f"{node.name or 'attention'}_mask")

    def add(op, inputs, attrs=None, dtype=np.int64, shape=None):
        out = gs.Variable(ir.fresh_name(f"{base}_{op}"), dtype=dtype, shape=shape)
        graph.nodes.append(gs.Node(op, name=ir.fresh_name(f"{base}_{op}"), attrs=attrs or {}, inputs=inputs,
                                   outputs=[out]))
        return out

    if self_attention:
        shape = add("Shape", [mask], shape=[4])
        seq = add("Slice", [shape, gs.Constant(ir.fresh_name(f"{base}_three"), np.array([3], np.int64)),
                            gs.Constant(ir.fresh_name(f"{base}_four"), np.array([4], np.int64))], shape=[1])
    else:
        shape = add("Shape", [q], shape=[3])
        seq = add("Slice", [shape, gs.Constant(ir.fresh_name(f"{base}_one"), np.array([1], np.int64)),
                            gs.Constant(ir.fresh_name(f"{base}_two"), np.array([2], np.int64))], shape=[1])
    ones = gs.Constant(ir.fresh_name(f"{base}_ones"), np.array([1, 1], np.int64))
    last = gs.Constant(ir.fresh_name(f"{base}_last"), np.array([1], np.int64))
    target = add("Concat", [ones, seq, last], {"axis": 0}, shape=[4])
    return add("Expand", [mask, target], dtype=mask.dtype, shape=None)


def _packed_projection(graph, node, dtypes=(np.float32,), own_weights=False):
    """(x, [Wq|Wk|Wv], [bq|bk|bv], nodes that die) when Q, K, V are MatMul(x, W) + b of one x with
    constant 2-D weights and vector biases of one size, each used only by this attention; else None.
    own_weights: each W is read by its MatMul only (else the packed copy would sit beside it)."""
    x, weights, biases, dead = None, [], [], []
    for t in node.inputs[:3]:
        add = ir.producer(t)
        if add is None or add.op != "Add" or len(t.outputs) != 1 or ir.is_graph_output(graph, t):
            return None
        mm_out = next((i for i in add.inputs if ir.producer(i) is not None and ir.producer(i).op == "MatMul"), None)
        bias_t = next((i for i in add.inputs if i is not mm_out), None)
        if mm_out is None or bias_t is None or len(mm_out.outputs) != 1 or ir.is_graph_output(graph, mm_out):
            return None
        mm = ir.producer(mm_out)
        w, b = ir.const_value(mm.inputs[1]), ir.const_value(bias_t)
        if w is None or b is None or w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[1] or w.dtype not in dtypes:
            return None
        if own_weights and (len(mm.inputs[1].outputs) != 1 or ir.is_graph_output(graph, mm.inputs[1])):
            return None
        if x is not None and mm.inputs[0] is not x:
            return None
        x = mm.inputs[0]
        weights.append(w)
        biases.append(b.astype(w.dtype))
        dead += [add, mm]
    if len({w.shape for w in weights}) != 1 or ir.rank(x) != 3:
        return None
    name = ir.fresh_name(f"{node.name or 'attention'}_qkv")
    return (x, gs.Constant(name + "_weight", np.concatenate(weights, axis=1)),
            gs.Constant(name + "_bias", np.concatenate(biases)), dead)


def _attention(graph, node, opset, ort: bool):
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 and not node.inputs[3].is_empty() else None
    past = list(node.inputs[4:6]) if len(node.inputs) > 5 else []  # KV cache: (past_k, past_v) -> present outputs
    if mask is not None:
        mask = _mask_rows(graph, node, mask)
    heads, scale = node.attrs["num_heads"], float(node.attrs["scale"])
    kv_heads = int(node.attrs.get("kv_num_heads", heads))
    if ort and node.attrs.get("nan_probs_to_zero"):
        _zero_nan_rows(graph, node)
    if ort and kv_heads != heads:  # ORT's contrib ops take as many K/V heads as query heads
        node.inputs[1], node.inputs[2] = (repeat_heads(graph, t, kv_heads, heads // kv_heads) for t in node.inputs[1:3])
        q, k, v = node.inputs[:3]
        if past:
            past = [repeat_cache(graph, node, i, kv_heads, heads // kv_heads) for i in (0, 1)]
    packed = _packed_projection(graph, node) if ort and not past else None
    if packed is not None:  # ORT's own Attention: one GEMM for the three projections
        x, weight, bias, dead = packed
        empty = gs.Variable.empty()
        node.inputs = [x, weight, bias] + ([empty, empty, mask] if mask is not None else [])
        node.domain, node.op, node.attrs = ORT, "Attention", {"num_heads": heads, "scale": scale}
        for n in dead:
            ir.detach(n)
        graph.nodes = [n for n in graph.nodes if all(n is not d for d in dead)]
    elif ort:
        empty = gs.Variable.empty()
        node.inputs = [q, k, v] + ([empty, empty, mask if mask is not None else empty] + past
                                   if mask is not None or past else [])
        node.domain, node.op, node.attrs = ORT, "MultiHeadAttention", {"num_heads": heads, "scale": scale}
    else:
        node.inputs = [q, k, v] + ([mask if mask is not None else gs.Variable.empty()] + past
                                   if mask is not None or past else [])
        node.domain, node.op = None, "Attention"
        node.attrs = {"q_num_heads": heads, "kv_num_heads": kv_heads, "scale": scale}


def _zero_nan_rows(graph, node) -> None:
    """ORT's contrib attention gives NaN where the mask hides a whole row; the export's
    Where(IsNaN(p), 0, p) gave 0 there: the same guard on the output (a NaN row stays a NaN row)."""
    y = node.outputs[0]
    raw = gs.Variable(ir.fresh_name(f"{y.name}_raw"), dtype=y.dtype, shape=y.shape)
    nan = gs.Variable(ir.fresh_name(f"{y.name}_isnan"), dtype=np.bool_, shape=y.shape)
    zero = gs.Constant(ir.fresh_name(f"{y.name}_zero"), np.zeros((), np.dtype(y.dtype or np.float32)))
    node.outputs[0] = raw
    graph.nodes += [gs.Node("IsNaN", name=ir.fresh_name(f"{node.name}_IsNaN"), inputs=[raw], outputs=[nan]),
                    gs.Node("Where", name=ir.fresh_name(f"{node.name}_Where"), inputs=[nan, zero, raw], outputs=[y])]


def _attention_graphopt(graph, node, opset) -> bool:
    """Q, K, V projected from one x: one MatMul(x, [Wq|Wk|Wv]), one Add and one Split (standard ops)
    make them, 3 planned steps instead of 6; graphopt's Attention keeps its signature and reads the
    Split's outputs (views into the packed product). Idempotent: packed Q/K/V come from a Split."""
    packed = _packed_projection(graph, node, dtypes=(np.float16, np.float32, np.float64), own_weights=True)
    if packed is None:
        return False
    x, weight, bias, dead = packed
    qkv = list(node.inputs[:3])  # the dying Adds' outputs: they become the Split's, names and shapes kept
    for n in dead:
        ir.detach(n)
    graph.nodes = [n for n in graph.nodes if all(n is not d for d in dead)]
    hidden, dtype = weight.values.shape[1] // 3, weight.values.dtype
    base = weight.name[:-len("_weight")]
    shape = None if x.shape is None else list(x.shape[:-1]) + [3 * hidden]
    product = gs.Variable(ir.fresh_name(base + "_mm"), dtype=dtype, shape=shape)
    packed_out = gs.Variable(ir.fresh_name(base + "_packed"), dtype=dtype, shape=shape)
    sizes = np.array([hidden] * 3, np.int64)
    split_in, split_attrs = [packed_out], {"axis": -1}
    if opset >= 13:
        split_in.append(gs.Constant(ir.fresh_name(base + "_sizes"), sizes))
    else:
        split_attrs["split"] = [int(v) for v in sizes]
    graph.nodes += [gs.Node("MatMul", name=ir.fresh_name(base + "_MatMul"), inputs=[x, weight], outputs=[product]),
                    gs.Node("Add", name=ir.fresh_name(base + "_Add"), inputs=[product, bias], outputs=[packed_out]),
                    gs.Node("Split", name=ir.fresh_name(base + "_Split"), attrs=split_attrs, inputs=split_in,
                            outputs=qkv)]
    return True


# ---------------------------------------------------------------- the table (kinds of this family)

register_spelling("Gelu", "onnx", _gelu_onnx, min_opset=20)
register_spelling("Gelu", "ort", _gelu_ort)
register_spelling("BiasGelu", "ort", _gelu_ort)
register_spelling("LayerNormalization", "onnx", to_domain("", keep=("axis", "epsilon")), min_opset=17)
register_spelling("LayerNormalization", "ort", to_domain("", keep=("axis", "epsilon")), min_opset=17)
register_spelling("SkipLayerNormalization", "ort", _skip_layernorm_ort)
register_spelling("SkipLayerNormalization", "graphopt", _skip_layernorm_graphopt)
register_spelling("Attention", "graphopt", _attention_graphopt)
register_spelling("RMSNormalization", "onnx", to_domain("", keep=("axis", "epsilon")), min_opset=23)
register_spelling("RMSNormalization", "ort", to_domain("", keep=("axis", "epsilon")), min_opset=23)
register_spelling("Attention", "onnx", lambda g, n, o: _attention(g, n, o, ort=False), min_opset=23)
# ORT runs the standard Attention-23 faster than MultiHeadAttention on CPU (bert_encoder: 0.83x vs 1.1x
# of the original's latency), so the contrib op serves only models below opset 23
register_spelling("Attention", "ort", lambda g, n, o: _attention(g, n, o, ort=o < 23))
