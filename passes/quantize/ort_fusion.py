"""What ONNX Runtime actually runs for a quantized model: its optimized graph, and the float ops
left between integer ops.

A QDQ model is only fast when ORT fuses each DQ -> op -> Q island into an integer kernel
(QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...). Where it does not, the op runs in float with
a DequantizeLinear before it and a QuantizeLinear after it: slower than the float model. So the
report asks ORT (SessionOptions.optimized_model_filepath, all optimizations, 1 thread) for the graph
it will execute and counts what it did.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import onnx

# Ops that work on quantized values (ORT's fused integer kernels and the boundary ops).
INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
               "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid",
               "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QAttention", "QEmbedLayerNormalization",
               "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "NhwcQLinearConv", "QLinearConvTranspose"}
# Ops that only move or pick values; ORT runs them on int8 tensors as well as on float ones.
DATA_MOVEMENT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "Slice", "Gather",
                     "Concat", "Split", "Pad", "Resize", "Identity", "Shape", "Cast", "ReorderInput", "ReorderOutput",
                     "DepthToSpace", "SpaceToDepth", "Tile", "Expand"}


@dataclass
class FusionSummary:
    integer_kernels: int = 0                       # QLinear*/QGemm/... nodes ORT will run
    quantize: int = 0                              # QuantizeLinear left as a separate op
    dequantize: int = 0                            # DequantizeLinear left as a separate op
    float_between: Counter = field(default_factory=Counter)  # float compute ops fed by a DQ and feeding a Q
    float_compute: int = 0                         # every float compute op in the graph

    def to_text(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in self.float_between.most_common(8)) or "none"
        return (f"ORT runs {self.integer_kernels} integer kernel(s), {self.quantize} QuantizeLinear, "
                f"{self.dequantize} DequantizeLinear; float ops between quantized ops: "
                f"{sum(self.float_between.values())} ({ops}); float compute ops in all: {self.float_compute}")


def ort_optimized(model: onnx.ModelProto, threads: int = 1) -> onnx.ModelProto:
    """The graph ORT executes for `model` (CPU provider, all optimizations)."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ort_optimized.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def summarize(optimized: onnx.ModelProto) -> FusionSummary:
    """Count integer kernels, leftover Q/DQ and float compute ops lying on a path DQ -> ... -> Q
    (those are the float islands that cost a dequantize + requantize each)."""
    g = optimized.graph
    inits = {t.name for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}

    def walk(starts, step):
        seen, stack = set(), list(starts)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            stack.extend(step(n))
        return seen

    # downstream of an activation DequantizeLinear (not a weight DQ), and upstream of a QuantizeLinear
    act_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    after_dq = walk([c for d in act_dq for c in consumers.get(d.output[0], [])],
                    lambda n: [c for o in n.output for c in consumers.get(o, []) if c.op_type != "QuantizeLinear"])
    q_nodes = [n for n in g.node if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")]
    before_q = walk([producer[q.input[0]] for q in q_nodes if q.input[0] in producer],
                    lambda n: [producer[i] for i in n.input if i in producer and producer[i].op_type != "DequantizeLinear"])
    s = FusionSummary()
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            s.quantize += 1
        elif n.op_type == "DequantizeLinear":
            s.dequantize += 1 if n.input[0] not in inits else 0
        elif n.op_type in INTEGER_OPS:
            s.integer_kernels += 1
        elif n.op_type not in DATA_MOVEMENT_OPS and n.op_type != "Constant":
            s.float_compute += 1
            if id(n) in after_dq and id(n) in before_q:
                s.float_between[n.op_type] += 1
    return s


def fusion_summary(model: onnx.ModelProto) -> FusionSummary | None:
    """summarize(ort_optimized(model)), or None when ONNX Runtime is not installed or refuses it."""
    try:
        return summarize(ort_optimized(model))
    except ImportError:
        return None
    except Exception:  # noqa: BLE001  (a model ORT cannot load has no fusion summary; the caller says so)
        return None
