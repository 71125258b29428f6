"""int8 dynamic quantization: int8 per-channel symmetric weights, activations quantized at run time.

    MatMul(x, W)  ->  DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, x_zp) -> Cast -> Mul(x_s * w_s)
    Conv(x, W, b) ->  DynamicQuantizeLinear(x) -> ConvInteger(xq, Wq, x_zp)   -> Cast -> Mul -> Add(b)

This is the form ONNX Runtime fuses into DynamicQuantizeMatMul / its integer conv path. Weights are
symmetric int8 values stored as uint8 with zero point 128 (see below why).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .common import (
    ModelView,
    at_least_opset,
    dequantize_per_channel,
    elem_types,
    node_label,
    quantize_per_channel,
    select_nodes,
    splice_nodes,
    sqnr_db,
)
from .static import QuantReport, drop_unused_initializers

DYNAMIC_OPS = {"MatMul", "Gemm", "Conv"}


def _attr(node, name, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def apply_dynamic(model: onnx.ModelProto, ops=DYNAMIC_OPS, exclude=(), keep_final: bool = False
                  ) -> tuple[onnx.ModelProto, QuantReport]:
    model = at_least_opset(model, 11)
    view = ModelView(model)
    types = elem_types(model)
    sel = select_nodes(view, set(ops), exclude, keep_final)
    report = QuantReport(kept_float=dict(sel.kept_float))
    replace: dict[str, list] = {}   # first output of a replaced node -> new nodes
    for node in sel.quantize:
        label = node_label(node)
        w = view.const(node.input[1]) if len(node.input) > 1 else None
        reason = _refuse(node, w, types)
        if not reason and len(node.input) > 2 and node.input[2] and view.const(node.input[2]) is None:
            reason = "bias is not a constant"
        if reason:
            report.kept_float[label] = reason
            continue
        alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
        if node.op_type == "Gemm" and _attr(node, "transB", 0):
            w = w.T
        axis = 0 if node.op_type == "Conv" else 1
        q, scale = quantize_per_channel(w, axis)
        report.weights[label] = sqnr_db(w, dequantize_per_channel(q, scale, axis))
        bias = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        base = node.name or out
        xq, xs, xz = (view.fresh(f"{base}_{s}") for s in ("x_quantized", "x_scale", "x_zero_point"))
        acc, accf, sc, y = (view.fresh(f"{base}_{s}") for s in ("int32", "float", "scale", "scaled"))
        scale_shape = [1, -1] + [1] * (w.ndim - 2) if node.op_type == "Conv" else [-1]
        # int8 values stored as uint8 + 128: ORT's u8s8 kernels on AVX2 without VNNI saturate int16
        # pair sums (wrong results); the u8u8 path is exact, and the math is the same.
        wq = view.add_init(f"{node.input[1]}_uint8", (q.astype(np.int16) + 128).astype(np.uint8))
        wz = view.add_init(f"{node.input[1]}_zero_point", np.array(128, np.uint8))  # scalar: ConvInteger wants it
        ws = view.add_init(f"{node.input[1]}_scale", (scale * alpha).astype(np.float32).reshape(scale_shape))
        integer_op = "ConvInteger" if node.op_type == "Conv" else "MatMulInteger"
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} if node.op_type == "Conv" else {}
        new = [helper.make_node("DynamicQuantizeLinear", [node.input[0]], [xq, xs, xz], name=view.fresh(f"{base}_DynamicQuantizeLinear")),
               helper.make_node(integer_op, [xq, wq, xz, wz], [acc], name=view.fresh(f"{base}_{integer_op}"), **conv_attrs),
               helper.make_node("Cast", [acc], [accf], name=view.fresh(f"{base}_Cast"), to=onnx.TensorProto.FLOAT),
               helper.make_node("Mul", [xs, ws], [sc], name=view.fresh(f"{base}_scale_Mul")),
               helper.make_node("Mul", [accf, sc], [y if bias is not None else out], name=view.fresh(f"{base}_Mul"))]
        if bias is not None:
            b = bias.astype(np.float32) * (beta if node.op_type == "Gemm" else 1.0)
            if node.op_type == "Conv":
                b = b.reshape([1, -1] + [1] * (w.ndim - 2))
            new.append(helper.make_node("Add", [y, view.add_init(f"{node.input[2]}_bias", b)], [out],
                                        name=view.fresh(f"{base}_bias_Add")))
        replace[out] = new
        report.nodes.append(label)
    splice_nodes(model, replace)
    drop_unused_initializers(model)
    return model, report


def _refuse(node, w, types) -> str | None:
    """Why a node stays float (None when it can be quantized)."""
    if w is None:
        return "weight is not a constant"
    if w.dtype != np.float32:
        return "weight is not float32"
    if types.get(node.input[0]) != onnx.TensorProto.FLOAT:
        return "input is not float32"
    if node.op_type == "MatMul" and w.ndim != 2:
        return "MatMul weight is not 2-D"
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            return "Gemm with transA"
    if node.op_type == "Conv" and w.ndim < 3:
        return "Conv weight rank < 3"
    return None
