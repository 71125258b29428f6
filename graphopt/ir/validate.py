"""Checks a ModelProto from a stranger must pass before any pass (or kernel) sees it.

Structure: undefined inputs, tensors produced twice, cycles, recursive local functions.
Types: data types ONNX does not define, negative dims, raw_data whose size disagrees with dims.
Limits (graphopt.limits): node count, subgraph depth, rank, element count of every declared,
stored and inferred tensor, including what ConstantOfShape/Expand/Tile/Range/Resize would create
from constant inputs (computed from the inputs, never by running the op).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

from graphopt.errors import InvalidModel, LimitExceeded
from graphopt.ir.limits import DEFAULT, Limits, check_count

# bits per element of every fixed-size ONNX data type (STRING and UNDEFINED have none)
_BITS = {TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
         TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
         TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32, TensorProto.UINT64: 64,
         TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8),
                     ("FLOAT8E8M0", 8), ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2),
                     ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits
KNOWN_TYPES = set(_BITS) | {TensorProto.STRING}


def tensor_bytes(t: TensorProto) -> int | None:
    """Bytes `t`'s raw data must have, from its dims and type (None for strings)."""
    bits = _BITS.get(t.data_type)
    return None if bits is None else (_numel(t.dims) * bits + 7) // 8


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _raw_len(t: TensorProto) -> int | None:
    """len(t.raw_data) without reading it (reading copies the bytes, gigabytes for big weights): the
    serialized size of t minus that of t's other fields is tag + length varint + the bytes."""
    rest = TensorProto(dims=t.dims, data_type=t.data_type, name=t.name, doc_string=t.doc_string,
                       data_location=t.data_location)
    rest.external_data.extend(t.external_data)
    diff = t.ByteSize() - rest.ByteSize()
    if diff == 0:
        return 0  # empty bytes are not serialized
    for k in range(1, 11):
        if diff - 1 - k >= 0 and _varint_size(diff - 1 - k) == k:
            return diff - 1 - k
    return None  # other fields present: the caller measures the slow way


