"""A refinement of ONNX shape inference for infer-shapes (passes/fold.py): Slice with computed ends.

ONNX infers a Slice whose starts/ends are not initializers as rank-only, forgetting even the axes it
does not cut. In exported BERTs (position_ids[:, :seq], token_type_ids[:, :seq]) that [1, ?] slice,
broadcast against [batch, seq], makes every later value's batch dim a fresh unk__, so no two
residual inputs are known to share a shape and skip-LayerNorm fusion refuses them.
"""
from __future__ import annotations

import numpy as np
import onnx


def refine_slices(model: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """`inferred` (ONNX's result for `model`), with the axes each main-graph Slice does not cut taken
    from its input and inference run again from there; the cut axes stay unknown (their length is
    min(end, dim) - start, nothing a name could say)."""
    graph = inferred.graph
    infos = {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    consts = {t.name: t for t in graph.initializer}
    refined = []
    for node in graph.node:
        if node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
            continue
        data, out = infos.get(node.input[0]), infos.get(node.output[0])
        dims_in = _dims(data) if data is not None else _initializer_dims(consts.get(node.input[0]))
        dims_out = _dims(out)
        if dims_in is None or dims_out is None or len(dims_in) != len(dims_out):
            continue
        axes = _sliced_axes(node, consts, len(dims_in))
        if axes is None:
            continue
        keep = [i for i in range(len(dims_in)) if i not in axes and not _same_dim(dims_in[i], dims_out[i])]
        if keep and all(not dims_out[i].HasField("dim_value") for i in keep):
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(out)
            for i, dim in enumerate(vi.type.tensor_type.shape.dim):
                if i in keep:
                    dim.CopyFrom(dims_in[i])
                elif dim.dim_param.startswith("unk__"):  # the first run's invention: let the next name it
                    dim.ClearField("dim_param")
            refined.append(vi)
    if not refined:
        return inferred
    # inference keeps a value_info's dims over what it infers: start again from the model as given
    # (its declared shapes are facts), not from the first run's unk__ dims, so the refined ones flow
    names = {vi.name for vi in refined}
    again = onnx.ModelProto()
    again.CopyFrom(model)
    kept = [vi for vi in again.graph.value_info if vi.name not in names]
    del again.graph.value_info[:]
    again.graph.value_info.extend(kept + refined)
    try:
        return onnx.shape_inference.infer_shapes(again, strict_mode=False, data_prop=True)
    except Exception:  # best effort, as the first run
        return inferred


def _dims(vi):
    if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return list(vi.type.tensor_type.shape.dim)


def _initializer_dims(t):
    if t is None:
        return None
    shape = onnx.TensorShapeProto()
    for d in t.dims:
        shape.dim.add().dim_value = d
    return list(shape.dim)


def _same_dim(a, b) -> bool:
    if a.HasField("dim_value") or b.HasField("dim_value"):
        return a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value == b.dim_value
    return bool(a.dim_param) and a.dim_param == b.dim_param


def _sliced_axes(node: onnx.NodeProto, consts: dict, rank: int) -> set[int] | None:
    """The axes a Slice (opset 10+) may change: its constant `axes` input, else the first len(starts)."""
    if len(node.input) > 3 and node.input[3]:
        if node.input[3] not in consts:
            return None
        axes = onnx.numpy_helper.to_array(consts[node.input[3]]).reshape(-1).tolist()
        if any(not -rank <= a < rank for a in axes):
            return None
        return {int(a) % rank for a in axes}
    starts = consts.get(node.input[1])
    if starts is None:  # the count of starts would do, but inference has it only when constant
        return None
    return set(range(int(np.prod(starts.dims)) if starts.dims else 1))
