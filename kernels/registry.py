"""Kernel table: one function per (domain, op, since_version, device).

A kernel is `fn(inputs, attrs) -> tuple | list` where `inputs` is a list of NumPy arrays (None for an
absent optional input; Python lists for sequences) and `attrs` maps every attribute of the op's
schema to its value, with the schema default filled in (None where the schema has no default).
`lookup` picks the highest `since` that is <= the model's opset for the op's domain, as ONNX
versioning says: an op keeps its semantics until the opset that redefines it.
"""
from __future__ import annotations

import bisect
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

KernelFn = Callable[[list, dict], "tuple | list"]

# (domain, op, device) -> sorted list of (since, fn)
_TABLE: dict[tuple[str, str, str], list[tuple[int, KernelFn]]] = {}


def norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def kernel(op: str, since: int = 1, device: str = "cpu", domain: str = ""):
    """Register the decorated function as the kernel of `op` from opset `since` on."""

    def register(fn: KernelFn) -> KernelFn:
        versions = _TABLE.setdefault((norm_domain(domain), op, device), [])
        versions[:] = [v for v in versions if v[0] != since]  # a re-registration replaces
        bisect.insort(versions, (since, fn), key=lambda v: v[0])
        return fn

    return register


def lookup(domain: str, op: str, opset: int, device: str = "cpu") -> KernelFn | None:
    """The kernel with the highest `since` <= `opset`, or None."""
    versions = _TABLE.get((norm_domain(domain), op, device))
    if not versions:
        return None
    best = None
    for since, fn in versions:
        if since <= opset:
            best = fn
    return best


class _Dynamic:
    def __repr__(self):
        return "DYNAMIC"


DYNAMIC = _Dynamic()  # in a prepare hook's `constants`: an input that is computed at run time

# (domain, op, device) -> sorted list of (since, prepare); see `prepare`
_PREPARE: dict[tuple[str, str, str], list[tuple[int, Callable]]] = {}


def prepare(op: str, since: int = 1, device: str = "cpu", domain: str = ""):
    """Register a build-time specializer for `op` from opset `since` on:
    `prep(attrs, constants, generic) -> fn | None`, where `constants` holds, per formal input, its
    value when it is a constant, DYNAMIC when it is computed at run time, None when it is absent,
    and `generic` is the op's kernel. It returns a kernel
    specialized for those constants (weights laid out once, not at every run), or None to keep
    the generic one. Prepared kernels must give the generic kernel's results."""

    def register(fn: Callable) -> Callable:
        versions = _PREPARE.setdefault((norm_domain(domain), op, device), [])
        versions[:] = [v for v in versions if v[0] != since]
        bisect.insort(versions, (since, fn), key=lambda v: v[0])
        return fn

    return register


def lookup_prepare(domain: str, op: str, opset: int, device: str = "cpu") -> Callable | None:
    """The prepare hook with the highest `since` <= `opset`, or None."""
    best = None
    for since, fn in _PREPARE.get((norm_domain(domain), op, device), ()):
        if since <= opset:
            best = fn
    return best


def registered(device: str = "cpu") -> list[tuple[str, str, int]]:
    """Every (domain, op, since) registered for `device`, for reports and tests."""
    return sorted((d, op, s) for (d, op, dev), vs in _TABLE.items() if dev == device for s, _ in vs)


def get_schema(domain: str, op: str, opset: int):
    try:
        return onnx.defs.get_schema(op, opset, norm_domain(domain))
    except onnx.defs.SchemaError:
        return None


def attribute_value(attr: onnx.AttributeProto, convert_graph: Callable | None = None):
    """An AttributeProto as a Python value: str for strings, ndarray for tensors."""
    t = attr.type
    A = onnx.AttributeProto
    if t == A.FLOAT:
        return float(attr.f)
    if t == A.INT:
        return int(attr.i)
    if t == A.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if t == A.TENSOR:
        return numpy_helper.to_array(attr.t)
    if t == A.SPARSE_TENSOR:
        return sparse_to_dense(attr.sparse_tensor)
    if t == A.GRAPH:
        return convert_graph(attr.g) if convert_graph else attr.g
    if t == A.FLOATS:
        return [float(x) for x in attr.floats]
    if t == A.INTS:
        return [int(x) for x in attr.ints]
    if t == A.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in attr.strings]
    if t == A.TENSORS:
        return [numpy_helper.to_array(x) for x in attr.tensors]
    if t == A.GRAPHS:
        return [convert_graph(g) if convert_graph else g for g in attr.graphs]
    if t == A.TYPE_PROTO:
        return attr.tp
    if t == A.TYPE_PROTOS:
        return list(attr.type_protos)
    return helper.get_attribute_value(attr)


def sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    shape = tuple(sp.dims)
    dense = np.zeros(shape, dtype=values.dtype)
    if indices.ndim == 1:  # linearized indices
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def resolve_attributes(node: onnx.NodeProto, opset: int, convert_graph: Callable | None = None) -> dict:
    """The node's attributes with every schema attribute present (default or None)."""
    attrs: dict = {}
    schema = get_schema(node.domain, node.op_type, opset)
    if schema is not None:
        for name, a in schema.attributes.items():
            dv = a.default_value
            attrs[name] = attribute_value(dv, convert_graph) if dv.type else None
    for a in node.attribute:
        attrs[a.name] = attribute_value(a, convert_graph)
    return attrs


def fill_default_attributes(node: onnx.NodeProto, schema) -> onnx.NodeProto:
    """A copy of `node` carrying the schema's default for every attribute it leaves out."""
    filled = onnx.NodeProto()
    filled.CopyFrom(node)
    present = {a.name for a in node.attribute}
    for name, a in schema.attributes.items():
        if name not in present and a.default_value.type:
            dv = onnx.AttributeProto()
            dv.CopyFrom(a.default_value)
            dv.name = name
            filled.attribute.append(dv)
    return filled


def instantiate_function(fproto: onnx.FunctionProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The function body with every attribute reference (ref_attr_name) bound to the caller's
    attribute, or the function's default; references to absent attributes are dropped."""
    given = {a.name: a for a in node.attribute}
    defaults = {a.name: a for a in fproto.attribute_proto}
    A = onnx.AttributeProto

    def bind(nodes):
        out = []
        for n in nodes:
            if not any(a.ref_attr_name or a.type in (A.GRAPH, A.GRAPHS) for a in n.attribute):
                out.append(n)
                continue
            m = onnx.NodeProto()
            m.CopyFrom(n)
            del m.attribute[:]
            for a in n.attribute:
                if a.ref_attr_name:
                    src = given.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
                    if src is None:
                        continue
                    b = A()
                    b.CopyFrom(src)
                    b.name = a.name
                else:
                    b = A()
                    b.CopyFrom(a)
                    graphs = [b.g] if b.type == A.GRAPH else list(b.graphs)
                    for g in graphs:
                        body = bind(g.node)
                        del g.node[:]
                        g.node.extend(body)
                m.attribute.append(b)
            out.append(m)
        return out

    return bind(fproto.node)
