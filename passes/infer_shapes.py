"""O1 shape inference: ONNX's (with data propagation), refined, recorded on the IR.

Registered before fold-shapes/fold-constants (passes/__init__.py imports it first): inferred shapes
feed the shape-chain folding and the no-op rules.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.ir.limits import DEFAULT as DEFAULT_LIMITS
from graphopt.ir.limits import check_count
from graphopt.compiler.pass_manager import PassResult, register_pass
from graphopt.ir.validate import tensor_bytes

from .slice_shapes import refine_slices

# ---------------------------------------------------------------- shape inference

@register_pass("infer-shapes", level=1, per_graph=False)
def infer_shapes(graph: gs.Graph, ctx) -> PassResult:
    """Run ONNX shape inference (with data propagation) and record shapes/dtypes on the IR."""
    unknown = {id(o): o for g in ir.all_graphs(graph) for n in g.nodes for o in n.outputs
               if isinstance(o, gs.Variable) and (o.shape is None or o.dtype is None or ir.static_shape(o) is None)}
    # a rewrite since the last run (a folded constant, a new node) may make old values inferable;
    # with no rewrite there is nothing new to learn
    seen = _wiring(graph)
    if not unknown or ctx.options.get("shape_inference_wiring") == seen:
        return PassResult(False, {})
    ctx.options["shape_inference_wiring"] = seen
    # before any rewrite the input model *is* the graph: skip the export
    model = _without_weights(ctx.model if not ctx.options.get("graph_changed") else ir.export(graph, ctx.model))
    try:
        too_large = model.ByteSize() >= ir.PROTOBUF_LIMIT
    except Exception:  # protobuf refuses to even measure some messages past 2 GiB
        too_large = True
    if too_large:
        return PassResult(False, {"skipped_too_large": 1})
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort; passes simply see fewer shapes
        return PassResult(False, {"failed": 1})
    inferred = refine_slices(model, inferred)
    _check_inferred_sizes(inferred.graph, ctx)
    wanted = {o.name: o for o in unknown.values()}
    learned = 0
    for name, (shape, dtype) in _value_infos(inferred.graph, wanted):
        out = wanted[name]
        if out.dtype is None and dtype is not None:
            out.dtype = dtype
            learned += 1
        if shape is not None and (out.shape is None or _more_known(shape, out.shape)):
            out.shape = shape
            learned += 1
    # shapes are facts about the graph, not rewrites: they never make the pipeline iterate
    return PassResult(False, {"values_annotated": learned})


def _wiring(graph: gs.Graph) -> int:
    """A fingerprint of which tensors feed which nodes, subgraphs included (changes with any rewrite)."""
    return hash(frozenset((id(n), tuple(id(t) for t in n.inputs), tuple(id(t) for t in n.outputs))
                          for g in ir.all_graphs(graph) for n in g.nodes))


def _check_inferred_sizes(graph: onnx.GraphProto, ctx) -> None:
    """A value whose inferred static shape is over Limits.max_elements (ConstantOfShape/Expand/Tile
    of a computed shape, say) is refused now, before folding could try to materialize it."""
    limits = ctx.options.get("limits") or DEFAULT_LIMITS
    for vi, _ in _all_value_infos(graph):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            check_count(f"tensor '{vi.name}' (inferred shape {[d.dim_value for d in tt.shape.dim]}): elements",
                        ir.numel([d.dim_value for d in tt.shape.dim]), limits.max_elements, "--max-elements")


def _all_value_infos(graph: onnx.GraphProto):
    for vi in list(graph.value_info) + list(graph.output):
        yield vi, graph
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_value_infos(sub)


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference needs the shapes of large initializers, not their bytes: turn them into typed
    graph inputs (small ones stay, they may feed shape chains that data propagation follows)."""
    big = [t for t in model.graph.initializer if _raw_size(t) > 4096]
    if not big:
        return model
    light = onnx.ModelProto()
    for fd, value in model.ListFields():  # everything but the graph: cheap
        if fd.name != "graph":
            _copy_field(light, fd, value)
    for fd, value in model.graph.ListFields():  # the graph without its weights (never copy them)
        if fd.name != "initializer":
            _copy_field(light.graph, fd, value)
    light.graph.initializer.extend(t for t in model.graph.initializer if _raw_size(t) <= 4096)
    existing = {i.name for i in light.graph.input}
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in big if t.name not in existing)
    return light


def _copy_field(dest, fd, value) -> None:
    if hasattr(value, "extend"):  # a repeated field
        getattr(dest, fd.name).extend(value)
    elif hasattr(value, "CopyFrom"):  # a message
        getattr(dest, fd.name).CopyFrom(value)
    else:
        setattr(dest, fd.name, value)


def _raw_size(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):  # from the dims: reading t.raw_data would copy the bytes
        return tensor_bytes(t) or 0
    return 8 * (len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data))


def _value_infos(graph: onnx.GraphProto, wanted: dict):
    """(name, (shape, np dtype)) for the value infos of `wanted` names, subgraphs included."""
    for vi in list(graph.value_info) + list(graph.output):
        if vi.name not in wanted or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dtype = None
        if tt.elem_type:
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            except (KeyError, TypeError):
                dtype = None
        shape = None
        if tt.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        yield vi.name, (shape, dtype)
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _value_infos(sub, wanted)


def _more_known(new, old) -> bool:
    """new refines old: every dim at least as known (an int over a name, a model's name over an
    unk__ one inference invented, either over none) and one strictly more; never a conflict."""
    if len(new) != len(old):
        return False
    rank = [(_dim_rank(n), _dim_rank(o)) for n, o in zip(new, old)]
    if any(rn < ro or (ro == 2 and n != o) or (ro == 1 and rn == 1 and n != o)
           for (rn, ro), n, o in zip(rank, new, old)):
        return False
    return any(rn > ro for rn, ro in rank)


def _dim_rank(d) -> int:
    if isinstance(d, int):
        return 2
    return 1 if isinstance(d, str) and d and not d.startswith("unk__") else 0
