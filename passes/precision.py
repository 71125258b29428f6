"""fp16: weights and compute in float16, numerically sensitive ops kept in float32.

Every node that touches float32 tensors is either converted (runs in float16) or blocked (stays
float32); a Cast is inserted wherever a tensor crosses between the two, once per tensor. Model
inputs/outputs stay float32 by default (a Cast at the boundary), as do tensors that If/Loop/Scan
bodies read from the outer graph. Float32 weights read by converted nodes become float16 copies
(values past the float16 range saturate to +-65504 and are counted in the report).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from .quantize.common import ModelView, elem_types
from graphopt.ir.op_traits import CONTROL_FLOW_OPS, RANDOM_OPS

from graphopt.ir.graph import subgraph_reads

from .quantize.static import drop_unused_initializers

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
# Ops whose output dtype comes from an attribute or a second operand, or whose float inputs are
# coordinates / counts that float16 cannot hold exactly: they stay float32.
STRUCTURAL_BLOCK = {"Range", "Resize", "Upsample", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum",
                    "ConstantOfShape", "EyeLike", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                    "CastLike", "SequenceConstruct", "SplitToSequence", "ConcatFromSequence"
                    } | RANDOM_OPS | CONTROL_FLOW_OPS
# Numerically sensitive: long reductions and exponentials overflow or lose precision in float16.
DEFAULT_BLOCK = {"LayerNormalization", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceSumSquare", "ReduceL2",
                 "ReduceLogSumExp", "ReduceLogSum", "Pow", "Exp", "Log", "Softplus", "GroupNormalization",
                 "SimplifiedLayerNormalization"}
TYPE_AGNOSTIC = {"Shape", "Size", "Cast"}  # read any dtype: their float inputs need no Cast


@dataclass
class Fp16Report:
    converted: int = 0
    blocked: dict = field(default_factory=dict)   # op type -> count kept float32
    casts: int = 0
    saturated_weights: int = 0
    size_before: int = 0
    size_after: int = 0
    agreement: dict = field(default_factory=dict)

    def to_text(self) -> str:
        blocked = ", ".join(f"{op} x{n}" for op, n in sorted(self.blocked.items())) or "none"
        return (f"fp16: {self.converted} node(s) in float16, kept float32: {blocked}; {self.casts} Cast(s) "
                f"inserted; {self.saturated_weights} weight value(s) saturated; size {self.size_before / 2**20:.2f}"
                f" MiB -> {self.size_after / 2**20:.2f} MiB"
                + "".join(f"\n  agreement with float: {k} = {v}" for k, v in self.agreement.items()))


def _has_subgraph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def convert_fp16(model: onnx.ModelProto, block=DEFAULT_BLOCK, keep_io_float32: bool = True
                 ) -> tuple[onnx.ModelProto, Fp16Report]:
    report = Fp16Report(size_before=model.ByteSize())
    m = onnx.ModelProto()
    m.CopyFrom(model)
    types = elem_types(m)
    view = ModelView(m)
    g = m.graph
    blocked_ops = set(block) | STRUCTURAL_BLOCK

    def is_float(t):
        return bool(t) and types.get(t) == FLOAT

    half_nodes = set()
    for n in g.node:
        touches = any(is_float(t) for t in list(n.input) + list(n.output))
        if not touches or n.op_type == "Constant":
            continue
        if n.op_type in blocked_ops or n.domain not in ("", "ai.onnx") or _has_subgraph(n):
            report.blocked[n.op_type] = report.blocked.get(n.op_type, 0) + 1
        elif n.op_type == "Cast" and not any(a.name == "to" and a.i == FLOAT for a in n.attribute):
            continue  # a Cast to something else reads any dtype
        else:
            half_nodes.add(n.output[0])
    must_f32 = subgraph_reads(g)
    if keep_io_float32:
        must_f32 |= {o.name for o in g.output}
    half_of: dict[str, str] = {}   # tensor -> name of its float16 version
    f32_of: dict[str, str] = {}    # tensor -> name of its float32 version
    consts = {t for t in view.inits} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    for t in consts:
        if is_float(t):
            f32_of[t] = t
    for t in {i.name for i in g.input} - consts:
        if is_float(t):
            (f32_of if keep_io_float32 else half_of)[t] = t
    out_nodes: list = []

    def cast(src, to, name):
        out_nodes.append(helper.make_node("Cast", [src], [name], name=view.fresh(f"{name}_Cast"), to=to))
        report.casts += 1
        return name

    def get_half(t):
        if t not in half_of:
            if t in consts and view.const(t) is not None:
                v = view.const(t).astype(np.float64)
                report.saturated_weights += int((np.abs(v) > 65504).sum())
                half_of[t] = view.add_init(f"{t}_fp16", np.clip(v, -65504, 65504).astype(np.float16))
            else:
                half_of[t] = cast(f32_of[t], HALF, view.fresh(f"{t}_fp16"))
        return half_of[t]

    def get_f32(t):
        if t not in f32_of:
            f32_of[t] = cast(half_of[t], FLOAT, view.fresh(f"{t}_fp32"))
        return f32_of[t]

    for n in g.node:
        half = n.output and n.output[0] in half_nodes
        if n.op_type not in TYPE_AGNOSTIC:
            for k, t in enumerate(n.input):
                if is_float(t):
                    n.input[k] = get_half(t) if half else get_f32(t)
        if half and n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to":
                    a.i = HALF
        out_nodes.append(n)
        for k, t in enumerate(n.output):
            if not is_float(t):
                continue
            if not half:
                f32_of[t] = t
            elif t in must_f32:  # the float32 name stays; the node writes a float16 twin
                n.output[k] = half_of[t] = view.fresh(f"{t}_fp16")
                f32_of[t] = cast(half_of[t], FLOAT, t)
            else:
                half_of[t] = t
    report.converted = len(half_nodes)
    del g.node[:]
    g.node.extend(out_nodes)
    if not keep_io_float32:
        for vi in list(g.input) + list(g.output):
            if vi.type.tensor_type.elem_type == FLOAT and vi.name not in view.inits:
                vi.type.tensor_type.elem_type = HALF
    _retype_graph_outputs(g, f32_of, half_of)
    del g.value_info[:]  # stale dtypes; ORT and the checker infer them again
    drop_unused_initializers(m)
    report.size_after = m.ByteSize()
    onnx.checker.check_model(m)
    return m, report


def _retype_graph_outputs(g, f32_of, half_of) -> None:
    """A graph output produced in float16 (only when I/O is float16) is declared float16, and one
    produced in float32 keeps FLOAT: declarations follow what the nodes now write."""
    for vi in g.output:
        t = vi.name
        if vi.type.tensor_type.elem_type in (FLOAT, HALF):
            vi.type.tensor_type.elem_type = FLOAT if f32_of.get(t) == t else HALF if half_of.get(t) == t \
                else vi.type.tensor_type.elem_type
