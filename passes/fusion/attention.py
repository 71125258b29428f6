"""O2 scaled dot-product attention fusion (canonical ai.graphopt Attention, spelled by lower.py:
onnx Attention >= 23; ort com.microsoft Attention with packed QKV weights when Q/K/V are projections
of one value, else MultiHeadAttention, and the standard Attention from opset 23; graphopt kernel, its
Q/K/V projections of one value packed into one MatMul + Add + Split).

    q = Transpose(Reshape(Q, [b, s, H, D]), [0,2,1,3])           (optionally * a scalar)
    k = Transpose(Reshape(K, [b, s, H, D]), [0,2,3,1])           (or [0,2,1,3] then [0,1,3,2])
    v = Transpose(Reshape(V, [b, s, H, Dv]), [0,2,1,3])
    p = Softmax(MatMul(q, k) (/ or *) scalar (+ mask), axis=-1)
    Reshape(Transpose(MatMul(p, v), [0,2,1,3]), (batch, seq, H*Dv))   -> Attention(Q, K, V, mask; H, scale)

The pattern names the merge-heads end; the rest is walked by `_parse` because the score chain comes
in many orders (scale on q, k or the scores; mask before or after it). Every walked value must feed
only the next step, the additive mask must broadcast to (B, H, S, T), Q/K/V must be 3-D with a
static hidden size, and the head split/merge shapes must be constant or provably (B, S, H, D) /
(B, S, H*Dv): a run-time Shape/Gather/Concat chain is read and proven piece by piece (shape_proof.py).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import Const, Op, Rule, Var, all_equal, attr_value

from . import attention_shapes, shape_proof
from .common import out_like
from graphopt.compiler.pass_manager import register_rules

from .lower import emit

DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


class Refuse(Exception):
    pass


def _only_feeds(graph, t):
    """t feeds exactly one node besides Shape readers (and is not a graph output), else Refuse. The
    Shape readers are moved onto kept values when the fusion fires, or refused (attention_shapes)."""
    if ir.is_graph_output(graph, t) and not _kv_concat(t):  # a KV cache's present: the fused op writes it
        raise Refuse(f"'{t.name}' is a graph output")
    if sum(c.op != "Shape" for c in t.outputs) != 1:
        raise Refuse(f"'{t.name}' has other consumers")


def _kv_concat(t):
    """The Concat(past, new) on the sequence axis of (B, heads, S, D) values that made t (a KV cache), or None."""
    node = ir.producer(t)
    if node is None or node.op != "Concat" or len(node.inputs) != 2 or ir.rank(t) != 4:
        return None
    return node if attr_value(node, "axis", 13) in (2, -2) else None


def _producer(t, ops, what):
    node = ir.producer(t)
    if node is None or node.op not in ops or (node.domain or "") not in ("", "ai.onnx"):
        raise Refuse(f"{what} '{t.name}' is not produced by {'/'.join(ops)}")
    return node


def _scalar(t, what) -> float:
    value = ir.const_value(t)
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
        raise Refuse(f"{what} '{t.name}' is not a constant float scalar")
    if value.ndim > 4 or not np.isfinite(value).all() or float(value.reshape(-1)[0]) == 0:
        raise Refuse(f"{what} '{t.name}' is zero, not finite or of too high rank")
    return float(value.reshape(-1)[0])


def _strip_scale(graph, t, what):
    """t = x * c or x / c (c a scalar constant) -> (x, factor); otherwise (t, 1.0)."""
    node = ir.producer(t)
    if node is None or node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return t, 1.0
    a, b = node.inputs
    if ir.const_value(b) is not None:
        value = _scalar(b, f"{what} scale")
        factor = value if node.op == "Mul" else 1.0 / value
    elif node.op == "Mul" and ir.const_value(a) is not None:
        factor, b, a = _scalar(a, f"{what} scale"), a, b
    else:
        return t, 1.0
    _only_feeds(graph, a)
    return a, factor


def _reaches_qk(t) -> bool:
    """t is MatMul(a, b), possibly times/over a constant, with a and b both from Transpose/Mul (the
    score side of the mask Add, told apart from a mask built by Mul/Where/Cast)."""
    node = ir.producer(t)
    if node is not None and node.op in ("Mul", "Div") and len(node.inputs) == 2:
        other = [i for i in node.inputs if ir.const_value(i) is None]
        node = ir.producer(other[0]) if len(other) == 1 else None
    if node is None or node.op != "MatMul":
        return False
    return all(ir.producer(i) is not None and ir.producer(i).op in ("Transpose", "Mul", "Div") for i in node.inputs)


def _perm(node, opset):
    perm = attr_value(node, "perm", opset)
    return None if perm is None else [int(p) for p in perm]


def _split_heads(graph, t, opset, perms, what):
    """t = Transpose(Reshape(X, [.., .., H, D]), perm) (or two Transposes, perms: list of chains)."""
    chain, rep, past, present, after = [], 1, None, None, 0
    for _ in range(5):
        repeated = attention_shapes.repeat_kv(t, opset) if rep == 1 else None
        if repeated is not None:  # grouped-query attention: K/V heads repeated for the query heads
            t, rep = repeated
            _only_feeds(graph, t)
            continue
        cat = _kv_concat(t) if past is None else None
        if cat is not None:  # KV cache: present = Concat(past, new); the fused op takes past, writes present
            past, present, t, after = cat.inputs[0], t, cat.inputs[1], len(chain)
            _only_feeds(graph, t)
            continue
        flat = attention_shapes.flat_transpose(t, opset)  # torch's k.transpose(-2, -1) through 3-D
        node = None if flat is not None else _producer(t, ("Transpose",), what)
        chain.insert(0, [0, 1, 3, 2] if flat is not None else _perm(node, opset))
        src = flat if flat is not None else node.inputs[0]
        _only_feeds(graph, src)
        if chain in perms:
            if past is not None and chain[:len(chain) - after] != [[0, 2, 1, 3]]:
                raise Refuse(f"{what} cache Concat is not over the sequence of (batch, heads, seq, dim)")
            return (*_reshape_heads(graph, src, opset, what), rep, past, present)
        if len(chain) == 2:
            break
        t = src
    raise Refuse(f"{what} transposes {chain} do not split heads as {' or '.join(map(str, perms))}")


def _reshape_heads(graph, t, opset, what):
    node = _producer(t, ("Reshape",), f"{what} head split")
    x, shape_t = node.inputs[0], node.inputs[1]
    shape = ir.const_value(shape_t)
    if attr_value(node, "allowzero", opset) and 0 in (shape_proof.shape_elements(shape_t, opset) or [0]):
        raise Refuse(f"{what} head split Reshape has allowzero=1 and a 0 (or unknown) element")
    if shape is None:  # dynamic batch/seq: a Shape/Gather/Concat chain, proven piece by piece
        split = shape_proof.head_split(x, shape_t, opset)
        if isinstance(split, str):
            raise Refuse(f"{what} {split}")
        shape = np.array([0, 0, *split], np.int64)
    if shape.size != 4:
        raise Refuse(f"{what} head split shape '{shape_t.name}' is not a constant of 4 dims")
    heads, dim = int(shape[2]), int(shape[3])
    hidden = x.shape[-1] if ir.rank(x) == 3 else None
    if isinstance(hidden, int) and heads == -1 and dim > 0 and hidden % dim == 0:
        heads = hidden // dim  # view(b, s, -1, D): the heads follow from the static hidden size
    if heads <= 0 or dim <= 0:
        raise Refuse(f"{what} head split shape {shape.tolist()} has no static heads/head size")
    if ir.rank(x) != 3 or x.shape[-1] != heads * dim:
        raise Refuse(f"{what} '{x.name}' is not 3-D with a static last dim of {heads}*{dim}")
    if x.dtype is None or np.dtype(x.dtype) not in DTYPES:
        raise Refuse(f"{what} '{x.name}' is not float16/float32")
    lead = [int(shape[0]), int(shape[1])]
    for i, d in enumerate(lead):
        if not (d == 0 or d == x.shape[i] or (d == -1 and lead[1 - i] in (0, x.shape[1 - i]))):
            raise Refuse(f"{what} head split shape {shape.tolist()} does not keep (batch, seq)")
    return x, heads, dim


def _merge_ok(m, q3, heads, dv) -> str | None:
    merge = m.nodes["merge"]
    if attr_value(merge, "allowzero", m.opset) and 0 in (shape_proof.shape_elements(m["merge_shape"], m.opset) or [0]):
        return "merge-heads Reshape has allowzero=1 and a 0 (or unknown) element"
    shape = ir.const_value(m["merge_shape"])
    out = merge.outputs[0]
    if shape is not None:
        shape = [int(d) for d in shape.reshape(-1)]
        if len(shape) == 3 and shape[2] in (heads * dv, -1) and all(
                d in (0, q3.shape[i]) for i, d in enumerate(shape[:2])) and (shape[2] != -1 or shape[:2] == [0, 0]):
            return None
        if shape == [-1, heads * dv]:  # tokens flattened for a 2-D projection (GPT-2's Conv1D as Gemm)
            m.flat_merge = True
            return None
        if len(shape) == 3 and shape[2] == heads * dv and -1 in shape[:2] and all(
                d in (0, -1, q3.shape[i]) for i, d in enumerate(shape[:2])) and shape[:2].count(-1) == 1:
            return None
        return f"merge-heads shape {shape} is not (batch, seq, {heads}*{dv})"
    if (out.shape is not None and len(out.shape) == 3 and out.shape[2] == heads * dv
            and all(isinstance(d, (int, str)) and d == q3.shape[i] for i, d in enumerate(out.shape[:2]))):
        return None  # a runtime shape chain whose result shape inference pins to (B, S, H*Dv)
    elems = shape_proof.shape_elements(m["merge_shape"], m.opset)
    if elems is not None and len(elems) == 3 and elems[2] in (heads * dv, -1) and all(
            _merge_dim(m, e, q3, i) for i, e in enumerate(elems[:2])):
        return None  # (B, S) read from the heads being merged, from Q, or from a tensor proven to share them
    return "merge-heads Reshape target is not known to be (batch, seq, heads*head_dim)"


def _merge_dim(m, e, q3, axis) -> bool:
    """Element `axis` of the merge shape is Q's batch (0) / sequence (1): read from Q's kin, or from a
    value inside the fused region whose dim traces back to Q's (attention_shapes.dim_origin)."""
    if e == 0 or shape_proof.proven(e, q3, axis):
        return True
    if isinstance(e, shape_proof.Dim):
        origin = attention_shapes.dim_origin(e.source, e.axis, m.inside, m.opset)
        return origin is not None and shape_proof.same_dim(origin[0], origin[1], q3, axis)
    return False


