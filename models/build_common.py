"""Helpers the model build scripts share: seeded weights, compact node/model constructors.

Every models/<name>/build.py defines `build() -> onnx.ModelProto` and may define
`inputs(rng) -> dict` (golden inputs; default: graphopt.verify.random_feed with DIMS),
`DIMS` (values for symbolic dims) and `save(model, path)` (default: onnx.save_model).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def weight(r: np.random.Generator, name: str, *shape, scale: float | None = None) -> onnx.TensorProto:
    """A float32 initializer, roughly variance-preserving so activations stay O(1)."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
    return numpy_helper.from_array((r.standard_normal(shape) * scale).astype(np.float32), name)


def const(name: str, value, dtype=None) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def ints(name: str, *values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def node(op: str, inputs, outputs, name: str | None = None, domain: str = "", **attrs) -> onnx.NodeProto:
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    return helper.make_node(op, inputs, outputs, name=name or f"{op}_{outputs[0]}", domain=domain or None, **attrs)


def linear(r: np.random.Generator, prefix: str, x: str, fan_in: int, fan_out: int, inits: list, nodes: list) -> str:
    """x @ W + b (W [fan_in, fan_out] scaled 1/sqrt(fan_in), b scaled 0.1): appends the weights and the
    MatMul + Add; returns the output name (`prefix`)."""
    inits += [weight(r, f"{prefix}.weight", fan_in, fan_out, scale=1 / np.sqrt(fan_in)),
              weight(r, f"{prefix}.bias", fan_out, scale=0.1)]
    nodes += [node("MatMul", [x, f"{prefix}.weight"], f"{prefix}.mm"),
              node("Add", [f"{prefix}.mm", f"{prefix}.bias"], prefix)]
    return prefix


def layer_norm(r: np.random.Generator, p: str, x: str, hidden: int, inits: list, nodes: list) -> str:
    """LayerNorm over the last axis as exporters decompose it (ReduceMean, Sub, Pow "two", ReduceMean,
    Add "ln_eps", Sqrt, Div, Mul, Add; the model supplies the "two" and "ln_eps" constants), gamma near 1
    as trained LayerNorms are; returns the output name (`p`)."""
    gamma = (1 + 0.1 * r.standard_normal(hidden)).astype(np.float32)
    inits += [const(f"{p}.weight", gamma), weight(r, f"{p}.bias", hidden, scale=0.1)]
    nodes += [node("ReduceMean", x, f"{p}.mean", axes=[-1]), node("Sub", [x, f"{p}.mean"], f"{p}.centered"),
              node("Pow", [f"{p}.centered", "two"], f"{p}.sq"), node("ReduceMean", f"{p}.sq", f"{p}.var", axes=[-1]),
              node("Add", [f"{p}.var", "ln_eps"], f"{p}.var_eps"), node("Sqrt", f"{p}.var_eps", f"{p}.std"),
              node("Div", [f"{p}.centered", f"{p}.std"], f"{p}.normed"),
              node("Mul", [f"{p}.normed", f"{p}.weight"], f"{p}.scaled"), node("Add", [f"{p}.scaled", f"{p}.bias"], p)]
    return p


def constant_node(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    """A Constant node (exporters emit these instead of initializers)."""
    return helper.make_node("Constant", [], [name], name=f"Constant_{name}",
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype), f"{name}_value"))


def io(name: str, dtype, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def model(name: str, nodes, inputs, outputs, initializers=(), opset: int = 17, ir_version: int = 8,
          extra_opsets: dict | None = None, functions=(), doc: str = "") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    m = helper.make_model(graph, opset_imports=opsets, functions=list(functions), producer_name="graphopt-models",
                          producer_version="1", doc_string=doc)
    m.ir_version = ir_version
    onnx.checker.check_model(m, full_check=True)
    return m
