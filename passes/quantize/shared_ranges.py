"""One quantization range across ops that only move values, so ONNX Runtime runs them on int8.

ORT executes DQ -> Reshape/Transpose/MaxPool/Resize/Slice/... -> Q on the integers (dropping the
DQ and Q) only when both sides have the same scale and zero point. Their output holds a subset of
their input's values, so the input's calibrated range covers it: the output takes the input's range.
min/max calibration gives both sides the same range anyway for pure reshapes, but a clipping
estimator (percentile, entropy, mse) sees different histograms (MaxPool keeps the larger values,
Slice a part), and then every such op became a float island: on PP-OCRv4 rec with mse ranges, 7
more float ops and 0.74x instead of 0.54x float latency (bench/results/int8_bench.md).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# ops whose output values are a subset of their (first) input's values
VALUE_SUBSET_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "MaxPool", "Slice",
                    "Split", "Gather", "GatherElements", "DepthToSpace", "SpaceToDepth", "Tile", "Expand"}


def _keeps_values(node: onnx.NodeProto) -> bool:
    if node.op_type in VALUE_SUBSET_OPS:
        return True
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Resize":  # nearest picks input values; linear/cubic interpolate (cubic overshoots)
        return "mode" not in attrs or attrs["mode"].s in (b"nearest",)
    if node.op_type == "Pad":  # constant 0 padding: 0 is inside every range (activation_qparams keeps it)
        mode = attrs["mode"].s if "mode" in attrs else b"constant"
        return mode in (b"constant", b"edge", b"reflect") and (len(node.input) < 3 or not node.input[2])
    return False


def _scalar_affine(node: onnx.NodeProto, scalars: dict):
    """(activation input, function on a range) for Mul/Div/Add/Sub of an activation and a scalar."""
    if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
        return None
    a, b = node.input
    if node.op_type in ("Div", "Sub") and b not in scalars:
        return None
    if (a in scalars) == (b in scalars):
        return None
    x, c = (b, scalars[a]) if a in scalars else (a, scalars[b])
    op = {"Mul": lambda v: v * c, "Div": lambda v: v / c, "Add": lambda v: v + c, "Sub": lambda v: v - c}[node.op_type]
    return x, lambda r: tuple(sorted((op(r[0]), op(r[1]))))


def share_ranges(model: onnx.ModelProto, ranges: dict) -> dict:
    """A copy of `ranges` where each output of a value-keeping op with a calibrated input takes the
    input's range, and the output of a scalar Mul/Div/Add/Sub the affine image of its input's range
    (so that qdq_fold can replace the op by a new scale / zero point with the scale the next layer's
    int32 bias was computed with). In graph order, so chains share one range."""
    out = dict(ranges)
    scalars = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) == 1}
    for node in model.graph.node:
        if not node.input or not node.output or node.output[0] not in out:
            continue
        affine = _scalar_affine(node, scalars)
        if affine is not None and affine[0] in out:
            out[node.output[0]] = affine[1](out[affine[0]])
        elif node.input[0] in out and _keeps_values(node):
            for o in node.output:
                if o in out:
                    out[o] = out[node.input[0]]
    return out
