"""O1 cleanup: dead code, ops that do nothing, common subexpressions, duplicate initializers."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.ir.op_traits import RANDOM_OPS
from graphopt.compiler.pass_manager import PassResult, register_pass, register_rules
from graphopt.compiler.rewrite import STANDARD_DOMAINS, Const, Op, Rule, Var, all_equal, attr_value, same_shape_after_broadcast



@register_pass("dce", level=1)
def eliminate_dead_code(graph: gs.Graph, ctx) -> PassResult:
    """Remove nodes whose results reach no graph output (initializers and opsets follow on export)."""
    outer_owner = {}  # node inside a subgraph -> the node of `graph` that owns the subgraph
    for node in graph.nodes:
        for sub in ir.subgraphs(node):
            for g in ir.all_graphs(sub):
                for inner in g.nodes:
                    outer_owner[id(inner)] = node
    outputs = {id(t) for t in graph.outputs}
    live: set[int] = set()
    for node in reversed(graph.nodes):
        if any(id(out) in outputs or any(id(outer_owner.get(id(c), c)) in live for c in out.outputs)
               for out in node.outputs):
            live.add(id(node))
    dead = [n for n in graph.nodes if id(n) not in live]
    for node in dead:
        ir.detach(node)
    if dead:
        graph.nodes = [n for n in graph.nodes if id(n) in live]
    return PassResult(bool(dead), {"nodes_removed": len(dead)})


# ---------------------------------------------------------------- no-op elimination (rules as data)

def _output_is_renamable(m) -> str | None:
    out = m.root.outputs[0]
    if ir.is_graph_output(m.graph, out) and not ir.can_take_over(m.graph, out, m["x"]):
        return "output is a graph output that must keep its name"
    return None


def _cast_same_type(m) -> str | None:
    x = m["x"]
    if x.dtype is None:
        return "input dtype unknown"
    try:
        same = np.dtype(x.dtype) == onnx.helper.tensor_dtype_to_np_dtype(attr_value(m.root, "to", m.opset))
    except (TypeError, KeyError, ValueError):
        return "dtype not comparable"
    return None if same else "Cast changes the dtype"


_MANTISSA_BITS = {2: 11, 4: 24, 8: 53}  # float16/32/64: integers up to 2**bits are exact


def _exact_widening(src: np.dtype, mid: np.dtype) -> bool:
    """Does every value of `src` survive a cast to `mid` (so casting back restores it exactly)?"""
    if src == mid:
        return True
    if src.kind == "b":
        return mid.kind in "biuf"  # 0/1 survive any numeric type
    if src.kind == "f" and mid.kind == "f":
        return mid.itemsize > src.itemsize
    if src.kind in "iu" and mid.kind in "iu":
        return bool(np.can_cast(src, mid, "safe"))
    if src.kind in "iu" and mid.kind == "f":
        return src.itemsize * 8 - (src.kind == "i") <= _MANTISSA_BITS.get(mid.itemsize, 0)
    return False


def _cast_roundtrip(m) -> str | None:
    x = m["x"]
    if x.dtype is None:
        return "input dtype unknown"
    try:
        src = np.dtype(x.dtype)
        mid = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attr_value(m.nodes["inner"], "to", m.opset)))
        back = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attr_value(m.root, "to", m.opset)))
    except (TypeError, KeyError, ValueError):
        return "dtype not comparable"
    if back != src:
        return "the second Cast does not return to the input's type"
    if not _exact_widening(src, mid):
        return f"{src} -> {mid} loses values"
    return _output_is_renamable(m)


def _castlike_same_type(m) -> str | None:
    x, like = m["x"], m["like"]
    if x.dtype is None or like.dtype is None or np.dtype(x.dtype) != np.dtype(like.dtype):
        return "dtypes differ or are unknown"
    return None


def _dropout_inert(m) -> str | None:
    node = m.root
    if m.opset < 7 and attr_value(node, "is_test", m.opset) == 0:
        return "Dropout in training mode (is_test=0)"
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        mode = ir.const_value(node.inputs[2])
        if mode is None or bool(np.asarray(mode).any()):
            return "training_mode is not a constant false"
    if len(node.outputs) > 1 and (node.outputs[1].outputs or ir.is_graph_output(m.graph, node.outputs[1])):
        return "the mask output is used"
    return _output_is_renamable(m)


def _reshape_keeps_shape(m) -> str | None:
    x, target = m["x"], m.const("shape").astype(np.int64).tolist()
    allowzero = attr_value(m.root, "allowzero", m.opset) or 0
    if ir.rank(x) is None or len(target) != len(x.shape):
        return "rank changes or is unknown"
    shape = ir.static_shape(x)
    if shape is not None:
        resolved = [shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
        if -1 in resolved:
            known = int(np.prod([d for d in resolved if d != -1]))
            resolved[resolved.index(-1)] = ir.numel(shape) // known if known else 0
        return None if tuple(resolved) == shape else "Reshape changes the shape"
    # symbolic: copy-every-dim (0) with at most one -1 keeps the shape
    if not allowzero and all(d == 0 or d == -1 for d in target) and target.count(-1) <= 1:
        return None
    return "shape is symbolic and the target is not all zeros"


def _expand_keeps_shape(m) -> str | None:
    x, target = m["x"], m.const("shape").astype(np.int64).tolist()
    if ir.rank(x) is None or len(target) > len(x.shape):
        return "rank grows or is unknown"
    dims = list(x.shape)[len(x.shape) - len(target):]
    if all(t == 1 or (isinstance(d, int) and t == d) for t, d in zip(target, dims)):
        return None
    return "Expand broadcasts to a larger shape"


def _transpose_identity(m) -> str | None:
    perm = attr_value(m.root, "perm", m.opset)
    r = ir.rank(m["x"])
    if perm is None:
        return None if r is not None and r <= 1 else "default perm reverses the axes"
    return None if list(perm) == list(range(len(perm))) else "perm is not the identity"


def _slice_everything(m) -> str | None:
    node, x = m.root, m["x"]
    if m.opset < 10:
        return "opset < 10 Slice (attributes) not handled"
    values = [ir.const_value(t) if not t.is_empty() else None for t in node.inputs[1:]]
    if any(v is None for v, t in zip(values, node.inputs[1:]) if not t.is_empty()):
        return "starts/ends/axes/steps are not constant"
    starts, ends = values[0], values[1]
    r = ir.rank(x)
    if r is None:
        return "rank unknown"
    axes = values[2] if len(values) > 2 and values[2] is not None else np.arange(len(starts))
    steps = values[3] if len(values) > 3 and values[3] is not None else np.ones(len(starts), np.int64)
    for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        dim = x.shape[a % r]
        if st != 1:
            return "a step is not 1"
        if isinstance(dim, int):
            s2 = min(max(s + dim if s < 0 else s, 0), dim)
            e2 = min(max(e + dim if e < 0 else e, 0), dim)
            if s2 != 0 or e2 != dim:
                return "the slice drops elements"
        elif not (s == 0 and e >= 2**31 - 1):
            return "the dim is symbolic and the slice is not [0:max]"
    return None


def _pad_is_zero(m) -> str | None:
    node = m.root
    pads = attr_value(node, "pads", m.opset) if m.opset < 11 else ir.const_value(node.inputs[1])
    if pads is None:
        return "pads are not constant"
    return None if not np.any(np.asarray(pads)) else "pads are not all zero"


def _single_split_output(m) -> str | None:
    return None if len(m.root.outputs) == 1 else "Split has several outputs"


def _keeps_shape(m) -> str | None:
    if not same_shape_after_broadcast(m["x"], m.const("c")):
        return "broadcasting with the constant could change the shape"
    if m["x"].dtype is not None and np.dtype(m["x"].dtype) != m.const("c").dtype:
        return "dtypes differ"
    return _output_is_renamable(m)


def _both(*checks):
    def check(m):
        for c in checks:
            reason = c(m)
            if reason:
                return reason
        return None
    return check


x_ = lambda m: m["x"]  # noqa: E731  the replacement of every rule below: the input itself

NOOP_RULES = [
    Rule("identity", Op("Identity", Var("x")), x_, _output_is_renamable),  # Identity(x) -> x
    Rule("dropout", Op("Dropout", Var("x"), allow_extra_inputs=True), lambda m: [m["x"], None],
         _dropout_inert),  # Dropout(x) at inference -> x
    Rule("cast-same-type", Op("Cast", Var("x")), x_, _both(_cast_same_type, _output_is_renamable)),  # Cast<T>(x:T) -> x
    Rule("cast-roundtrip", Op("Cast", Op("Cast", Var("x"), name="inner", single_use=False)), x_,
         _cast_roundtrip),  # Cast<f32>(Cast<f64>(x:f32)) -> x (a lossless round trip)
    Rule("castlike-same-type", Op("CastLike", Var("x"), Var("like")), x_,
         _both(_castlike_same_type, _output_is_renamable)),  # CastLike(x:T, y:T) -> x
    Rule("reshape-same-shape", Op("Reshape", Var("x"), Const("shape")), x_,
         _both(_reshape_keeps_shape, _output_is_renamable)),  # Reshape(x, shape(x)) -> x
    Rule("expand-same-shape", Op("Expand", Var("x"), Const("shape")), x_,
         _both(_expand_keeps_shape, _output_is_renamable)),  # Expand(x, ones) -> x
    Rule("transpose-identity", Op("Transpose", Var("x")), x_,
         _both(_transpose_identity, _output_is_renamable)),  # Transpose(x, perm=[0..n)) -> x
    Rule("slice-everything", Op("Slice", Var("x"), allow_extra_inputs=True), x_,
         _both(_slice_everything, _output_is_renamable)),  # x[0:max] -> x
    Rule("pad-zero", Op("Pad", Var("x"), allow_extra_inputs=True), x_,
         _both(_pad_is_zero, _output_is_renamable)),  # Pad(x, 0) -> x
    Rule("concat-single", Op("Concat", Var("x")), x_, _output_is_renamable),  # Concat(x) -> x
    Rule("split-single", Op("Split", Var("x"), allow_extra_inputs=True), x_,
         _both(_single_split_output, _output_is_renamable)),  # Split(x) into one -> x
    Rule("add-zero", Op("Add", Var("x"), Const("c", all_equal(0)), commutative=True), x_, _keeps_shape),  # x+0 -> x
    Rule("sub-zero", Op("Sub", Var("x"), Const("c", all_equal(0))), x_, _keeps_shape),  # x-0 -> x
    Rule("mul-one", Op("Mul", Var("x"), Const("c", all_equal(1)), commutative=True), x_, _keeps_shape),  # x*1 -> x
    Rule("div-one", Op("Div", Var("x"), Const("c", all_equal(1))), x_, _keeps_shape),  # x/1 -> x
]

register_rules("eliminate-noops", NOOP_RULES, level=1,
               doc="Remove ops that do nothing: Identity, inference Dropout, same-type Cast, x+0, x*1, ...")


# ---------------------------------------------------------------- common subexpressions

def _attr_key(value):
    if isinstance(value, gs.Constant):
        return ("tensor", str(value.dtype), tuple(value.shape), hashlib.sha1(np.ascontiguousarray(value.values).tobytes()).hexdigest())
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (gs.Graph, gs.Node.AttributeRef)):
        raise TypeError("not hashable")
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return (type(value).__name__, value)
    return tuple(_attr_key(v) for v in value)  # lists, tuples, protobuf repeated fields


# Non-standard ops CSE may merge: graphopt's own fused ops and the ONNX Runtime contrib ops the
# fusion passes emit, all pure functions of their inputs. Other custom ops may be stateful or random.
PURE_CUSTOM_OPS = {"ai.graphopt": None, "com.microsoft": {
    "FusedConv", "FusedGemm", "FusedMatMul", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "BiasGelu", "FastGelu", "QuickGelu",
    "Gelu", "MatMulNBits", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearSigmoid"}}


def _mergeable(node: gs.Node) -> bool:
    if node.op in RANDOM_OPS:
        return False
    if node.domain in STANDARD_DOMAINS or node.domain == "ai.onnx.ml":
        return True
    if node.domain in PURE_CUSTOM_OPS:
        ops = PURE_CUSTOM_OPS[node.domain]
        return ops is None or node.op in ops
    return False


def _input_key(t: gs.Tensor):
    return "" if t.is_empty() else id(t)


@register_pass("cse", level=1)
def eliminate_common_subexpressions(graph: gs.Graph, ctx) -> PassResult:
    """Merge nodes that compute the same op on the same inputs with the same attributes."""
    seen: dict = {}
    dead: set[int] = set()
    nested = ir.nested_graphs(graph)
    for node in graph.nodes:
        if not _mergeable(node):
            continue
        try:
            attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
        except TypeError:
            continue  # subgraph attributes: equal-looking branches are not worth proving equal
        key = (node.domain or "", node.op, tuple(_input_key(t) for t in node.inputs), attrs, len(node.outputs))
        twin = seen.get(key)
        if twin is None:
            seen[key] = node
            continue
        if any(ir.is_graph_output(graph, o) for o in node.outputs):
            continue
        for mine, theirs in zip(list(node.outputs), twin.outputs):
            ir.replace_all_uses(graph, mine, theirs, nested)
        dead.add(id(node))
        ir.detach(node)
    if dead:
        graph.nodes = [n for n in graph.nodes if id(n) not in dead]
    return PassResult(bool(dead), {"nodes_merged": len(dead)})


@register_pass("dedup-initializers", level=1)
def merge_duplicate_initializers(graph: gs.Graph, ctx) -> PassResult:
    """Point every user of a repeated constant (same dtype, shape, bytes) at one copy."""
    first: dict = {}
    merged = 0
    nested = ir.nested_graphs(graph)
    constants = {}
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and not ir.is_graph_input(graph, t):
                constants.setdefault(id(t), t)
    by_layout: dict = {}  # only constants sharing dtype and shape can be equal: hash just those
    for t in constants.values():
        by_layout.setdefault((str(np.dtype(t.dtype)) if t.dtype is not None else None, tuple(t.shape or ())), []).append(t)
    for t in (t for group in by_layout.values() if len(group) > 1 for t in group):
        values = np.asarray(t.values)
        flat = np.ascontiguousarray(values)  # (makes 0-d arrays 1-d: the key keeps values.shape)
        if values.dtype.kind == "O":  # strings: hash the text, not the object pointers
            digest = hashlib.sha1(repr(values.tolist()).encode()).hexdigest()
        else:
            digest = hashlib.sha1(memoryview(flat).cast("B") if flat.size else b"").hexdigest()  # no copy
        key = (str(values.dtype), values.shape, digest)
        keep = first.setdefault(key, t)
        if keep is not t:
            ir.replace_all_uses(graph, t, keep, nested)
            merged += 1
    return PassResult(merged > 0, {"initializers_merged": merged})
