"""int8 static quantization in QDQ form (S8S8: int8 activations, int8 per-channel symmetric weights).

plan_static() says which activation tensors need a calibrated range; apply_static() inserts
QuantizeLinear -> DequantizeLinear pairs on them, replaces weights by int8 + DequantizeLinear and
biases by int32 + DequantizeLinear (scale = x_scale * w_scale, as QLinearConv expects), so ONNX
Runtime fuses the islands into QLinearConv / QLinearMatMul / QGemm kernels.
Relu (and Clip with min 0) right after a quantized node is dropped: the Q that follows it has a zero
point at -128 (its range starts at 0), so saturation performs exactly the same clamp.
A Conv/ConvTranspose/Gemm left float gets no Q after it, else ORT would quantize it itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from graphopt.ir.graph import subgraph_reads

from .common import (WEIGHTED_OPS, at_least_opset, ModelView, activation_qparams, dequantize_per_channel, elem_types,
                     node_label, quantize_per_channel, select_nodes, sqnr_db, weight_axis)

# Ops that run in int8 in ONNX Runtime when surrounded by Q/DQ (besides the weighted ones).
ACTIVATION_OPS = {"Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip"}
DEFAULT_OPS = set(WEIGHTED_OPS) | ACTIVATION_OPS


@dataclass
class StaticPlan:
    tensors: list[str]                    # activation tensors that need a calibrated range
    nodes: list[str]                      # labels of nodes that will run quantized
    kept_float: dict[str, str] = field(default_factory=dict)


def _is_relu_like(view: ModelView, node: onnx.NodeProto) -> bool:
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
        lo = view.const(node.input[1])
        return lo is not None and float(lo) == 0.0
    return False


def _selected(view: ModelView, types: dict, ops, exclude, keep_final, const_operands: bool = False):
    sel = select_nodes(view, set(ops), exclude, keep_final)
    chosen = []
    for node in sel.quantize:
        data = [i for i in node.input[:2] if i]
        if node.op_type in WEIGHTED_OPS:
            w = view.const(node.input[1]) if len(node.input) > 1 else None
            if types.get(node.input[0]) != onnx.TensorProto.FLOAT:
                sel.kept_float[node_label(node)] = "input is not float32"
                continue
            if w is None and node.op_type != "MatMul":
                sel.kept_float[node_label(node)] = "weight is not a constant"
                continue
            if w is not None and w.dtype != np.float32:
                sel.kept_float[node_label(node)] = "weight is not float32"
                continue
        elif node.op_type == "Clip" and not _is_relu_like(view, node):
            sel.kept_float[node_label(node)] = "Clip with a non-zero floor"
            continue
        elif node.op_type in ("Add", "Mul"):
            # two activations (a residual join, a gate) or an activation and a float32 constant, which
            # gets an 8-bit per-tensor copy so that ORT can run the op as QLinearAdd / QLinearMul
            consts = [view.const(i) for i in data if view.const(i) is not None]
            if len(data) < 2 or len(consts) > 1 or any(c.dtype != np.float32 for c in consts):
                sel.kept_float[node_label(node)] = "constant operands that are not one float32 tensor"
                continue
            if consts and not const_operands:
                sel.kept_float[node_label(node)] = "has a constant operand (quantized only with uint8 activations)"
                continue
        if any(types.get(i) != onnx.TensorProto.FLOAT for i in node.input if i and view.const(i) is None
               and not (node.op_type == "Clip")):
            sel.kept_float[node_label(node)] = "an input is not float32"
            continue
        chosen.append(node)
    return chosen, sel.kept_float


def _activation_inputs(view: ModelView, node: onnx.NodeProto) -> list[str]:
    if node.op_type == "Clip":
        return [node.input[0]]
    if node.op_type in ("Conv", "Gemm"):
        return [node.input[0]]
    return [i for i in node.input if i and view.const(i) is None]


def plan_static(model: onnx.ModelProto, ops=DEFAULT_OPS, exclude=(), keep_final: bool = True,
                const_operands: bool = False) -> StaticPlan:
    view = ModelView(model)
    types = elem_types(model)
    chosen, kept = _selected(view, types, ops, exclude, keep_final, const_operands)
    tensors: list[str] = []
    for node in chosen:
        for t in _activation_inputs(view, node) + [o for o in node.output[:1]]:
            if t not in tensors:
                tensors.append(t)
    return StaticPlan(tensors, [node_label(n) for n in chosen], kept)


@dataclass
class QuantReport:
    weights: dict[str, float] = field(default_factory=dict)       # node -> weight SQNR dB
    activations: dict[str, float] = field(default_factory=dict)   # tensor -> activation SQNR dB
    nodes: list[str] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)
    removed_relus: int = 0


def apply_static(model: onnx.ModelProto, ranges: dict, ops=DEFAULT_OPS, exclude=(), keep_final: bool = True,
                 activations: str = "int8", const_operands: bool = False,
                 weight_bits: int | None = None) -> tuple[onnx.ModelProto, QuantReport]:
    """A QDQ copy of `model`; `ranges` maps activation tensor -> (lo, hi) from calibration.
    activations "uint8" gives U8S8 (ORT on AVX2 without VNNI fuses more of those islands);
    const_operands also quantizes Add/Mul with a constant operand (ORT runs them as QLinearAdd/Mul:
    faster with U8S8, a little less accurate).
    weight_bits: range of the int8 weights; by default 8, and 7 (values in [-64, 63]) with uint8
    activations. The U8S8 kernels of x86 without VNNI add pairs of u8*s8 products in int16 with
    saturation (vpmaddubsw): 255*127*2 overflows, 255*63*2 does not. On PP-OCR cls/rec/det that
    took the cosine agreement of the U8S8 models with the float model from 0.830/0.805/0.976
    (8-bit) to 0.965/0.897/0.978 (7-bit; ORT's U8S8 models: 0.864/0.812/0.976), same speed."""
    if weight_bits is None:
        weight_bits = 7 if activations == "uint8" else 8
    if not 2 <= weight_bits <= 8:
        raise ValueError(f"weight_bits must be within 2..8, got {weight_bits}")
    model = at_least_opset(model, 13)  # per-axis DequantizeLinear
    view = ModelView(model)
    types = elem_types(model)
    chosen, kept = _selected(view, types, ops, exclude, keep_final, const_operands)
    report = QuantReport(kept_float=kept)
    chosen_keys = {n.output[0] for n in chosen}
    g = model.graph
    if activations not in ("int8", "uint8"):
        raise ValueError(f"activations must be int8 or uint8, got {activations}")
    qparams = {t: activation_qparams(*ranges[t], unsigned=activations == "uint8") for t in ranges}

    # 1. Relu/Clip(0, ..) fed only by a quantized node: drop it, the Q on its output clamps instead.
    alias: dict[str, str] = {}  # relu output -> the tensor that now carries its value before Q
    for node in list(chosen):
        if not _is_relu_like(view, node):
            continue
        src = node.input[0]
        prod = view.producer.get(src)
        if (prod is None or prod.output[0] not in chosen_keys or prod.op_type in ("Relu", "Clip")
                or len(view.consumers.get(src, [])) != 1 or src in view.outputs
                or node.output[0] in view.outputs or node.output[0] not in qparams):
            continue
        alias[node.output[0]] = src
        g.node.remove(node)
        chosen = [n for n in chosen if n.output[0] != node.output[0]]
        report.removed_relus += 1
    view.refresh()
    stands_for = {s: r for r, s in alias.items()}  # tensor feeding a dropped Relu -> the Relu's output

    # 2. Q -> DQ on every activation tensor a quantized node reads or writes.
    wanted: list[str] = []
    for node in chosen:
        for t in _activation_inputs(view, node) + list(node.output[:1]):
            t = stands_for.get(t, t)  # a dropped Relu's output stands in
            if t not in wanted and t in qparams:
                wanted.append(t)
    unquantized = _outputs_of_float_layers(view, {n.output[0] for n in chosen}, set(wanted))
    wanted = [t for t in wanted if t not in unquantized]
    source_of = {n.output[0]: n.input[0] for n in chosen}  # data input before step 2 renames it
    new_nodes: dict[str, list] = {}
    dq_name: dict[str, str] = {}
    for t in wanted:
        src = alias.get(t, t)
        scale, zp = qparams[t]
        s = view.add_init(f"{t}_scale", scale)
        z = view.add_init(f"{t}_zero_point", zp)
        q_out, dq_out = view.fresh(f"{t}_quantized"), view.fresh(f"{t}_dequantized")
        q = helper.make_node("QuantizeLinear", [src, s, z], [q_out], name=view.fresh(f"{t}_QuantizeLinear"))
        dq = helper.make_node("DequantizeLinear", [q_out, s, z], [dq_out], name=view.fresh(f"{t}_DequantizeLinear"))
        dq_name[t] = dq_out
        prod = view.producer.get(src)
        new_nodes.setdefault(prod.output[0] if prod is not None else "", []).extend([q, dq])
    for node in g.node:
        for k, i in enumerate(node.input):
            if i in dq_name and node.op_type != "QuantizeLinear":
                node.input[k] = dq_name[i]
    for t, src in alias.items():  # readers of a dropped Relu's output read its DQ (or the raw value)
        for node in g.node:
            for k, i in enumerate(node.input):
                if i == t and node.op_type != "QuantizeLinear":
                    node.input[k] = dq_name.get(t, src)
    for o in g.output:
        if o.name in alias:  # cannot happen (step 1 refuses outputs) but keep the graph sound
            raise AssertionError(o.name)

    # 3. 8-bit constants of Add/Mul (activation type, per tensor), int8 weights, int32 biases, each
    #    behind a DequantizeLinear.
    for node in chosen:
        if node.op_type not in ("Add", "Mul"):
            continue
        for k, name in enumerate(node.input):
            c = view.const(name)
            if c is None:
                continue
            scale, zp = activation_qparams(float(c.min(initial=0.0)), float(c.max(initial=0.0)),
                                           unsigned=activations == "uint8")
            lo = 0 if activations == "uint8" else -128
            cq = np.clip(np.rint(c / scale) + zp.astype(np.float32), lo, lo + 255).astype(zp.dtype)
            qn, sn, zn = (view.add_init(f"{name}_{s}", v) for s, v in (("quantized", cq), ("scale", scale),
                                                                          ("zero_point", zp)))
            out = view.fresh(f"{name}_dequantized")
            new_nodes.setdefault(node.output[0], []).insert(0, helper.make_node(
                "DequantizeLinear", [qn, sn, zn], [out], name=view.fresh(f"{name}_DequantizeLinear")))
            node.input[k] = out
    for node in chosen:
        if node.op_type not in WEIGHTED_OPS or view.const(node.input[1]) is None:
            continue
        w = view.const(node.input[1])
        axis = weight_axis(node, w)
        q, scale = quantize_per_channel(w, axis, bits=weight_bits)
        report.weights[node_label(node)] = sqnr_db(w, dequantize_per_channel(q, scale, axis))
        qn = view.add_init(f"{node.input[1]}_int8", q)
        sn = view.add_init(f"{node.input[1]}_scale", scale)
        zn = view.add_init(f"{node.input[1]}_zero_point", np.zeros_like(q, shape=scale.shape))
        wout = view.fresh(f"{node.input[1]}_dequantized")
        attrs = {"axis": axis} if axis is not None and scale.ndim else {}
        new_nodes.setdefault(node.output[0], []).insert(0, helper.make_node(
            "DequantizeLinear", [qn, sn, zn], [wout], name=view.fresh(f"{node.input[1]}_DequantizeLinear"), **attrs))
        x = source_of[node.output[0]]
        xt = stands_for.get(x, x)
        node.input[1] = wout
        bias = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None and xt in qparams and bias.ndim == 1 and bias.size == scale.size * (scale.ndim or 1) \
                and axis in (0, 1) and (node.op_type != "MatMul"):
            bscale = (qparams[xt][0] * scale).astype(np.float32).reshape(-1)
            bscale = np.broadcast_to(bscale, bias.shape).astype(np.float32).copy()
            bq = np.clip(np.rint(bias.astype(np.float64) / bscale), -2**31, 2**31 - 1).astype(np.int32)
            bn = view.add_init(f"{node.input[2]}_int32", bq)
            bs = view.add_init(f"{node.input[2]}_scale", bscale)
            bz = view.add_init(f"{node.input[2]}_zero_point", np.zeros_like(bq))
            bout = view.fresh(f"{node.input[2]}_dequantized")
            new_nodes[node.output[0]].insert(0, helper.make_node(
                "DequantizeLinear", [bn, bs, bz], [bout], name=view.fresh(f"{node.input[2]}_DequantizeLinear"), axis=0))
            node.input[2] = bout
        report.nodes.append(node_label(node))
    report.nodes += [node_label(n) for n in chosen if n.op_type not in WEIGHTED_OPS]
    _splice(model, new_nodes)
    _outputs_written_by_dq(model)
    drop_unused_initializers(model)
    return model, report


def _outputs_written_by_dq(model: onnx.ModelProto) -> None:
    """A quantized layer writing a graph output: its Q -> DQ hung off the output, which then had two
    readers (the graph and the Q), and ORT ran the layer in float. Let the DQ write the graph output
    instead, so ORT fuses the layer (QLinearConv -> DequantizeLinear, as ORT's own quantizer does)."""
    g = model.graph
    view = ModelView(model)
    for out in g.output:
        prod, readers = view.producer.get(out.name), view.consumers.get(out.name, [])
        if prod is None or len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        q = readers[0]
        dqs = view.consumers.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or q.output[0] in view.outputs:
            continue
        inner, old = view.fresh(f"{out.name}_before_quantize"), dqs[0].output[0]
        prod.output[list(prod.output).index(out.name)] = inner
        q.input[0] = inner
        dqs[0].output[0] = out.name
        for node in g.node:
            for k, i in enumerate(node.input):
                if i == old:
                    node.input[k] = out.name


# Layers that ONNX Runtime (>= 1.20, WeightBiasQuantization) quantizes by itself, per tensor, when
# their input comes from a DequantizeLinear and their output reaches a QuantizeLinear with no branch
# (Relu/Clip allowed in between).
ORT_SELF_QUANTIZED = ("Conv", "ConvTranspose", "Gemm")


def _outputs_of_float_layers(view: ModelView, chosen_outputs: set, wanted: set) -> set[str]:
    """Tensors that must get no Q -> DQ so that a Conv/ConvTranspose/Gemm left float (excluded, the
    classifier, an op we do not quantize) stays float in ONNX Runtime: with a DQ before it and a Q
    after it (possibly past a Relu/Clip), ORT quantizes its weight per tensor itself, which is less
    accurate than the user asked for and, on PP-OCR det, slower than a per-channel QLinearConv."""
    skip = set()
    for node in view.model.graph.node:
        if node.op_type not in ORT_SELF_QUANTIZED or not node.input or node.output[0] in chosen_outputs \
                or node.input[0] not in wanted:
            continue
        t = node.output[0]
        while True:  # the Q would sit on the first quantized tensor of the no-branch path
            skip.add(t)
            readers = view.consumers.get(t, [])
            if len(readers) != 1 or readers[0].op_type not in ("Relu", "Clip") or t in view.outputs:
                break
            t = readers[0].output[0]
    return skip & wanted


def _splice(model: onnx.ModelProto, new_nodes: dict) -> None:
    """Place new nodes: Q/DQ right after the producer of their tensor (graph inputs first), weight DQs
    right before their node; the resulting order stays topological."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    out = list(new_nodes.get("", []))
    for node in g.node:
        mine = new_nodes.get(node.output[0], []) if node.output else []
        before = [n for n in mine if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        after = [n for n in mine if n.op_type != "DequantizeLinear" or n.input[0] not in inits]
        out.extend(before)
        out.append(node)
        out.extend(after)
    del g.node[:]
    g.node.extend(out)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    used |= subgraph_reads(g)
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    inputs = [i for i in g.input if i.name in used or i.name not in {t.name for t in keep}]
    del g.input[:]
    g.input.extend(inputs)


def activation_sqnr(float_values: dict, ranges: dict, activations: str = "int8") -> dict[str, float]:
    """SQNR of fake-quantizing sample activations with their calibrated parameters."""
    out = {}
    lo = 0 if activations == "uint8" else -128
    for t, x in float_values.items():
        if t not in ranges:
            continue
        scale, zp = activation_qparams(*ranges[t], unsigned=activations == "uint8")
        q = np.clip(np.rint(x / scale) + zp.astype(np.float32), lo, lo + 255)
        out[t] = sqnr_db(x, (q - zp.astype(np.float32)) * scale)
    return out
