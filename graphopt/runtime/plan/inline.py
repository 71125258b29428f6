"""Calls of a model's local functions replaced by the function bodies, before planning.

A call run as a nested plan costs a plan invocation per call, and its body can neither be folded
nor reuse the caller's dying buffers (the caller's argument list holds them). Inlined, the body's
nodes are ordinary steps of the caller's plan. A call stays a nested plan (plan._LocalFunction)
when inlining could change its meaning: the body imports another opset version than the caller,
has subgraph attributes (their free names would need renaming too), or leaves an output undefined.
"""
from __future__ import annotations

import itertools

import onnx

from graphopt.ir.attributes import instantiate_function, opset_map

MAX_DEPTH = 16  # functions calling functions; ONNX forbids recursion, this guards against it anyway


def inline_functions(nodes, functions: dict, opsets: dict, _depth: int = 0, _ids=None) -> list:
    """`nodes` with every inlinable call of a function in `functions` ((domain, name) -> FunctionProto)
    replaced by its body, recursively."""
    if not functions or _depth > MAX_DEPTH:
        return list(nodes)
    ids = _ids if _ids is not None else itertools.count()
    out = []
    for node in nodes:
        f = functions.get((node.domain, node.op_type))
        body = _body(f, node, opsets, next(ids)) if f is not None else None
        if body is None:
            out.append(node)
        else:
            out.extend(inline_functions(body, functions, opsets, _depth + 1, ids))
    return out


def _body(fproto, node, opsets, call_id):
    if {**opsets, **opset_map(fproto.opset_import)} != opsets:
        return None
    nodes = instantiate_function(fproto, node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return None
    prefix = f"{node.name or node.op_type}/"
    rename = {"": ""}
    for i, formal in enumerate(fproto.input):
        rename[formal] = node.input[i] if i < len(node.input) else ""
    produced = {o for n in nodes for o in n.output if o}
    extra = []
    for j, formal in enumerate(fproto.output):
        actual = node.output[j] if j < len(node.output) else ""
        if formal in produced:
            if actual:
                rename[formal] = actual
        elif rename.get(formal):  # the body passes an input straight through
            if actual:
                extra.append(onnx.helper.make_node("Identity", [rename[formal]], [actual],
                                                   name=f"{prefix}{formal}"))
        elif actual:
            return None  # an output the body leaves undefined: the nested plan gives None for it

    def name(v):
        if v not in rename:
            rename[v] = f"{prefix}{v}\0{call_id}"  # unique per call, cannot clash with a model name
        return rename[v]

    body = []
    for n in nodes:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = f"{prefix}{n.name or n.op_type}"
        m.input[:] = [name(v) for v in n.input]
        m.output[:] = [name(v) for v in n.output]
        body.append(m)
    return body + extra