def _pv_reshape_ok(m, q3, heads, dv) -> str | None:
    """The export's view of P*V (B, H, S, Dv) to its own shape (torch's SDPA decomposition) is a no-op."""
    node = m.nodes.get("pv_reshape")
    if node is None:
        return None
    pv = m.nodes["pv"].outputs[0]
    elems = shape_proof.shape_elements(node.inputs[1], m.opset)
    if elems is None or len(elems) != 4 or elems.count(-1) > 1:
        return f"the view of the P*V product '{node.name}' has an unknown shape"
    want = [attention_shapes.dim_origin(pv, a, m.inside, m.opset) for a in (0, 2)]
    for axis, e in enumerate(elems):
        if axis in (1, 3) and e in (-1, heads if axis == 1 else dv) or (e == 0 and not attr_value(node, "allowzero", m.opset)):
            continue
        origin = attention_shapes.dim_origin(e.source, e.axis, m.inside, m.opset) if isinstance(e, shape_proof.Dim) else None
        if axis in (0, 2) and origin is not None and want[axis // 2] is not None and shape_proof.same_dim(
                origin[0], origin[1], *want[axis // 2]):
            continue
        return f"the view of the P*V product '{node.name}' element {axis} is not provably its own dim"
    return None


def _mask_ok(mask, q3, k3, heads) -> str | None:
    if mask.dtype is None or np.dtype(mask.dtype) != np.dtype(q3.dtype):
        return f"mask '{mask.name}' is not of the query's dtype"
    if mask.shape is None or len(mask.shape) > 4:
        return f"mask '{mask.name}' has an unknown shape or a rank above 4"
    dims = [1] * (4 - len(mask.shape)) + list(mask.shape)
    targets = [q3.shape[0], heads, q3.shape[1], k3.shape[1]]
    for i, (d, want) in enumerate(zip(dims, targets)):
        if d == want or (d == 1 and i != 3):
            continue
        # an exported padding mask is (batch, 1, 1, kv_seq) named after the attention_mask input, while
        # inference often loses the names on Q/K: a symbolic batch/kv dim against a non-static one is
        # taken to be that dim (the original Add could not broadcast the scores to a larger batch/kv)
        if i in (0, 3) and isinstance(d, str) and d and not isinstance(want, int):
            continue
        # a dim inference could not name (a mask built by Expand/Where/GatherND from shape arithmetic):
        # the original Add only runs if it is 1 or the scores' dim, or enlarges a scores dim of 1; the
        # fused ops refuse at run time a mask that does not broadcast into (B, H, S, T) (ORT validates
        # attention_bias / attn_mask, graphopt adds it in place), so that case errors, never differs
        if d is None or d == "" or (isinstance(d, str) and d.startswith("unk__")):
            continue
        return f"mask '{mask.name}' shape {list(mask.shape)} does not broadcast to (batch, heads, seq, kv_seq)"
    return None


def _parse(m):
    graph, opset = m.graph, m.opset
    softmax = m.nodes["softmax"]
    if _perm(m.nodes["merge_t"], opset) != [0, 2, 1, 3]:
        raise Refuse("merge-heads Transpose perm is not [0, 2, 1, 3]")
    if attr_value(softmax, "axis", opset) not in (-1, 3):
        raise Refuse("Softmax is not over the last axis")
    t, scale, mask = m["scores"], 1.0, None
    _only_feeds(graph, t)
    for _ in range(2):  # the mask Add and the scale come in either order
        t, factor = _strip_scale(graph, t, "scores")
        scale *= factor
        node = ir.producer(t)
        if mask is None and node is not None and node.op == "Add" and len(node.inputs) == 2:
            for i in (0, 1):
                if _reaches_qk(node.inputs[i]) and not _reaches_qk(node.inputs[1 - i]):
                    t, mask = node.inputs[i], node.inputs[1 - i]
                    _only_feeds(graph, t)
                    break
            else:
                raise Refuse(f"neither input of the score Add '{node.name}' comes from the Q*K MatMul")
    qk = _producer(t, ("MatMul",), "scores")
    qh, kh = qk.inputs
    for h in (qh, kh):
        _only_feeds(graph, h)
    qh, qf = _strip_scale(graph, qh, "query")
    kh, kf = _strip_scale(graph, kh, "key")
    q3, heads, d, qrep, qpast, _ = _split_heads(graph, qh, opset, [[[0, 2, 1, 3]]], "query")
    k3, kheads, kd, krep, kpast, kpresent = _split_heads(graph, kh, opset, [[[0, 2, 3, 1]], [[0, 2, 1, 3], [0, 1, 3, 2]]],
                                                         "key")
    vh = m["vh"]
    _only_feeds(graph, vh)
    v3, vheads, dv, vrep, vpast, vpresent = _split_heads(graph, vh, opset, [[[0, 2, 1, 3]]], "value")
    if qpast is not None or (kpast is None) != (vpast is None):
        raise Refuse("a KV cache Concat on the query, or on only one of key/value")
    m.past = None if kpast is None else (kpast, vpast, kpresent, vpresent)
    if not (qrep == 1 and heads == kheads * krep == vheads * vrep and kheads == vheads and d == kd):
        raise Refuse(f"query/key/value heads ({heads}, {kheads}x{krep}, {vheads}x{vrep}) or head sizes ({d}, {kd}) differ")
    m.kv_heads = kheads
    same = shape_proof.same_dim
    if not (same(q3, 0, k3, 0) and same(k3, 0, v3, 0) and same(k3, 1, v3, 1)):
        raise Refuse("query/key/value batch or key/value lengths are not known to agree")
    if len({np.dtype(x.dtype) for x in (q3, k3, v3)}) != 1:
        raise Refuse("query/key/value dtypes differ")
    reason = mask is not None and _mask_ok(mask, q3, k3, heads) or None
    if reason:
        raise Refuse(reason)
    guard = m.nodes.get("guard")
    if guard is not None and {id(c) for c in softmax.outputs[0].outputs} != {id(guard), id(m.nodes["isnan"])}:
        raise Refuse(f"'{softmax.outputs[0].name}' has other consumers")
    return q3, k3, v3, mask, heads, scale * qf * kf, dv


def _check(m) -> str | None:
    try:
        *m.parsed, dv = _parse(m)
        q3, heads = m.parsed[0], m.parsed[4]
        # the walked nodes join the match so the driver removes them once the fused op replaces their use
        seen = {id(n) for n in m.matched}
        region = m.matched + [n for n in _walked(m) if id(n) not in seen]
        m.inside = {id(n) for n in region}
        reason = _merge_ok(m, q3, heads, dv) or _pv_reshape_ok(m, q3, heads, dv)
        if reason:
            raise Refuse(reason)
        m.shape_moves = attention_shapes.plan(m.graph, m.inside, m.opset, m.root)
        if isinstance(m.shape_moves, str):
            raise Refuse(m.shape_moves)
    except Refuse as e:
        return str(e)
    m.matched[:] = region
    return None


def _walked(m):
    """Every node between the Softmax's input / the V heads and the 3-D Q, K, V (producers, upwards)."""
    q3, k3, v3, mask, _, _ = m.parsed
    stop = {id(t) for t in (q3, k3, v3) + ((mask,) if mask is not None else ()) + (m.past[:2] if m.past else ())}
    todo, found = [m["scores"], m["vh"]], {}
    while todo:
        t = todo.pop()
        node = ir.producer(t)
        if id(t) in stop or node is None or id(node) in found or ir.const_value(t) is not None:
            continue
        found[id(node)] = node
        if node.op != "Shape":  # a Shape reads no data: what it reads is not part of the attention
            todo.extend(node.inputs)
    return list(found.values())


def _attention(m):
    q3, k3, v3, mask, heads, scale = m.parsed
    attention_shapes.apply(m, m.shape_moves)
    inputs = [q3, k3, v3] + ([mask] if mask is not None else [])
    hidden_v = v3.shape[2] * heads // m.kv_heads  # static (checked); the output is (B, S, H*Dv)
    shape = [q3.shape[0], q3.shape[1], hidden_v]
    attrs = {"num_heads": heads, "scale": float(scale)}
    if m.kv_heads != heads:  # grouped-query attention: each K/V head serves num_heads / kv_num_heads queries
        attrs["kv_num_heads"] = int(m.kv_heads)
    if "guard" in m.nodes:  # Where(IsNaN(p), 0, p): rows the mask hides entirely give 0, not NaN
        attrs["nan_probs_to_zero"] = 1
    if m.past:  # KV cache: Attention(q, k, v, mask, past_k, past_v) -> (y, present_k, present_v)
        past_k, past_v, present_k, present_v = m.past
        inputs = [q3, k3, v3, mask if mask is not None else gs.Variable.empty(), past_k, past_v]
        y, new_k, new_v = emit(m, "Attention", inputs, attrs, outputs=3, dtype=out_like(m)["dtype"], shape=shape)
        for old, new in ((present_k, new_k), (present_v, new_v)):
            new.shape = old.shape
            m.rebind(old, new)
    else:
        y = emit(m, "Attention", inputs, attrs, dtype=out_like(m)["dtype"], shape=shape)
    if getattr(m, "flat_merge", False):  # the merge's (B*S, H*Dv) view of the fused (B, S, H*Dv) output
        return m.op("Reshape", [y, m.constant(np.array([-1, hidden_v], np.int64), "flat")], **out_like(m))
    return y


def _attention_rules():
    rules = []
    for guarded in (False, True):
        for viewed in (False, True):
            softmax = Op("Softmax", Var("scores"), name="softmax", single_use=not guarded)
            probs = Op("Where", Op("IsNaN", softmax, name="isnan"), Const("zero", all_equal(0)), softmax,
                       name="guard") if guarded else softmax  # SDPA exports: NaN rows (all masked) -> 0
            pv = Op("MatMul", probs, Var("vh"), name="pv", single_use=False)
            if viewed:  # torch's SDPA decomposition views P*V to its own shape
                pv = Op("Reshape", pv, Var("pv_shape"), name="pv_reshape", single_use=False)
            rules.append(Rule("attention", Op("Reshape", Op("Transpose", pv, name="merge_t", single_use=False),
                                              Var("merge_shape"), name="merge"), _attention, _check,
                              near_miss_from=2.5))  # traced from Reshape(Transpose(MatMul(..))): a block
    return rules


ATTENTION_RULES = _attention_rules()
# merge(softmax(split(Q) split(K)^T * scale + mask) split(V)) -> Attention(Q, K, V, mask)

register_rules("fuse-attention", ATTENTION_RULES, level=2, produces={"attention": "Attention"},
               doc="Multi-head scaled dot-product attention -> one Attention op "
                   "(onnx target: opset >= 23; ort: Attention/MultiHeadAttention)")
