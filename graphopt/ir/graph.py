"""The few graph helpers every pass needs, over onnx-graphsurgeon's IR.

A gs.Graph keeps use-def lists both ways (Variable.inputs = producer, Variable.outputs =
consumers, including consumers inside If/Loop/Scan subgraphs, which share the outer Variable
objects). Everything here keeps those lists consistent, so passes never rescan the graph.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt.errors import InvalidModel
from graphopt.ir.op_traits import CONTROL_FLOW_OPS

_names = itertools.count()
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings are about its own internals

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


def reset_fresh_names() -> None:
    """Restart the counter behind fresh_name. compile_model calls it first, so a model compiles to
    the same bytes whatever this process compiled before (compile-many compares workers' outputs)."""
    global _names
    _names = itertools.count()


def subgraphs(node: gs.Node) -> list[gs.Graph]:
    if node.op not in CONTROL_FLOW_OPS and not node.domain:
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


# ---------------------------------------------------------------- the same question on ONNX protos

def node_subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every name read by a node inside `node`'s If/Loop/Scan bodies, nested bodies included (the outer
    values they capture among them)."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            names.update(i for n in g.node for i in n.input)
            names |= subgraph_reads(g)
    return names


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node inside the If/Loop/Scan bodies of `graph`'s nodes."""
    return set().union(*(node_subgraph_reads(n) for n in graph.node))
