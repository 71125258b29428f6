"""O1 folding: shape-chain folding, constant folding (evaluated by ONNX Runtime).

Folding never creates a tensor above ctx.fold_limit bytes, never touches anything that depends on
a graph input, and leaves symbolic dims symbolic (Shape(x)[0] of a dynamic batch stays a node).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.ir.limits import DEFAULT as DEFAULT_LIMITS
from graphopt.ir.op_traits import CONTROL_FLOW_OPS, RANDOM_OPS
from graphopt.compiler.pass_manager import PassResult, register_pass, register_rules
from graphopt.compiler.rewrite import STANDARD_DOMAINS, Const, Op, Rule, Var, attr_value

# Ops never evaluated at compile time: random, quantization boundaries (folding a
# DequantizeLinear would turn an int8 model back into float), control flow, sequences.
NEVER_FOLD = RANDOM_OPS | CONTROL_FLOW_OPS | {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength",
    "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement",
}


# ---------------------------------------------------------------- shape-chain folding (rules)

def _shape_slice(m):
    """Shape(x)[start:end] when every selected dim is a known int."""
    x = m["x"]
    if x.shape is None:
        return None
    r = len(x.shape)
    start = attr_value(m.nodes["shape"], "start", m.opset) or 0
    end = attr_value(m.nodes["shape"], "end", m.opset)
    dims = list(x.shape)[slice(start, end if end is not None else r)]
    return dims if all(isinstance(d, int) and d >= 0 for d in dims) else None


def _shape_to_const(m):
    dims = _shape_slice(m)
    return None if dims is None else m.constant(np.array(dims, np.int64), "shape")


def _size_to_const(m):
    shape = ir.static_shape(m["x"])
    return None if shape is None else m.constant(np.array(ir.numel(shape), np.int64), "size")


def _gather_dims(m):
    """Gather(Shape(x), idx): fold when the gathered dims are known, even if others are symbolic."""
    x = m["x"]
    if x.shape is None or attr_value(m.root, "axis", m.opset) not in (0, None):
        return None
    start = attr_value(m.nodes["shape"], "start", m.opset) or 0
    end = attr_value(m.nodes["shape"], "end", m.opset)
    dims = list(x.shape)[slice(start, end if end is not None else len(x.shape))]
    idx = m.const("idx").astype(np.int64)
    if np.any(idx < -len(dims)) or np.any(idx >= len(dims)):
        return None
    picked = [dims[i] for i in idx.reshape(-1).tolist()]
    if not all(isinstance(d, int) and d >= 0 for d in picked):
        return None
    return m.constant(np.array(picked, np.int64).reshape(idx.shape), "dims")


def _slice_dims(m):
    """Slice(Shape(x), consts): fold when the sliced dims are known."""
    x, node = m["x"], m.root
    if x.shape is None or m.opset < 10:
        return None
    values = [ir.const_value(t) if not t.is_empty() else None for t in node.inputs[1:]]
    if values[0] is None or values[1] is None or any(v is None for v, t in zip(values, node.inputs[1:]) if not t.is_empty()):
        return None
    start = attr_value(m.nodes["shape"], "start", m.opset) or 0
    end = attr_value(m.nodes["shape"], "end", m.opset)
    dims = list(x.shape)[slice(start, end if end is not None else len(x.shape))]
    s, e = int(values[0].reshape(-1)[0]), int(values[1].reshape(-1)[0])
    step = int(values[3].reshape(-1)[0]) if len(values) > 3 and values[3] is not None else 1
    if len(values) > 2 and values[2] is not None and int(values[2].reshape(-1)[0]) not in (0, -1):
        return None
    picked = dims[slice(s, e, step)] if step != 0 else None
    if picked is None or not all(isinstance(d, int) and d >= 0 for d in picked):
        return None
    return m.constant(np.array(picked, np.int64), "dims")


SHAPE_OF_X = Op("Shape", Var("x"), name="shape", single_use=False)

SHAPE_RULES = [
    Rule("shape-static", Op("Shape", Var("x"), name="shape"), _shape_to_const),  # Shape(x:[2,3]) -> [2,3]
    Rule("size-static", Op("Size", Var("x")), _size_to_const),  # Size(x:[2,3]) -> 6
    Rule("gather-known-dim", Op("Gather", SHAPE_OF_X, Const("idx")), _gather_dims),  # Shape(x:[N,3])[1] -> 3
    Rule("slice-known-dims", Op("Slice", SHAPE_OF_X, allow_extra_inputs=True), _slice_dims),  # Shape(x:[N,3,4])[1:] -> [3,4]
]

register_rules("fold-shapes", SHAPE_RULES, level=1,
               doc="Replace Shape/Size/Gather/Slice over known dims with constants (symbolic dims stay)")


# ---------------------------------------------------------------- constant folding

@register_pass("fold-constants", level=1)
def fold_constants(graph: gs.Graph, ctx) -> PassResult:
    """Evaluate nodes whose inputs are all constant (with ONNX Runtime) and store the results."""
    changed = _constant_nodes_to_initializers(graph, ctx)
    candidates = _candidates(graph)
    if not candidates:
        return PassResult(changed > 0, {"constant_nodes": changed} if changed else {})
    candidates, skipped = _within_size_limit(candidates, ctx)
    values = _evaluate(candidates, graph, ctx) if candidates else {}
    folded = _replace_with_constants(graph, candidates, values)
    stats = {"nodes_folded": folded}
    if changed:
        stats["constant_nodes"] = changed
    if skipped:
        stats["skipped_over_limit"] = skipped
    return PassResult(bool(folded or changed), stats)


def _constant_nodes_to_initializers(graph: gs.Graph, ctx) -> int:
    converted = set()
    nested = ir.nested_graphs(graph)
    for node in graph.nodes:
        if node.op != "Constant" or node.domain not in STANDARD_DOMAINS:
            continue
        out = node.outputs[0]
        value = ir.const_value(out)
        if value is None or (ir.is_graph_output(graph, out) and not _may_become_output_initializer(graph, out, value, ctx)):
            continue
        _bind_constant(graph, out, np.asarray(value), nested)
        converted.add(id(node))
        ir.detach(node)  # left in place it would be converted again on every run
    if converted:
        graph.nodes = [n for n in graph.nodes if id(n) not in converted]
    return len(converted)


def _is_constant(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant) or t.is_empty()


def _candidates(graph: gs.Graph) -> list[gs.Node]:
    """Nodes computable at compile time, in topological order: standard deterministic op, no
    subgraph, every input a constant or the output of another candidate."""
    chosen, computable = [], set()
    for node in graph.nodes:
        if (node.domain not in STANDARD_DOMAINS or node.op in NEVER_FOLD or node.op == "Constant"
                or not node.outputs or ir.subgraphs(node)):
            continue
        # an output that is a graph output becomes an initializer of its name (_bind_constant); the
        # size cap (_within_size_limit) applies to it as to every folded value
        if all(_is_constant(t) or id(t) in computable for t in node.inputs):
            chosen.append(node)
            computable.update(id(o) for o in node.outputs)
    return chosen


def _subset_model(nodes: list[gs.Node], ctx, outputs: list[gs.Variable], known=None) -> onnx.ModelProto:
    """A standalone model of `nodes` (copies: the main graph's use-def lists stay untouched).
    `known` gives values for inputs computed earlier by other candidates."""
    made: dict[str, gs.Variable] = {}
    known = known or {}

    def copy_input(t):
        if t.is_empty():
            return gs.Variable.empty()
        if t.name not in made:  # one copy per name, however many nodes read it
            made[t.name] = gs.Constant(t.name, known[t.name] if t.name in known else t.values)
        return made[t.name]

    g = gs.Graph(opset=ctx.opset)
    for n in nodes:
        outs = [gs.Variable(o.name) if not o.is_empty() else gs.Variable.empty() for o in n.outputs]
        made.update((o.name, o) for o in outs if o.name)
        g.nodes.append(gs.Node(n.op, n.name, dict(n.attrs), [copy_input(t) for t in n.inputs], outs, n.domain))
    g.outputs = [made[o.name] for o in outputs]
    model = gs.export_onnx(g, do_type_check=False)
    del model.opset_import[:]
    model.opset_import.extend(o for o in ctx.model.opset_import)
    model.ir_version = max(ctx.model.ir_version, 7)
    return model


def _within_size_limit(candidates, ctx):
    """Infer the candidates' output shapes first, so nothing over the limit is ever allocated."""
    outs = [o for n in candidates for o in n.outputs if not o.is_empty()]
    probe = _subset_model(candidates, ctx, outs)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:
        return [], len(candidates)
    sizes = {}
    for vi in inferred.graph.output:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] if tt.HasField("shape") else None
        if dims is None or None in dims or not tt.elem_type:
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
        except (KeyError, TypeError):
            continue
        sizes[vi.name] = ir.numel(dims) * itemsize
    limits = ctx.options.get("limits") or DEFAULT_LIMITS
    budget = limits.fold_total_bytes - ctx.options.get("folded_bytes", 0)  # over the whole compile
    keep, kept_outputs = [], set()
    for n in candidates:  # topological: a node over the limit also drops everything built on it
        fits = all(o.is_empty() or sizes.get(o.name, ctx.fold_limit + 1) <= ctx.fold_limit for o in n.outputs)
        created = sum(sizes.get(o.name, 0) for o in n.outputs if not o.is_empty())
        if fits and created <= budget and all(_is_constant(t) or id(t) in kept_outputs for t in n.inputs):
            keep.append(n)
            budget -= created
            kept_outputs.update(id(o) for o in n.outputs)
    ctx.options["folded_bytes"] = limits.fold_total_bytes - budget
    return keep, len(candidates) - len(keep)


