"""Pin a model's symbolic input dims to sizes before compiling (`graphopt compile --dim/--input-shape`).

With every dim of a Shape -> Gather -> Equal chain known, folding can finish it (and fold-if can
take the If it decides). The returned model declares the pinned sizes on its inputs; a dim name
given a size is pinned wherever the model names it (outputs, value_info: a symbolic name stands for
one size throughout a model). Unknown input or dim names, rank mismatches and sizes that contradict
a fixed dim are a UsageError (checked by sample_inputs.plan_inputs, the same rules as for the
random inputs of run / verify).
"""
from __future__ import annotations

import onnx

from graphopt.ir.sample_inputs import dim_name, plan_inputs


def pin_input_shapes(model: onnx.ModelProto, dims: dict | None = None, shapes: dict | None = None
                     ) -> onnx.ModelProto:
    """A copy of `model` whose inputs have the given sizes. dims: symbolic dim name -> size;
    shapes: input name -> full shape (fixes unnamed dims too)."""
    dims, shapes = dict(dims or {}), {k: list(v) for k, v in (shapes or {}).items()}
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    plan_inputs(model, dims, shapes, skip={vi.name for vi in inputs})  # validates, raises UsageError
    for vi in inputs:  # a full shape also sizes the dim names it covers
        if vi.name in shapes:
            for d, size in zip(vi.type.tensor_type.shape.dim, shapes[vi.name]):
                if dim_name(d):
                    dims.setdefault(dim_name(d), size)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in out.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if vi.name in shapes:
                d.dim_value = shapes[vi.name][axis]
            elif dim_name(d) in dims:
                d.dim_value = dims[dim_name(d)]
    for vi in list(out.graph.output) + list(out.graph.value_info):
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if dim_name(d) in dims:
                    d.dim_value = dims[dim_name(d)]
    return out
