"""How the GPU plan splits a model (host shape steps, uploads, fused chains, fallbacks), checked by
building plans for the golden models without touching a device: CuPy must import (it does without
a GPU), and its host-to-device copy is replaced by NumPy for the build. Running them needs a GPU
(tests/gpu)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import golden
from graphopt.errors import Unsupported

cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'graphopt[gpu]')")


@pytest.fixture
def plan_of(monkeypatch):
    monkeypatch.setattr(cp, "asarray", np.asarray)
    from graphopt.runtime.gpu.plan import GpuPlan

    def build(model, **kw):
        if isinstance(model, str):
            model = onnx.load(str(golden.model_path(model)))
        return GpuPlan(model, **kw)
    return build


def _descs(plan):
    return [s.desc for s in plan.steps]


def test_transformer_block_fuses_its_elementwise_chains_and_keeps_shapes_on_the_host(plan_of):
    plan = plan_of("transformer_block")
    fused = [d for d in _descs(plan) if d.startswith("fused")]
    assert any("Div+Erf+Add+Mul+Mul" in d for d in fused), fused  # the erf-GELU chain is one kernel
    assert any("Sqrt+Div+Mul+Add" in d for d in fused), fused  # LayerNorm's tail
    host = [s.desc for s in plan.steps if s.cached]
    assert any("(Shape)" in d for d in host) and any("(Concat)" in d for d in host)
    assert plan.cacheable and not plan.fallback_ops
    unfused = plan_of("transformer_block", fuse=False)
    assert not any(d.startswith("fused") for d in _descs(unfused))
    assert len(unfused.steps) > len(plan.steps)


def test_shape_arithmetic_never_runs_on_the_device(plan_of):
    plan = plan_of("shape_chain")
    for step in plan.steps:
        if any(op in step.desc for op in ("(Shape)", "(Gather)", "(Unsqueeze)", "(Concat)", "(ReduceProd)")):
            assert step.cached, step.desc


def test_ops_without_gpu_kernels_are_an_error_or_a_listed_fallback(plan_of):
    with pytest.raises(Unsupported, match=r"ai\.onnx::If"):
        plan_of("if_subgraph")
    plan = plan_of("if_subgraph", fallback=True)
    assert plan.fallback_ops and not plan.cacheable  # a CPU step reads device data: no shape cache
    with pytest.raises(Unsupported, match="ScaledTanh"):
        plan_of("custom_domain")


def test_chain_stops_where_an_intermediate_is_read_twice(plan_of):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node("Tanh", ["b"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    plan = plan_of(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    descs = _descs(plan)
    # b feeds Tanh and Add, so Relu+Sigmoid end a chain and Tanh+Add start the next
    assert descs == ["fused Relu+Sigmoid -> b", "fused Tanh+Add -> y"], descs