def check_tensor(t: TensorProto, limits: Limits, where: str) -> None:
    """Type, dims, size limit and stored-size consistency of an initializer or attribute tensor."""
    dims, dtype = list(t.dims), t.data_type  # one read each: protobuf field access is not free
    name = f"{where} '{t.name}'" if t.name else where
    if dtype not in KNOWN_TYPES:
        raise InvalidModel(f"{name}: data type {dtype} is not an ONNX data type")
    if any(d < 0 for d in dims):
        raise InvalidModel(f"{name}: negative dimension in {dims}")
    check_count(f"{name}: rank", len(dims), limits.max_rank, "--max-rank")
    check_count(f"{name}: elements", _numel(dims), limits.max_elements, "--max-elements")
    if t.data_location == TensorProto.EXTERNAL:
        return  # checked (before reading) by the external-data loader
    if t.HasField("raw_data"):
        want = tensor_bytes(t)
        if want is not None and _raw_len(t) != want and len(t.raw_data) != want:
            raise InvalidModel(f"{name}: raw_data has {len(t.raw_data)} bytes, dims {dims} need {want}")
        return
    stored = {TensorProto.FLOAT: len(t.float_data), TensorProto.DOUBLE: len(t.double_data),
              TensorProto.INT64: len(t.int64_data), TensorProto.UINT64: len(t.uint64_data),
              TensorProto.UINT32: len(t.uint64_data), TensorProto.STRING: len(t.string_data),
              TensorProto.COMPLEX64: len(t.float_data) // 2, TensorProto.COMPLEX128: len(t.double_data) // 2}
    count = stored.get(t.data_type, len(t.int32_data))
    want = _numel(t.dims)
    if t.data_type in (TensorProto.UINT4, TensorProto.INT4) or _BITS.get(t.data_type, 8) < 8:
        return  # packed types: int32_data holds several elements each; sizes vary by packing
    if count != want and not (count == 0 and want == 0):
        raise InvalidModel(f"{name}: holds {count} values, dims {list(t.dims)} need {want}")


def check_value_info(vi: onnx.ValueInfoProto, limits: Limits, where: str) -> None:
    if not vi.type.HasField("tensor_type"):
        return  # sequences, maps, optionals: their element types are checked by onnx.checker later
    tt = vi.type.tensor_type
    if tt.elem_type not in KNOWN_TYPES and tt.elem_type != TensorProto.UNDEFINED:
        raise InvalidModel(f"{where} '{vi.name}': data type {tt.elem_type} is not an ONNX data type")
    if not tt.HasField("shape"):
        return
    dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
    if any(d < -1 for d in dims):  # -1 is how some exporters (paddle2onnx, tf2onnx) write "unknown"
        raise InvalidModel(f"{where} '{vi.name}': negative dimension in its shape")
    dims = [d for d in dims if d >= 0]
    check_count(f"{where} '{vi.name}': rank", len(tt.shape.dim), limits.max_rank, "--max-rank")
    if len(dims) == len(tt.shape.dim):
        check_count(f"{where} '{vi.name}': elements", _numel(dims), limits.max_elements, "--max-elements")


# ---------------------------------------------------------------- the model walk

def validate_model(model: onnx.ModelProto, limits: Limits = DEFAULT) -> None:
    """Everything above, on the main graph, every subgraph and every local function."""
    _check_functions(model, limits)
    nodes = [0]
    _check_graph(model.graph, frozenset(), limits, depth=0, nodes=nodes, consts={})
    for f in model.functions:
        nodes[0] += len(f.node)
        check_count("nodes", nodes[0], limits.max_nodes, "--max-nodes")


def _check_functions(model: onnx.ModelProto, limits: Limits) -> None:
    """Local functions may call each other, never themselves (directly or through others)."""
    funcs = {(f.domain, f.name): f for f in model.functions}
    calls = {key: {(n.domain, n.op_type) for n in f.node if (n.domain, n.op_type) in funcs} for key, f in funcs.items()}
    state: dict = {}
    for start in funcs:
        stack = [(start, iter(sorted(calls[start])))]
        state[start] = 1 if start not in state else state[start]
        if state[start] == 2:
            continue
        while stack:
            key, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[key] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise InvalidModel(f"local function '{nxt[1]}' calls itself (through "
                                   f"{' -> '.join(k[1] for k, _ in stack)} -> {nxt[1]})")
            elif nxt not in state:
                state[nxt] = 1
                if len(stack) >= limits.max_depth:
                    raise LimitExceeded(f"local functions nested deeper than {limits.max_depth} (raise with --max-depth)")
                stack.append((nxt, iter(sorted(calls[nxt]))))
    for f in model.functions:
        defined = set(f.input)  # a function body lists its nodes in order: each reads what came before
        for node in f.node:
            for t in (a.t for a in node.attribute if a.type == AttributeProto.TENSOR):
                check_tensor(t, limits, f"function '{f.name}' node '{node.name or node.op_type}' tensor")
            missing = [i for i in node.input if i and i not in defined]
            if missing:
                raise InvalidModel(f"function '{f.name}': node '{node.name or node.op_type}' uses undefined "
                                   f"tensor '{missing[0]}'")
            defined.update(node.output)
        if any(o not in defined for o in f.output):
            raise InvalidModel(f"function '{f.name}': output '{next(o for o in f.output if o not in defined)}' "
                               f"is never produced")


def _check_graph(graph: onnx.GraphProto, outer: frozenset, limits: Limits, depth: int, nodes: list, consts: dict) -> None:
    if depth > limits.max_depth:
        raise LimitExceeded(f"subgraphs nested deeper than {limits.max_depth} (graph '{graph.name}'; "
                            f"raise with --max-depth)")
    nodes[0] += len(graph.node)
    check_count("nodes", nodes[0], limits.max_nodes, "--max-nodes")
    for t in graph.initializer:
        check_tensor(t, limits, "initializer")
    for s in graph.sparse_initializer:
        check_tensor(s.values, limits, "sparse initializer values")
        check_count(f"sparse initializer '{s.values.name}': elements", _numel(s.dims), limits.max_elements, "--max-elements")
    for kind, vis in (("input", graph.input), ("output", graph.output), ("value", graph.value_info)):
        for vi in vis:
            check_value_info(vi, limits, kind)
    consts = dict(consts)
    consts.update((t.name, t) for t in graph.initializer if _numel(t.dims) <= 64)
    known = _check_structure(graph, outer)
    for node in graph.node:
        attrs = list(node.attribute)
        if not attrs:
            _check_created_size(node, consts, limits)
            continue
        for a in attrs:
            if a.type == AttributeProto.TENSOR:
                check_tensor(a.t, limits, f"node '{node.name or node.op_type}' attribute '{a.name}'")
                if node.op_type == "Constant" and node.output and _numel(a.t.dims) <= 64:
                    consts[node.output[0]] = a.t
            elif a.type == AttributeProto.SPARSE_TENSOR:
                check_tensor(a.sparse_tensor.values, limits, f"node '{node.name or node.op_type}' attribute '{a.name}'")
        _check_created_size(node, consts, limits)
        for a in attrs:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs if a.type == AttributeProto.GRAPHS else ()):
                _check_graph(sub, known, limits, depth + 1, nodes, consts)


