"""Bias correction for int8 weights (Nagel et al. 2019, "Data-Free Quantization", the empirical
variant): the rounding error of a layer's weights has a non-zero mean effect on its output,

    E[y_q - y] = (W_q - W) . E[x]      (per output channel)

which small depthwise kernels (9 weights per channel, each rounded on its channel's grid) and
inputs with a large mean (after ReLU / HardSwish) turn into a visible shift of every output. The
correction measures E[x] per input channel on the calibration data (float model, ONNX Runtime),
computes W_q exactly as the static quantizer will (same per-channel grid and bits), and subtracts
the shift from the float bias before quantization. Border pixels of a padded Conv see zeros, so the
correction is exact in the interior and approximate on the border.

Applies to Conv (any group count) and Gemm (alpha = beta = 1) with constant float weights; MatMul
has no bias input and is left alone.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphopt.verify import tensor_reader

from .common import ModelView, dequantize_per_channel, quantize_per_channel, weight_axis
from .static import drop_unused_initializers


def _attr(node, name, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _candidates(view: ModelView, names: set[str] | None):
    for node in view.model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        if names is not None and (node.name or f"{node.op_type}:{node.output[0]}") not in names:
            continue
        w = view.const(node.input[1])
        if w is None or w.dtype != np.float32:
            continue
        if node.op_type == "Gemm" and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0
                                        or _attr(node, "transA", 0) or w.ndim != 2):
            continue
        if node.op_type == "Conv" and w.ndim < 3:
            continue
        yield node, w


def _channel_means(model: onnx.ModelProto, tensors: list[str], feeds) -> dict[str, np.ndarray]:
    """Mean per channel (axis 1 for NC... tensors, the last axis for 2-D Gemm inputs) over the data."""
    read = tensor_reader(model, tensors)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        for t, v in zip(tensors, read(feed)):
            v = np.asarray(v, np.float64)
            flat = np.moveaxis(v, 1, -1).reshape(-1, v.shape[1]) if v.ndim > 2 else v.reshape(-1, v.shape[-1])
            sums[t] = sums.get(t, 0) + flat.sum(axis=0)
            counts[t] = counts.get(t, 0) + flat.shape[0]
    return {t: sums[t] / counts[t] for t in sums}


def _shift(node, w: np.ndarray, wq: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[y_q - y] per output channel, or None when the shapes do not line up."""
    delta = (wq - w).astype(np.float64)
    if node.op_type == "Gemm":
        d = delta.T if _attr(node, "transB", 0) else delta  # (K, N)
        return mean @ d if mean.shape[0] == d.shape[0] else None
    group = int(_attr(node, "group", 1))
    oc, icg = delta.shape[0], delta.shape[1]
    if mean.shape[0] != icg * group or oc % group:
        return None
    per_group_in = mean.reshape(group, icg)                     # input channels of each group
    summed = delta.reshape(oc, icg, -1).sum(axis=2)             # kernel taps summed: (OC, IC/g)
    groups_of = np.repeat(np.arange(group), oc // group)        # the group of each output channel
    return np.einsum("oi,oi->o", summed, per_group_in[groups_of])


def correct_biases(model: onnx.ModelProto, feeds, weight_bits: int = 8, names: set[str] | None = None
                   ) -> tuple[onnx.ModelProto, int]:
    """A copy of the float model whose Conv/Gemm biases absorb the mean output shift their int8
    weights will cause (weights quantized per channel with `weight_bits`, as apply_static does);
    `names` limits it to those node labels. Returns (model, layers corrected)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    view = ModelView(m)
    todo = list(_candidates(view, names))
    if not todo:
        return m, 0
    means = _channel_means(m, sorted({n.input[0] for n, _ in todo}), feeds)
    done = 0
    readers = {}
    for n in m.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    for node, w in todo:
        mean = means.get(node.input[0])
        if mean is None:
            continue
        axis = weight_axis(node, w)
        q, scale = quantize_per_channel(w, axis, bits=weight_bits)
        shift = _shift(node, w, dequantize_per_channel(q, scale, axis), mean)
        if shift is None or not np.all(np.isfinite(shift)):
            continue
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias = view.const(bias_name) if bias_name else np.zeros(shift.shape, np.float32)
        if bias is None or bias.dtype != np.float32 or bias.shape != shift.shape:
            continue
        if bias_name and (bias_name not in view.inits or readers.get(bias_name, 0) > 1):
            continue  # a shared or computed bias: leave it
        new = (bias.astype(np.float64) - shift).astype(np.float32)
        name = view.add_init(f"{node.output[0]}_corrected_bias", new)
        if bias_name:
            node.input[2] = name
        else:
            node.input.append(name)
        done += 1
    drop_unused_initializers(m)
    return m, done

