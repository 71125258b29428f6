"""Attribute values with schema defaults filled in, op schemas and function bodies: what the compiler
(rule matching) and the runtimes (kernel attributes) both read from a node."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

_schema_defaults: dict = {}


def opset_map(imports) -> dict[str, int]:
    """{domain: version} of a model's (or function's) opset imports, "ai.onnx" spelled ""."""
    return {norm_domain(o.domain): o.version for o in imports}


def attr_value(node, name: str, opset: int):
    """A gs.Node's attribute, or its schema default (None if neither)."""
    if name in node.attrs:
        val = node.attrs[name]
        return val.values if isinstance(val, gs.Constant) else val
    key = (node.op, node.domain or "", opset, name)
    if key not in _schema_defaults:
        default = None
        schema = get_schema(node.domain or "", node.op, opset)
        attr = schema.attributes.get(name) if schema is not None else None
        if attr is not None and attr.default_value.name:
            default = helper.get_attribute_value(attr.default_value)
            if isinstance(default, bytes):
                default = default.decode()
        _schema_defaults[key] = default
    return _schema_defaults[key]


def norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


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
