"""Pooling kernels (kernels/cpu/pooling.py fast paths and nn.py's generic ones) against ONNX Runtime
on one-node models: kernel sizes, strides, pads, auto_pad, ceil_mode, dilations, count_include_pad,
batch > 1, 1-D/2-D/3-D maps, float/double/int8/uint8, MaxPool's Indices output.

Each case runs twice through one Session with different inputs (the fast kernels keep per-geometry
buffers between runs), and the cases the fast kernels are meant to take are also run straight
through the prepare hook with a generic kernel that fails, so a silent fallback is caught."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from graphopt.kernels.cpu import pooling
from graphopt.ir.attributes import resolve_attributes
from graphopt.kernels.registry import DYNAMIC
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.capi.onnxruntime_pybind11_state import (
    NotImplemented as NotImplemented_,
)

import graphopt

OPSET = 19
ELEM = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16,
        np.int8: TensorProto.INT8,
        np.uint8: TensorProto.UINT8}


def one_node(op, shape, dtype, n_outputs=1, **attrs):
    x = helper.make_tensor_value_info("x", ELEM[dtype], shape)
    outs = [helper.make_tensor_value_info("y", ELEM[dtype], None)]
    if n_outputs == 2:
        outs.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    node = helper.make_node(op, ["x"], [o.name for o in outs], **attrs)
    model = helper.make_model(helper.make_graph([node], "pool", [x], outs),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    return model, node


def random_input(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def ort_run(model, x):
    """ONNX Runtime's outputs; onnx.reference's (the spec's) where ORT has no kernel for the dtype
    (AveragePool and the global pools on double)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except NotImplemented_:
        return ReferenceEvaluator(model).run(None, {"x": x})
    return sess.run(None, {"x": x})


def check(op, shape, dtype=np.float32, fast=True, n_outputs=1, **attrs):
    model, node = one_node(op, shape, dtype, n_outputs, **attrs)
    sess = graphopt.Session(model)
    tol = {"rtol": 1e-5, "atol": 1e-6} if np.dtype(dtype).kind == "f" else {"rtol": 0, "atol": 0}
    for seed in (0, 1):
        x = random_input(shape, dtype, seed)
        want = ort_run(model, x)
        got = sess.run(None, {"x": x})
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, **tol)
    if fast:  # the fast kernel itself, with no generic kernel to fall back on
        at = resolve_attributes(node, OPSET)
        at["__n_outputs__"] = n_outputs

        def no_generic(args, attrs):
            raise AssertionError(f"{op} {shape} {attrs} fell back to the generic kernel")
        hook = {"MaxPool": pooling.prepare_max_pool, "AveragePool": pooling.prepare_average_pool}.get(op)
        fn = hook(at, [DYNAMIC], no_generic) if hook else None
        if fn is not None:
            x = random_input(shape, dtype, 2)
            np.testing.assert_allclose(fn([x], at)[0], ort_run(model, x)[0], **tol)


@pytest.fixture(params=["pad-small-maps", "edge-rows-only"], autouse=True)
def padding_strategy(request, monkeypatch):
    """Small padded maps take a padded copy, bigger ones per-axis edge rows: every case runs both ways."""
    if request.param == "edge-rows-only":
        monkeypatch.setattr(pooling, "SMALL_PADDED", 0)


GEOMETRIES = [  # (input shape, attributes): shapes from real CNNs, then the spec's corners
    ((1, 6, 28, 28), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # ShuffleNet
    ((1, 5, 23, 23), {"kernel_shape": [3, 3], "strides": [2, 2]}),                      # SqueezeNet, odd map
    ((1, 7, 13, 13), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),   # Inception
    ((2, 4, 16, 16), {"kernel_shape": [2, 2], "strides": [2, 2]}),                      # batch 2
    ((1, 6, 8, 8), {"kernel_shape": [5, 5], "strides": [1, 1], "pads": [2, 2, 2, 2]}),     # SPP (small, padded)
    ((2, 5, 70, 70), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),   # big: edge rows
    ((1, 3, 40, 50), {"kernel_shape": [5, 5], "strides": [1, 1], "pads": [2, 2, 2, 2]}),   # big, stride 1
    ((1, 3, 50, 40), {"kernel_shape": [3, 2], "strides": [3, 1], "pads": [0, 1, 2, 0]}),   # asymmetric
    ((1, 4, 7, 7), {"kernel_shape": [7, 7]}),                                        # whole map
    ((1, 4, 6, 6), {"kernel_shape": [7, 7], "pads": [0, 0, 1, 1]}),                     # whole map + pad
    ((1, 4, 12, 12), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 4, 11, 13), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((2, 3, 60, 61), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1}),
    ((1, 3, 15, 15), {"kernel_shape": [3, 3], "dilations": [2, 2]}),
    ((1, 3, 64, 64), {"kernel_shape": [3, 3], "strides": [2, 1], "dilations": [2, 3], "pads": [2, 1, 2, 2]}),
    ((1, 3, 9, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 3, 9, 10), {"kernel_shape": [4, 4], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 3, 80, 81), {"kernel_shape": [4, 4], "strides": [3, 3], "auto_pad": "SAME_UPPER"}),
    ((1, 3, 9, 10), {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "VALID"}),
    ((1, 3, 9, 9), {"kernel_shape": [1, 1], "strides": [2, 2]}),
    ((1, 3, 9, 9), {"kernel_shape": [1, 1]}),
    ((3, 2, 17), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),                   # 1-D
    ((2, 2, 300), {"kernel_shape": [4], "strides": [1], "pads": [3, 0]}),
    ((1, 2, 6, 7, 8), {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "pads": [1, 1, 1, 1, 1, 1]}),  # 3-D
    ((2, 2, 20, 21, 22), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "ceil_mode": 1}),
]


@pytest.mark.parametrize("shape,attrs", GEOMETRIES)
def test_max_pool(shape, attrs):
    check("MaxPool", shape, **attrs)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("shape,attrs", GEOMETRIES)
def test_average_pool(shape, attrs, count_include_pad):
    check("AveragePool", shape, count_include_pad=count_include_pad, **attrs)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int8, np.uint8])
def test_max_pool_dtypes(dtype):
    check("MaxPool", (2, 3, 21, 20), dtype, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    check("MaxPool", (1, 3, 9, 9), dtype, kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def test_average_pool_double():
    check("AveragePool", (2, 3, 21, 20), np.float64, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 12, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 9, 9), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
])
def test_max_pool_indices(shape, attrs, storage_order):
    check("MaxPool", shape, fast=False, n_outputs=2, storage_order=storage_order, **attrs)
    assert pooling.prepare_max_pool({**attrs, "__n_outputs__": 2}, [DYNAMIC], None) is None


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape,dtype", [((1, 10, 13, 13), np.float32), ((2, 3, 7, 5), np.float64),
                                         ((2, 4, 9), np.float32), ((1, 3, 4, 5, 6), np.float32)])
def test_global_pools(op, shape, dtype):
    check(op, shape, dtype)
