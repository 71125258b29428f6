"""int4 weight-only quantization of MatMul/Gemm weights, symmetric, one scale per block of K.

    target onnx: W -> DequantizeLinear(int4 W, scale[K/bs, N], axis=0, block_size=bs) -> MatMul  (opset 21)
    target ort : MatMul(x, W) -> com.microsoft MatMulNBits(x, packed uint4 W^T, scales)   (ORT contrib op)

Activations stay float; the win is weight size (about 1/7 of float32) and, with MatMulNBits,
memory bandwidth. Int4 values round half to even and saturate to [-8, 7] as QuantizeLinear does.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .common import (
    ModelView,
    at_least_opset,
    node_label,
    select_nodes,
    splice_nodes,
    sqnr_db,
)
from .gptq import gptq_quantize
from .static import QuantReport, drop_unused_initializers


def quantize_blocks(w: np.ndarray, block: int):
    """w [K, N] -> (q int8 values in [-8, 7] shaped [K, N], scale [ceil(K/block), N])."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    amax = np.abs(padded.reshape(blocks, block, n)).max(axis=1)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(padded.reshape(blocks, block, n) / scale[:, None, :]), -8, 7).reshape(-1, n)[:k]
    return q.astype(np.int8), scale


def _weight(view: ModelView, node):
    """The [K, N] weight of a MatMul / Gemm (transB undone), or a reason it has none."""
    w = view.const(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.dtype != np.float32 or w.ndim != 2:
        return None, "weight is not a constant 2-D float32 tensor"
    if node.op_type == "Gemm":
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if at.get("transA", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
            return None, "Gemm with transA/alpha/beta"
        if at.get("transB", 0):
            w = w.T
    return np.ascontiguousarray(w), None


def apply_int4(model: onnx.ModelProto, block_size: int = 32, target: str = "onnx", exclude=(),
               keep_final: bool = False, hessians: dict | None = None,
               act_order: bool = False) -> tuple[onnx.ModelProto, QuantReport]:
    """hessians (node label -> X^T X of its input, gptq.collect_hessians): those layers are rounded by
    GPTQ (gptq.py), the others to nearest."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block size must be a power of two >= 16, got {block_size}")
    model = at_least_opset(model, 21 if target == "onnx" else 13)
    view = ModelView(model)
    sel = select_nodes(view, {"MatMul", "Gemm"}, exclude, keep_final)
    report = QuantReport(kept_float=dict(sel.kept_float))
    replace: dict[str, list] = {}
    for node in sel.quantize:
        w, reason = _weight(view, node)
        if reason:
            report.kept_float[node_label(node)] = reason
            continue
        k, n = w.shape
        h = (hessians or {}).get(node_label(node))
        q, scale = quantize_blocks(w, block_size) if h is None else gptq_quantize(w, h, block_size, act_order)
        deq = (q.astype(np.float32).reshape(-1, n) * np.repeat(scale, block_size, axis=0)[:k])
        report.weights[node_label(node)] = sqnr_db(w, deq)
        base = node.name or node.output[0]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        mm_out = view.fresh(f"{base}_matmul") if bias else node.output[0]
        if target == "ort":
            new = [_matmul_nbits(view, node.input[0], q, scale, k, n, block_size, mm_out, base)]
        else:
            qn = view.fresh(f"{node.input[1]}_int4")
            model.graph.initializer.append(helper.make_tensor(qn, TensorProto.INT4, [k, n], q.ravel().tolist()))
            sn = view.add_init(f"{node.input[1]}_scale", scale)
            wd = view.fresh(f"{node.input[1]}_dequantized")
            new = [helper.make_node("DequantizeLinear", [qn, sn], [wd], name=view.fresh(f"{base}_DequantizeLinear"),
                                    axis=0, block_size=block_size),
                   helper.make_node("MatMul", [node.input[0], wd], [mm_out], name=view.fresh(f"{base}_MatMul"))]
        if bias:
            new.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=view.fresh(f"{base}_bias_Add")))
        replace[node.output[0]] = new
        report.nodes.append(node_label(node))
    splice_nodes(model, replace)
    if target == "ort" and report.nodes and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    drop_unused_initializers(model)
    return model, report


def _matmul_nbits(view: ModelView, x: str, q: np.ndarray, scale: np.ndarray, k: int, n: int, block: int,
                  out: str, base: str):
    """MatMulNBits wants W^T as uint4 (value + 8, the default zero point), two per byte, low nibble
    first, shaped [N, blocks, block/2]; scales [N * blocks]."""
    blocks = scale.shape[0]
    u = np.zeros((blocks * block, n), np.uint8)
    u[:k] = (q.astype(np.int16) + 8).astype(np.uint8)
    ut = u.T.reshape(n, blocks, block)
    packed = (ut[..., 0::2] | (ut[..., 1::2] << 4)).astype(np.uint8)
    b = view.add_init(f"{base}_nbits_weight", packed)
    s = view.add_init(f"{base}_nbits_scale", np.ascontiguousarray(scale.T).reshape(-1).astype(np.float32))
    return helper.make_node("MatMulNBits", [x, b, s], [out], name=view.fresh(f"{base}_MatMulNBits"),
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
