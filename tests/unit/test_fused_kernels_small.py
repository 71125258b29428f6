"""ai.graphopt fused kernels called directly, generic and build-time prepared (registry.prepare) paths,
against ONNX Runtime on the standard-op chain each replaces: LayerNormalization-17 (after an Add for
SkipLayerNormalization), Gelu-20 (after an Add for BiasGelu), and MatMul/Softmax attention."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphopt.kernels.cpu import attention, gelu, layernorm
from graphopt.kernels.registry import DYNAMIC

RNG = np.random.default_rng(7)
F = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def ort_run(nodes, feed, outputs, opset):
    elem = {k: F[v.dtype.type] for k, v in feed.items()}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(k, elem[k], v.shape) for k, v in feed.items()],
                              [helper.make_tensor_value_info(o, next(iter(elem.values())), None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def both_paths(op_kernel, hook, args, attrs, const_idx):
    """The generic kernel's outputs and, when the hook accepts these constants, the prepared one's."""
    got = [op_kernel(args, attrs)]
    consts = [a if i in const_idx else DYNAMIC for i, a in enumerate(args)]
    fast = hook(attrs, consts, op_kernel)
    if const_idx:
        assert fast is not None, "the prepare hook refused constant scale/bias"
    if fast is not None:
        got.append(fast(args, attrs))
    return got


def data(*shape, dtype=np.float32, offset=0.0):
    return (offset + RNG.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("sum_out", [False, True])
@pytest.mark.parametrize("const", [True, False])
def test_skip_layer_norm(dtype, sum_out, const):
    x, r = data(2, 7, 64, dtype=dtype, offset=3.0), data(2, 7, 64, dtype=dtype)
    g, b = data(64, dtype=dtype), data(64, dtype=dtype)
    want = ort_run([helper.make_node("Add", ["x", "r"], ["s"]),
                    helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-12)],
                   {"x": x, "r": r, "g": g, "b": b}, ["y", "s"], 17)
    attrs = {"epsilon": 1e-12, "__n_outputs__": 4 if sum_out else 1}
    for got in both_paths(layernorm.skip_layer_norm, layernorm.prepare_skip_layer_norm, [x, r, g, b], attrs,
                          {2, 3} if const and dtype == np.float32 else set()):
        tol = 2e-3 if dtype == np.float16 else 1e-5
        assert got[0].dtype == dtype and got[0].shape == x.shape
        np.testing.assert_allclose(got[0].astype(np.float32), want[0].astype(np.float32), rtol=tol, atol=tol)
        if sum_out:
            np.testing.assert_array_equal(got[3], want[1])
        np.testing.assert_array_equal(x + r, want[1])  # the inputs were not written into


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(axis, bias):
    x = data(3, 4, 32, offset=100.0)
    shape = x.shape[axis % x.ndim:]
    g, b = data(*shape), data(*shape)
    x_before = x.copy()
    names = ["x", "g", "b"] if bias else ["x", "g"]
    feed = {"x": x, "g": g, "b": b} if bias else {"x": x, "g": g}
    want = ort_run([helper.make_node("LayerNormalization", names, ["y"], axis=axis, epsilon=1e-5)], feed, ["y"], 17)
    args = [x, g, b] if bias else [x, g]
    const = {1, 2} if axis == -1 else set()  # the hook takes only the last axis
    for got in both_paths(layernorm.layer_norm, layernorm.prepare_layer_norm, args, {"axis": axis, "epsilon": 1e-5},
                          const if bias else ({1} if axis == -1 else set())):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("bias", [True, False])
def test_standard_layer_norm_takes_the_prepared_path_when_only_y_is_used(bias):
    x = data(3, 4, 32, offset=100.0)
    g, b = data(32), data(32)
    names = ["x", "g", "b"] if bias else ["x", "g"]
    feed = dict(zip(names, [x, g, b]))
    want = ort_run([helper.make_node("LayerNormalization", names, ["y"], axis=-1, epsilon=1e-5)], feed, ["y"], 17)
    attrs = {"axis": -1, "epsilon": 1e-5, "stash_type": 1, "__n_outputs__": 1}
    got = both_paths(layernorm.onnx_layer_norm, layernorm.prepare_onnx_layer_norm, [feed[n] for n in names], attrs,
                     set(range(1, len(names))))
    assert len(got) == 2  # generic and prepared
    for g_ in got:
        np.testing.assert_allclose(g_[0], want[0], rtol=1e-4, atol=1e-4)
    consts = [DYNAMIC, g, b if bias else None]
    # Mean / InvStdDev wanted, or another axis: the generic kernel, which computes them
    assert layernorm.prepare_onnx_layer_norm({**attrs, "__n_outputs__": 3}, consts, layernorm.onnx_layer_norm) is None
    assert layernorm.prepare_onnx_layer_norm({**attrs, "axis": 1}, consts, layernorm.onnx_layer_norm) is None


def test_layer_norm_hook_falls_back_on_another_dtype_or_width():
    g = data(16)
    run = layernorm.prepare_layer_norm({"axis": -1, "epsilon": 1e-5}, [DYNAMIC, g, None], layernorm.layer_norm)
    x16 = data(2, 16, dtype=np.float16)
    want = ort_run([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-5)],
                   {"x": x16, "g": g.astype(np.float16)}, ["y"], 17)[0]
    np.testing.assert_allclose(run([x16, g], {"axis": -1, "epsilon": 1e-5})[0].astype(np.float32),
                               want.astype(np.float32), rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError):  # a row width the scale does not fit: the generic kernel's broadcast error
        run([data(2, 8), g], {"axis": -1, "epsilon": 1e-5})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu(approximate):
    x = np.concatenate([np.linspace(-12, 12, 4001), [30.0, -30.0, 1e30, -1e30, 0.0]]).astype(np.float32).reshape(1, -1, 1)
    x = np.repeat(x, 8, axis=2)
    b = data(8)
    want = ort_run([helper.make_node("Add", ["x", "b"], ["s"]),
                    helper.make_node("Gelu", ["s"], ["y"], approximate=approximate)], {"x": x, "b": b}, ["y"], 20)[0]
    attrs = {"approximate": approximate}
    for got in both_paths(gelu.bias_gelu, gelu.prepare_bias_gelu, [x, b], attrs, {1}):
        assert got[0].dtype == np.float32
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, np.repeat(x[..., :1], 8, axis=2))  # x was not written into
    nan = gelu.gelu([np.array([np.nan, np.inf], np.float32)], {"approximate": approximate})[0]
    assert np.isnan(nan[0]) and nan[1] == np.inf


@pytest.mark.parametrize("mask", [True, False])
def test_attention(mask):
    b, s, heads, d = 2, 5, 4, 8
    q, k, v = data(b, s, heads * d), data(b, s, heads * d), data(b, s, heads * d)
    m = np.where(RNG.random((b, 1, 1, s)) < 0.3, np.float32(-1e9), np.float32(0))
    feed = {"q": q, "k": k, "v": v, "m": m}
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [b, s, heads, d])
    flat = helper.make_tensor("flat", TensorProto.INT64, [3], [b, s, heads * d])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.3])
    nodes = [helper.make_node("Constant", [], ["shape"], value=shape),
             helper.make_node("Constant", [], ["flat"], value=flat),
             helper.make_node("Constant", [], ["scale"], value=scale)]
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [n, "shape"], [n + "4"]),
                  helper.make_node("Transpose", [n + "4"], [n + "h"], perm=perm)]
    nodes += [helper.make_node("MatMul", ["qh", "kh"], ["qk"]), helper.make_node("Mul", ["qk", "scale"], ["sc"])]
    if mask:
        nodes.append(helper.make_node("Add", ["sc", "m"], ["scm"]))
    nodes += [helper.make_node("Softmax", ["scm" if mask else "sc"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctxt", "flat"], ["y"])]
    if not mask:
        feed.pop("m")
    want = ort_run(nodes, feed, ["y"], 17)[0]
    args = [q, k, v, m] if mask else [q, k, v]
    got = attention.graphopt_attention(args, {"num_heads": heads, "scale": 0.3})[0]
    assert got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 1.702])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_quick_gelu(alpha, dtype):
    """x * sigmoid(alpha * x): against the formula in float64 (the spec) and ORT's Sigmoid and Mul (whose
    sigmoid is an approximation clamped near -18: absolute differences up to ~1.5e-6 where it saturates)."""
    x = (data(4, 33, dtype=np.float32) * 20).astype(dtype)
    x[0, :3] = [-100, 100, 0]
    got = gelu.quick_gelu([x], {"alpha": alpha})[0]
    assert got.dtype == x.dtype and got.shape == x.shape
    x64 = x.astype(np.float64)
    exact = x64 / (1 + np.exp(-np.float64(dtype(alpha)) * x64))
    tol = 1e-6 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(got.astype(np.float64), exact, rtol=tol, atol=tol * 1e-3)
    want = ort_run([helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Sigmoid", ["ax"], ["s"]),
                    helper.make_node("Mul", ["x", "s"], ["y"])], {"x": x, "a": np.array(alpha, dtype)}, ["y"], 17)[0]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=max(tol, 2e-6))