def _check_structure(graph: onnx.GraphProto, outer: frozenset) -> set:
    """Undefined inputs, duplicate outputs, cycles (Kahn's algorithm). Returns the names defined."""
    for kind, names in (("graph input", [i.name for i in graph.input]), ("graph output", [o.name for o in graph.output])):
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InvalidModel(f"{kind} '{twice}' is listed twice (graph '{graph.name}')")
    defined = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    nodes = list(graph.node)
    producers: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            if not out:
                continue
            if out in producers or out in defined:
                raise InvalidModel(f"tensor '{out}' is produced twice (node '{node.name or node.op_type}')")
            producers[out] = idx
    known = defined | producers.keys()
    indeg = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for idx, node in enumerate(nodes):
        for name in node.input:
            if name in producers:
                indeg[idx] += 1
                users.setdefault(producers[name], []).append(idx)
            elif name and name not in known:
                raise InvalidModel(f"node '{node.name or node.op_type}' uses undefined tensor '{name}'")
    for out in graph.output:
        if out.name not in known:
            raise InvalidModel(f"graph output '{out.name}' is never produced")
    ready = deque(i for i, d in enumerate(indeg) if d == 0)
    seen = 0
    while ready:
        i = ready.popleft()
        seen += 1
        for j in users.get(i, ()):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if seen != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if indeg[i] > 0)
        raise InvalidModel(f"graph has a cycle (through node '{stuck.name or stuck.op_type}')")
    return known


# ---------------------------------------------------------------- sizes of tensors ops would create

def _const(consts: dict, name: str):
    t = consts.get(name)
    if t is None or t.data_location == TensorProto.EXTERNAL:
        return None
    try:
        return onnx.numpy_helper.to_array(t)
    except Exception:
        return None


def _created_elements(node: onnx.NodeProto, consts: dict) -> int | None:
    """Elements the node's output will have, when constant inputs decide it (a lower bound when the
    data input's shape is unknown); None when it cannot be told without running the graph."""
    op, ins = node.op_type, list(node.input)
    value = lambda i: _const(consts, ins[i]) if len(ins) > i and ins[i] else None  # noqa: E731
    if op == "ConstantOfShape" and value(0) is not None:
        return _shape_elements(value(0), node)
    if op == "Expand" and value(1) is not None:
        return _shape_elements(value(1), node)
    if op == "Tile" and value(1) is not None:
        return _shape_elements(value(1), node, what="repeats")
    if op == "Range" and all(value(i) is not None for i in range(3)):
        start, limit, delta = (float(np.asarray(value(i)).reshape(-1)[0]) for i in range(3))
        if delta == 0 or not np.isfinite([start, limit, delta]).all():
            return None
        return max(int(np.ceil((limit - start) / delta)), 0)
    if op == "Resize":
        sizes, scales = value(3), value(2)
        if sizes is not None and sizes.size:
            return _shape_elements(sizes, node, what="sizes")
        if scales is not None and scales.size:
            s = np.asarray(scales, np.float64).reshape(-1)
            if not np.isfinite(s).all() or (s <= 0).any():
                raise InvalidModel(f"node '{node.name or op}': Resize scales {s.tolist()} are not positive")
            return int(min(np.prod(np.maximum(s, 1.0)), 2.0**62))  # growth factor; x has >= 1 element
    return None


def _shape_elements(shape: np.ndarray, node: onnx.NodeProto, what: str = "shape") -> int:
    dims = [int(d) for d in np.asarray(shape).reshape(-1)]
    if any(d < 0 for d in dims):
        raise InvalidModel(f"node '{node.name or node.op_type}': negative value in its {what} {dims}")
    n = 1
    for d in dims:
        n = min(n * d, 2**62)
    return n


_SIZE_OPS = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize"}


def _check_created_size(node: onnx.NodeProto, consts: dict, limits: Limits) -> None:
    if node.op_type not in _SIZE_OPS:
        return
    n = _created_elements(node, consts)
    if n is not None:
        check_count(f"node '{node.name or node.op_type}' ({node.op_type}): output elements",
                    n, limits.max_elements, "--max-elements")