def _evaluate(candidates, graph, ctx) -> dict:
    """Run all candidates in one ONNX Runtime session; on failure, one by one (skipping failures)."""
    from graphopt.verify import ort_session
    outs = [o for n in candidates for o in n.outputs if not o.is_empty()]
    try:
        sess = ort_session(_subset_model(candidates, ctx, outs))
        return dict(zip([o.name for o in outs], sess.run([o.name for o in outs], {})))
    except Exception:
        pass
    values = {}
    deadline = ctx.options.get("deadline")
    for node in candidates:
        if deadline is not None:  # one node at a time can take long: honour --time-limit in between
            deadline.check(f"folding node '{node.name or node.op}'")
        node_outs = [o for o in node.outputs if not o.is_empty()]
        if not all(_is_constant(t) or t.name in values for t in node.inputs):
            continue  # something it needs could not be computed
        try:
            sess = ort_session(_subset_model([node], ctx, node_outs, values))
            values.update(zip([o.name for o in node_outs], sess.run([o.name for o in node_outs], {})))
        except Exception:
            continue  # ORT cannot run this op here: leave it for the runtime
    return values


def _replace_with_constants(graph, candidates, values) -> int:
    folded = 0
    nested = ir.nested_graphs(graph)
    for node in candidates:
        outs = [o for o in node.outputs if not o.is_empty()]
        if not all(o.name in values for o in outs):
            continue
        for out in outs:
            _bind_constant(graph, out, np.asarray(values[out.name]), nested)
        folded += 1
    if folded:
        dead = {id(n) for n in candidates if all(not o.outputs for o in n.outputs)}
        for n in candidates:
            if id(n) in dead:
                ir.detach(n)
        graph.nodes = [n for n in graph.nodes if id(n) not in dead]
    return folded


def _may_become_output_initializer(graph: gs.Graph, out: gs.Tensor, value, ctx) -> bool:
    """ONNX lets a graph output name an initializer (onnx.checker, ORT and graphopt.Session accept
    it), as onnxsim writes them; only for a value within the fold cap that is not also an input."""
    return not ir.is_graph_input(graph, out) and np.asarray(value).nbytes <= ctx.fold_limit


def _bind_constant(graph: gs.Graph, out: gs.Tensor, value: np.ndarray, nested) -> None:
    """Replace `out` by an initializer of its name. A graph output of `graph` becomes that
    initializer itself (replace_all_uses would keep the name with an Identity of the constant)."""
    const = gs.Constant(out.name, value)
    out.name = ir.fresh_name(out.name)
    graph.outputs = [const if o is out else o for o in graph.outputs]
    ir.replace_all_uses(graph, out, const, nested)
