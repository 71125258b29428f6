"""Float-exact rewrites that let ONNX Runtime keep a quantized CNN in integer kernels.

ORT has no integer HardSigmoid, so in a QDQ model every HardSigmoid (MobileNetV3's HardSwish gate,
x * HardSigmoid(x)) runs as DequantizeLinear -> HardSigmoid -> QuantizeLinear: a float island of
three passes over the tensor between integer kernels. On PP-OCRv4 det those islands are 34 of the
35 QuantizeLinear ORT leaves (bench/results/int8_format_bench.md).

HardSigmoid(x) = clip(alpha * x + beta, 0, 1) is, on an NCHW tensor with C channels, exactly
    Clip(Conv(x, W = alpha, B = beta, group = C, 1x1), 0, 1)
and the static quantizer turns that depthwise 1x1 Conv into a QLinearConv whose output Q clamps
at 0 and (via its calibrated range, at most 1) at the top, so the Clip folds into it. HardSwish(x)
= x * HardSigmoid(x) (alpha 1/6, beta 1/2) becomes the same Conv + Clip followed by Mul(x, .),
which ORT runs as QLinearMul.

Only applied where the input is float32 with rank 4 and a known channel count (the Conv needs C).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .common import HEAD_BOUNDARY_OPS, ModelView, elem_types


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> channel count (dim 1) for float32 rank-4 tensors whose dim 1 is known."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001  (unknown shapes: nothing to rewrite)
        return {}
    out = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type == onnx.TensorProto.FLOAT and tt.HasField("shape") and len(tt.shape.dim) == 4 \
                and tt.shape.dim[1].HasField("dim_value") and tt.shape.dim[1].dim_value > 0:
            out[vi.name] = tt.shape.dim[1].dim_value
    return out


def _after_last_layer(view: ModelView) -> set[str]:
    """Outputs of nodes between the last weighted layer and a graph output: a HardSigmoid there
    stays as it is, so that its new Conv does not become the 'final layer' kept float in place of the
    real one (common.final_layers walks back the same way)."""
    seen, stack = set(), list(view.outputs)
    while stack:
        t = stack.pop()
        node = view.producer.get(t)
        if t in seen or node is None:
            continue
        seen.add(t)
        if node.op_type in HEAD_BOUNDARY_OPS and len(node.input) > 1 and view.const(node.input[1]) is not None:
            continue
        stack.extend(i for i in node.input if i)
    return seen


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


def hard_sigmoid_as_conv(model: onnx.ModelProto, exclude=()) -> tuple[onnx.ModelProto, int]:
    """A copy with every rewritable HardSigmoid / HardSwish in the depthwise-Conv form; returns
    (model, nodes rewritten). The result computes the same function in float. Nodes named in
    `exclude` (by name, label or op type, as --int8-exclude) stay as they are."""
    exclude = set(exclude)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    channels = _channels(m)
    types = elem_types(m)
    view = ModelView(m)
    replace: dict[str, list] = {}
    tail = _after_last_layer(view)
    for node in m.graph.node:
        if node.op_type not in ("HardSigmoid", "HardSwish") or node.domain not in ("", "ai.onnx"):
            continue
        if {node.name, node.op_type, f"{node.op_type}:{node.output[0]}"} & exclude:
            continue
        x = node.input[0]
        c = channels.get(x)
        if c is None or types.get(x) != onnx.TensorProto.FLOAT or node.output[0] in tail:
            continue
        alpha, beta = ((_attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)) if node.op_type == "HardSigmoid"
                       else (1.0 / 6.0, 0.5))
        w = view.add_init(f"{x}_hardsigmoid_w", np.full((c, 1, 1, 1), alpha, np.float32))
        b = view.add_init(f"{x}_hardsigmoid_b", np.full((c,), beta, np.float32))
        lo = view.add_init(f"{x}_hardsigmoid_0", np.array(0.0, np.float32))
        hi = view.add_init(f"{x}_hardsigmoid_1", np.array(1.0, np.float32))
        base = node.name or f"{node.op_type}_{x}"
        lin = view.fresh(f"{x}_hardsigmoid_linear")
        gate = node.output[0] if node.op_type == "HardSigmoid" else view.fresh(f"{x}_hardsigmoid")
        nodes = [helper.make_node("Conv", [x, w, b], [lin], name=view.fresh(f"{base}_as_conv"), group=c,
                                  kernel_shape=[1, 1]),
                 helper.make_node("Clip", [lin, lo, hi], [gate], name=view.fresh(f"{base}_clip"))]
        if node.op_type == "HardSwish":
            nodes.append(helper.make_node("Mul", [x, gate], [node.output[0]], name=view.fresh(f"{base}_mul")))
        replace[node.output[0]] = nodes
    if not replace:
        return m, 0
    out = []
    for n in m.graph.node:
        out.extend(replace.get(n.output[0], [n]) if n.output else [n])
    del m.graph.node[:]
    m.graph.node.extend(out)
    onnx.checker.check_model(m)
    return m, len(replace)
