"""QDQ -> QOperator: rewrite DQ -> Conv/MatMul -> Q islands as QLinearConv / QLinearMatMul.

    DQ(xq) , DQ(wq) [, DQ(b int32)] -> Conv -> Q(y)   =>   QLinearConv(xq, .., wq, .., y_scale, y_zp [, bq])
    DQ(aq) , DQ(bq) -> MatMul -> Q(y)                  =>   QLinearMatMul(aq, .., bq, .., y_scale, y_zp)

Islands that do not match (a float consumer of the Conv output, a bias that is not an int32 DQ, Gemm)
keep their QDQ form, which runtimes execute as written.
"""
from __future__ import annotations

import onnx
from onnx import helper

from .common import ModelView
from .static import drop_unused_initializers


def _dq(view: ModelView, tensor: str):
    node = view.producer.get(tensor)
    return node if node is not None and node.op_type == "DequantizeLinear" and len(node.input) == 3 else None


def to_qoperator(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy with every matching island rewritten; returns (model, islands rewritten)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    view = ModelView(m)
    replaced: dict[str, onnx.NodeProto] = {}   # output of the Q that ends an island -> new node
    dropped: set[str] = set()                  # outputs of the float ops that go away
    for node in m.graph.node:
        if node.op_type not in ("Conv", "MatMul"):
            continue
        readers = view.consumers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or node.output[0] in view.outputs:
            continue
        q = readers[0]
        x, w = _dq(view, node.input[0]), _dq(view, node.input[1])
        if x is None or w is None or len(q.input) != 3:
            continue
        ins = list(x.input) + list(w.input) + list(q.input[1:])
        if node.op_type == "Conv":
            if len(node.input) > 2 and node.input[2]:
                b = _dq(view, node.input[2])
                bias = view.const(b.input[0]) if b is not None else None
                if bias is None or bias.dtype.name != "int32":
                    continue
                ins.append(b.input[0])
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            new = helper.make_node("QLinearConv", ins, list(q.output), name=view.fresh(f"{node.name or 'conv'}_QLinear"),
                                   **attrs)
        else:
            if view.const(w.input[1]) is not None and view.const(w.input[1]).ndim > 1:
                continue  # QLinearMatMul takes per-tensor or per-column (1-D) scales only
            new = helper.make_node("QLinearMatMul", ins, list(q.output), name=view.fresh(f"{node.name or 'matmul'}_QLinear"))
        replaced[q.output[0]] = new
        dropped.add(node.output[0])
    g = m.graph
    nodes = []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in replaced:
            nodes.append(replaced[n.output[0]])
        elif not (n.output and n.output[0] in dropped):
            nodes.append(n)
    # DQ nodes nobody reads any more go too
    while True:
        used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
        keep = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used]
        if len(keep) == len(nodes):
            break
        nodes = keep
    del g.node[:]
    g.node.extend(nodes)
    drop_unused_initializers(m)
    onnx.checker.check_model(m)
    return m, len(replaced)
