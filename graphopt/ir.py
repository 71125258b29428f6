"""Load/save and the few graph helpers every pass needs, over onnx-graphsurgeon's IR.

A gs.Graph keeps use-def lists both ways (Variable.inputs = producer, Variable.outputs =
consumers, including consumers inside If/Loop/Scan subgraphs, which share the outer Variable
objects). Everything here keeps those lists consistent, so passes never rescan the graph.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from .errors import GraphoptError, InvalidModel, UnsafePath, UsageError
from .limits import DEFAULT as DEFAULT_LIMITS
from .limits import Limits
from . import external_data as _external
from .external_data import external_data_files, input_files, tensors_with_external_data  # noqa: F401  (part of ir)
from .validate import validate_model

PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot reach 2 GiB
_CONTROL_FLOW = {"If", "Loop", "Scan"}  # the standard ops that carry subgraphs
_names = itertools.count()
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings are about its own internals


# ---------------------------------------------------------------- load / save

def load_model(model_or_path, load_external_data: bool = True, limits: Limits = DEFAULT_LIMITS) -> onnx.ModelProto:
    """Read a ModelProto (path, bytes or ModelProto) and reject anything unsafe or malformed
    (graphopt.validate) before a pass sees it. External data must stay inside the model's folder."""
    if isinstance(model_or_path, onnx.ModelProto):
        validate_model(model_or_path, limits)
        return _unknown_dims_cleared(model_or_path, copy=True)
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        model, path = _parse(bytes(model_or_path), "<bytes>"), None
    else:
        path = Path(model_or_path)
        if not path.exists():
            raise InvalidModel(f"{path}: no such file")
        if not path.is_file():
            raise InvalidModel(f"{path}: not a file")
        size = path.stat().st_size
        if size > PROTOBUF_LIMIT:  # checked before reading: protobuf could not parse it anyway
            raise InvalidModel(f"{path}: {size:,} bytes is more than a protobuf can hold (2 GiB); "
                               f"weights that large must be stored as external data")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InvalidModel(f"{path}: cannot read ({e.strerror})") from None
        model = _parse(data, str(path))
    validate_model(model, limits)  # sizes and structure first: external data is read only if they pass
    if load_external_data and any(True for _ in tensors_with_external_data(model.graph)):
        if path is None:
            raise UnsafePath("a model given as bytes cannot have external data (no folder to read it from)")
        _external.load_external_data(model, path.resolve().parent, limits)
    return _unknown_dims_cleared(model, copy=False)  # parsed here: ours to change


def _shape_dims(graph: onnx.GraphProto) -> Iterator:
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            yield from vi.type.tensor_type.shape.dim
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs):
                yield from _shape_dims(sub)


