"""Ops run as a nested plan: calls of a model's local functions (when inline.py leaves them
as calls) and ops without a kernel whose schema defines them as a function of other ops.

Both build their body's plan through `build_plan(nodes, inputs, outputs, opsets, ctx)`, given by
build.py, so this module does not import the plan it is part of."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphopt.errors import Unsupported
from graphopt.ir.attributes import fill_default_attributes, instantiate_function, opset_map
from graphopt.runtime.io_spec import elem_type_of


class LocalFunctionCall:
    """A call of a function defined in the model: its body, bound to the caller's attributes."""

    def __init__(self, fproto, node, opsets, ctx, build_plan):
        body_opsets = {**opsets, **opset_map(fproto.opset_import)}
        nodes = instantiate_function(fproto, node)
        self.plan = build_plan(nodes, list(fproto.input), list(fproto.output), body_opsets, ctx)

    def __call__(self, inputs, attrs):
        return self.plan.run(inputs)


class SchemaFunctionCall:
    """An op without a kernel whose schema defines it as a function of other ops: run that body.
    Context-dependent bodies depend on input types, so they are built per input signature."""

    def __init__(self, schema, node, opset, opsets, ctx, build_plan):
        self.schema, self.opset, self.opsets, self.ctx = schema, opset, opsets, ctx
        self.build_plan = build_plan
        self.node = fill_default_attributes(node, schema)
        self.plans = {}
        if schema.has_function:
            self.plans[None] = self._build(self._function_proto(None))

    def _function_proto(self, types):
        s = self.schema
        if types is None:
            versions = [v for v in s.function_opset_versions if v <= self.opset] or [s.since_version]
            data = s.get_function_with_opset_version(max(versions))
        else:
            versions = [v for v in s.context_dependent_function_opset_versions if v <= self.opset]
            ver = max(versions) if versions else s.since_version
            data = s.get_context_dependent_function_with_opset_version(
                ver, self.node.SerializeToString(), [t.SerializeToString() for t in types])
        f = onnx.FunctionProto()
        f.ParseFromString(data)
        return f

    def _build(self, fproto):
        nodes = instantiate_function(fproto, self.node)
        body_opsets = {**self.opsets, **opset_map(fproto.opset_import)}
        return self.build_plan(nodes, list(fproto.input), list(fproto.output), body_opsets, self.ctx)

    def __call__(self, inputs, attrs):
        plan = self.plans.get(None)
        if plan is None:
            key = tuple((None if x is None else (np.asarray(x).dtype.str, np.ndim(x))) for x in inputs)
            plan = self.plans.get(key)
            if plan is None:
                types = [onnx.TypeProto() if x is None else helper.make_tensor_type_proto(
                    elem_type_of(np.asarray(x).dtype), np.shape(x)) for x in inputs]
                plan = self.plans[key] = self._build(self._function_proto(types))
                if self.ctx.unsupported:
                    raise Unsupported(f"function body of {self.node.op_type} uses ops without kernels: "
                                      f"{sorted(self.ctx.unsupported)}")
        return plan.run(inputs)

