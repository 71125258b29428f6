"""Fold scalar affine ops between quantized tensors into the quantization parameters.

    DQ(xq; s, z) -> Mul(c) -> Q -> DQ   ==  DQ(xq; s*c, z)          (c > 0)
    DQ(xq; s, z) -> Div(c) -> Q -> DQ   ==  DQ(xq; s/c, z)          (c > 0)
    DQ(xq; s, z) -> Add(b) -> Q -> DQ   ~=  DQ(xq; s, z - b/s)      (zero point rounded)

Multiplying or shifting a quantized tensor by a scalar changes only what its integers mean, not the
integers, so the op (a QLinearMul / QLinearAdd pass over the tensor in ORT, or a float island) goes
away. PP-OCRv4's backbone (PPLCNetV3) has such a "learnable affine block" (x * w + b, scalars)
after every activation: 34 Mul + 34 Add on the detector.

Mul/Div are exact (the new scale is s*c rounded to float32, as the float op rounds). Add moves the
zero point by b/s, rounded to an integer: an error of at most s/2, half a step of the input's own
grid, less than the Q it replaces could add (that Q rounds to its own grid and clamps to its
calibrated range); refused when the zero point would leave the integer type.
"""
from __future__ import annotations

import numpy as np
import onnx

from .common import ModelView
from .static import drop_unused_initializers

_LIMITS = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


def _scalar(view: ModelView, name: str):
    """A one-element float32 constant, or a one-element constant behind a DequantizeLinear (the
    8-bit copy U8S8 gives Add/Mul constants): its value as the float op sees it."""
    c = view.const(name)
    if c is not None:
        return float(c.reshape(-1)[0]) if c.size == 1 and c.dtype == np.float32 else None
    dq = view.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q, s = view.const(dq.input[0]), view.const(dq.input[1])
    z = view.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int32)
    if q is None or s is None or z is None or q.size != 1 or s.size != 1 or z.size != 1:
        return None
    return float((np.float32(q.reshape(-1)[0]) - np.float32(z.reshape(-1)[0])) * np.float32(s.reshape(-1)[0]))


def _per_tensor_dq(view: ModelView, name: str):
    """(dq node, scale, zero point array) when `name` is written by a per-tensor activation DQ."""
    dq = view.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) != 3 or view.const(dq.input[0]) is not None:
        return None
    s, z = view.const(dq.input[1]), view.const(dq.input[2])
    if s is None or z is None or s.size != 1 or z.size != 1:
        return None
    return dq, float(s.reshape(-1)[0]), z


def _new_params(op: str, c: float, s: float, z: np.ndarray, ztype: int):
    """(scale, zero point) of the folded DQ, or None when the fold is not legal."""
    if op in ("Mul", "Div"):
        if not (np.isfinite(c) and c > 0):
            return None
        scale = np.float32(s) * np.float32(c) if op == "Mul" else np.float32(s) / np.float32(c)
        return (np.array(scale, np.float32), z.copy()) if np.isfinite(scale) and scale > 0 else None
    shift = c / s  # Add: x + b = s * (q - z + b/s)
    if not np.isfinite(shift):
        return None
    zp = int(z.reshape(-1)[0]) - int(np.rint(shift))
    lo, hi = _LIMITS[ztype]
    if not lo <= zp <= hi:
        return None
    return np.array(s, np.float32), np.array(zp, dtype=z.dtype).reshape(z.shape)


def _fold_one(view: ModelView) -> bool:
    g = view.model.graph
    for node in g.node:
        if node.op_type not in ("Mul", "Div", "Add") or len(node.input) != 2 or node.output[0] in view.outputs:
            continue
        order = [0, 1] if node.op_type != "Div" else [0]  # Div: only x / c
        for k in order:
            act, const = node.input[k], node.input[1 - k]
            c = _scalar(view, const)
            src = _per_tensor_dq(view, act)
            readers = view.consumers.get(node.output[0], [])
            if c is None or src is None or len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
                continue
            dq, s, z = src
            ztype = view.inits[dq.input[2]].data_type if dq.input[2] in view.inits else None
            if ztype not in _LIMITS:
                continue
            params = _new_params(node.op_type, c, s, z, ztype)
            if params is None:
                continue
            q = readers[0]
            later = view.consumers.get(q.output[0], [])
            if q.output[0] in view.outputs or not later or any(r.op_type != "DequantizeLinear" for r in later):
                continue
            # keep the Q's own scale: the int32 bias of a layer reading this tensor was computed with it
            # (shared_ranges gives the Q the affine image of the input's range, so they agree)
            q_scale = view.const(q.input[1]) if len(q.input) > 1 else None
            q_zp = view.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
            if q_scale is None or q_scale.size != 1 or q_zp is None or q_zp.dtype != z.dtype or \
                    abs(float(q_scale.reshape(-1)[0]) - float(params[0])) > 1e-5 * float(params[0]):
                continue
            params = (q_scale.reshape(params[0].shape).astype(np.float32), params[1])
            sn = view.add_init(f"{node.output[0]}_folded_scale", params[0])
            zn = view.add_init(f"{node.output[0]}_folded_zero_point", params[1])
            for r in later:  # each DQ after the Q now reads the input's integers with the new meaning
                r.input[0], r.input[1] = dq.input[0], sn
                if len(r.input) > 2:
                    r.input[2] = zn
                else:
                    r.input.append(zn)
            g.node.remove(node)
            g.node.remove(q)
            view.refresh()
            return True
    return False


def fold_scalar_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of a QDQ model with scalar Mul/Div/Add between quantized tensors folded into the
    DequantizeLinear parameters; (model, ops folded). DQ nodes left without readers are removed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    view = ModelView(m)
    count = 0
    while _fold_one(view):
        count += 1
    if count:
        g = m.graph
        while True:  # DQs whose tensor nobody reads any more
            used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
            dead = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]
            if not dead:
                break
            for n in dead:
                g.node.remove(n)
        drop_unused_initializers(m)
    return m, count