def _unknown_dims_cleared(model: onnx.ModelProto, copy: bool) -> onnx.ModelProto:
    """A dim of -1 in a declared shape means "unknown" to the exporters that write it (and to ONNX
    Runtime); make it an unknown dim so no pass reads it as a size. The caller's proto is not modified."""
    if not any(d.HasField("dim_value") and d.dim_value == -1 for d in _shape_dims(model.graph)):
        return model
    if copy:
        original, model = model, onnx.ModelProto()
        model.CopyFrom(original)
    for d in _shape_dims(model.graph):
        if d.HasField("dim_value") and d.dim_value == -1:
            d.Clear()
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModel(f"{where}: not an ONNX model ({e.__class__.__name__}: {e})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InvalidModel(f"{where}: not an ONNX model (no graph or no opset_import)")
    return model


def validate_structure(graph: onnx.GraphProto) -> None:
    """Structure and limit checks of graphopt.validate on a bare graph (kept for callers of ir)."""
    probe = onnx.ModelProto()
    probe.graph.CopyFrom(graph)
    validate_model(probe)


def load(model_or_path, limits: Limits = DEFAULT_LIMITS, validated: bool = False) -> gs.Graph:
    """Load a model (path, bytes or ModelProto) into graphsurgeon's IR (`validated`: a ModelProto
    that load_model already returned, not checked twice)."""
    model = model_or_path if validated and isinstance(model_or_path, onnx.ModelProto) \
        else load_model(model_or_path, limits=limits)
    try:
        return gs.import_onnx(model)
    except Exception as e:  # graphsurgeon rejects some malformed graphs itself
        raise InvalidModel(f"cannot import model: {e}") from None


def export(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """graphsurgeon Graph -> ModelProto, keeping the template's metadata and dropping unused opsets."""
    toposort(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    if template is not None:
        model.ir_version = template.ir_version
        model.producer_name, model.producer_version = template.producer_name, template.producer_version
        model.domain, model.model_version, model.doc_string = template.domain, template.model_version, template.doc_string
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
    prune_opset_imports(model)
    _drop_outer_copies(model.graph, set())
    _hoist_shared_initializers(model.graph)
    _satisfy_ir3(model)
    return model


def _hoist_shared_initializers(main: onnx.GraphProto) -> None:
    """A weight read only inside several subgraphs is exported into each of them: keep one copy in
    the main graph instead (every subgraph may read outer-scope values)."""
    copies: dict[str, list] = {}

    def walk(g, top):
        if not top:
            for t in g.initializer:
                copies.setdefault(t.name, []).append(g)
        for node in g.node:
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub, False)
    walk(main, True)
    taken = {t.name for t in main.initializer} | {i.name for i in main.input} | {o for n in main.node for o in n.output}
    for name, graphs in copies.items():
        if len(graphs) < 2 or name in taken:
            continue
        first = next(t for t in graphs[0].initializer if t.name == name)
        main.initializer.append(first)
        for g in graphs:
            keep = [t for t in g.initializer if t.name != name]
            del g.initializer[:]
            g.initializer.extend(keep)


def _drop_outer_copies(graph: onnx.GraphProto, outer: set) -> None:
    """graphsurgeon exports an outer-scope constant read by a subgraph as a copy inside the subgraph;
    drop the copies so weights are stored once (subgraphs may read outer values directly)."""
    if outer:
        keep = [t for t in graph.initializer if t.name not in outer]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
    scope = outer | {t.name for t in graph.initializer}
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _drop_outer_copies(sub, scope)


def _satisfy_ir3(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input: move to IR 4 where the opset allows
    it (opset >= 9), else list the initializers as inputs."""
    if model.ir_version >= 4:
        return
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset >= 9:
        model.ir_version = 4
        return
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in listed:
            model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """Keep the default domain and every domain some node (or local function) still uses."""
    used = {"", "ai.onnx"}

    def walk(g):
        for n in g.node:
            used.add(n.domain)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub)
    walk(model.graph)
    for f in model.functions:
        used.add(f.domain)
        for n in f.node:
            used.add(n.domain)
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def save(model: onnx.ModelProto | gs.Graph, path, external_data: bool | None = None, protect=()) -> Path:
    """Write atomically: a temp file in the target folder, then rename. Never a half-written output.

    external_data=None picks external data (one `<name>.data` file beside the model, never anywhere
    else) only when the model would not fit in a single protobuf. `protect`: files that must not be
    replaced (the input model and its external data, see input_files), refused with UsageError.
    """
    if isinstance(model, gs.Graph):
        model = export(model)
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise GraphoptError(f"output folder '{path.parent}' does not exist")
    if external_data is None:
        external_data = _needs_external_data(model)
    guarded = {Path(os.path.realpath(p)) for p in protect}
    for target in [path] + ([folder / (path.name + ".data")] if external_data else []):
        if Path(os.path.realpath(target)) in guarded:
            raise UsageError(f"refusing to overwrite the input file '{target}' (use --force)")
    if external_data:
        _external.typed_data_to_raw(model.graph)
    tmpdir = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=folder))
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            data_name = path.name + ".data"
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, folder / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()
    return path


def _needs_external_data(model: onnx.ModelProto) -> bool:
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or 4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data)
        if total > PROTOBUF_LIMIT - (64 << 20):  # headroom for the graph itself
            return True
    return False


# ---------------------------------------------------------------- use-def helpers

def producer(v: gs.Tensor) -> gs.Node | None:
    return v.inputs[0] if v.inputs else None


def consumers(v: gs.Tensor) -> list[gs.Node]:
    return list(v.outputs)


def is_graph_output(graph: gs.Graph, v: gs.Tensor) -> bool:
    return any(o is v for o in graph.outputs)


def is_graph_input(graph: gs.Graph, v: gs.Tensor) -> bool:
    return any(i is v for i in graph.inputs)


def const_value(v: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(v, gs.Constant):
        return v.values
    node = producer(v)
    if node is not None and node.op == "Constant" and node.domain in ("", None, "ai.onnx"):
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in node.attrs:
                val = node.attrs[key]
                if isinstance(val, gs.Constant):
                    return val.values
                dtype = np.float32 if key.startswith("value_float") else np.int64
                return np.asarray(val, dtype=dtype)
    return None


def fresh_name(base: str) -> str:
    return f"{base}__g{next(_names)}"


def subgraphs(node: gs.Node) -> list[gs.Graph]:
    if node.op not in _CONTROL_FLOW and not node.domain:
        return []
    out = []
    for val in node.attrs.values():
        if isinstance(val, gs.Graph):
            out.append(val)
        elif isinstance(val, (list, tuple)):
            out.extend(v for v in val if isinstance(v, gs.Graph))
    return out


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """Innermost subgraphs first, the main graph last (so cleanup inside happens before outside)."""
    result = []
    for node in graph.nodes:
        for sub in subgraphs(node):
            result.extend(all_graphs(sub))
    result.append(graph)
    return result


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor, nested: list | None = None) -> None:
    """Point every consumer of `old` (here and in nested subgraphs) at `new`.

    Graph outputs keep their names: if `old` is an output of `graph`, `new` takes its name when it
    is a plain intermediate value; otherwise an Identity node is added to carry the old name.
    `nested` (from nested_graphs) saves the subgraph scan when called in a loop.
    """
    if old is new:
        return
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    nested = nested_graphs(graph) if nested is None else nested
    for g in [graph] + nested:
        if not is_graph_output(g, old) or isinstance(old, gs.Constant):
            continue  # a constant output keeps its name and value; only its consumers moved
        idx = next(i for i, o in enumerate(g.outputs) if o is old)
        if can_take_over(g, old, new):
            name, new_dtype, new_shape = old.name, new.dtype, new.shape
            old.name = fresh_name(old.name)
            new.name = name
            new.dtype = new_dtype if new_dtype is not None else old.dtype
            new.shape = new_shape if new_shape is not None else old.shape
            g.outputs[idx] = new
        else:
            holder = gs.Variable(fresh_name(old.name), dtype=old.dtype, shape=old.shape)
            prod = producer(old)
            if prod is not None:
                slot = next(i for i, o in enumerate(prod.outputs) if o is old)
                prod.outputs[slot] = holder
            g.nodes.append(gs.Node("Identity", name=fresh_name("keep_output"), inputs=[new], outputs=[old]))


def nested_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """Every subgraph below `graph` (not `graph` itself)."""
    return [g for g in all_graphs(graph) if g is not graph]


def can_take_over(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Can `new` simply be renamed to replace graph output `old`? (It must be computed in `graph`
    itself and be neither an input nor another output; otherwise an Identity has to carry the name.)"""
    prod = producer(new)
    return (isinstance(new, gs.Variable) and prod is not None and not is_graph_output(graph, new)
            and not is_graph_input(graph, new) and any(n is prod for n in graph.nodes))


def detach(node: gs.Node) -> None:
    """Disconnect a node from its tensors so use-def lists forget it (the caller drops it from graph.nodes).

    Removal is by identity: graphsurgeon's own list.remove compares nodes with Node.__eq__, which is
    quadratic on a constant shared by thousands of consumers."""
    for tensors, back in ((node.inputs, "outputs"), (node.outputs, "inputs")):
        for t in tensors:
            users = getattr(t, back)
            list.__delitem__(users, _index_of(users, node))
        list.clear(tensors)


def _index_of(items: list, obj) -> int:
    for i, item in enumerate(items[:32]):  # rewrites run in graph order: the node is usually near the front
        if item is obj:
            return i
    return list(map(id, items)).index(id(obj))


def toposort(graph: gs.Graph) -> None:
    """Kahn's algorithm (stable: keeps the existing order where it is already valid). Raises on cycles."""
    nodes = graph.nodes
    index = {id(n): i for i, n in enumerate(nodes)}
    if _is_sorted(nodes, index):
        return
    indeg = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        deps = set()
        for t in _node_reads(n):
            p = producer(t)
            if p is not None and id(p) in index and id(p) != id(n):
                deps.add(index[id(p)])
        indeg[i] = len(deps)
        for d in deps:
            users[d].append(i)
    import heapq
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in users[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if indeg[i] > 0)
        raise InvalidModel(f"graph has a cycle (through node '{stuck.name or stuck.op}')")
    graph.nodes = order


def _is_sorted(nodes, index) -> bool:
    for i, n in enumerate(nodes):
        for t in _node_reads(n):
            if t.inputs and index.get(id(t.inputs[0]), -1) >= i:
                return False
    return True


def _node_reads(node: gs.Node) -> list[gs.Tensor]:
    """Inputs plus outer-scope values read inside the node's subgraphs."""
    reads = [t for t in node.inputs]
    for sub in subgraphs(node):
        reads.extend(outer_reads(sub))
    return reads


def outer_reads(graph: gs.Graph) -> list[gs.Tensor]:
    """Values a (sub)graph reads that it neither defines nor receives as inputs."""
    local = {id(t) for t in graph.inputs}
    for n in graph.nodes:
        local.update(id(t) for t in n.outputs)
    reads = []
    for n in graph.nodes:
        for t in _node_reads(n):
            if id(t) not in local and isinstance(t, gs.Variable) and t.name:
                reads.append(t)
    reads.extend(t for t in graph.outputs if id(t) not in local and isinstance(t, gs.Variable))
    return reads


# ---------------------------------------------------------------- shapes and dtypes

def static_shape(v: gs.Tensor) -> tuple[int, ...] | None:
    """The shape if every dim is a known non-negative int, else None (symbolic dims stay symbolic)."""
    shape = v.shape
    if shape is None:
        return None
    if all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return tuple(int(d) for d in shape)
    return None


def rank(v: gs.Tensor) -> int | None:
    return None if v.shape is None else len(v.shape)


def numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def node_count(graph: gs.Graph) -> int:
    return sum(len(g.nodes) for g in all_graphs(graph))
