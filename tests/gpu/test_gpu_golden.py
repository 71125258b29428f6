"""Golden models (models/<name>, outputs computed by ONNX Runtime on the original) through the GPU
session: as stored and compiled at O2, fp32 tolerance; convnet and transformer_block also in fp16
(loose tolerance) and with CUDA-graph replay. Models with control flow or custom-domain functions
need the CPU fallback for those nodes. Skipped without CuPy or a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import golden


def _gpu_missing():
    try:
        import cupy
        return None if cupy.cuda.runtime.getDeviceCount() > 0 else "no CUDA GPU"
    except Exception as e:
        return f"CuPy or a CUDA GPU is missing: {e}"


REASON = _gpu_missing()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]
MODELS = golden.list_models()
NEEDS_FALLBACK = {"if_subgraph", "loop_subgraph", "custom_domain"}


def _poison():
    import cupy as cp
    junk = cp.full(16 << 20, np.nan, np.float32)
    cp.cuda.Device().synchronize()
    del junk


@pytest.mark.parametrize("target", [None, "onnx", "graphopt"], ids=["stored", "O2", "O2-graphopt"])
@pytest.mark.parametrize("name", MODELS)
def test_golden_model_on_gpu(name, target):
    """As stored, compiled at O2, and compiled at O2 for graphopt's fused ops (ai.graphopt Attention,
    SkipLayerNormalization, BiasGelu, FusedConv/FusedGemm run on their GPU kernels)."""
    g = golden.load_golden(name)
    path = golden.model_path(name)
    model = path if target is None else graphopt.compile_model(path, level=2, target=target).model
    sess = graphopt.Session(model, device="gpu", gpu_fallback=name in NEEDS_FALLBACK)
    for _ in range(2):  # first run fills the per-shape cache, the second reads it
        _poison()
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, g.inputs)))
        problems = golden.compare(g.outputs, got)
        assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", ["convnet", "transformer_block"])
def test_golden_model_fp16_and_cuda_graph(name):
    g = golden.load_golden(name)
    path = golden.model_path(name)
    half = graphopt.Session(path, device="gpu", precision="fp16")
    got = dict(zip([o.name for o in half.get_outputs()], half.run(None, g.inputs)))
    assert not golden.compare(g.outputs, got, rtol=2e-2, atol=2e-2), "fp16 outputs drifted"
    graph = graphopt.Session(path, device="gpu", cuda_graph=True)
    for _ in range(3):
        _poison()
        got = dict(zip([o.name for o in graph.get_outputs()], graph.run(None, g.inputs)))
        assert not golden.compare(g.outputs, got)
