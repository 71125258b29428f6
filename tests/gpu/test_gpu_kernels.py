"""Every GPU kernel against ONNX Runtime (the reference) and graphopt's NumPy runtime, on fresh seeded
random inputs, one single-node model per case. Before each run the CuPy memory pool is filled with
NaN, so a kernel that leaves part of its output unwritten fails. Skipped without CuPy or a GPU."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphopt
from graphopt.errors import Unsupported


def _gpu_missing():
    try:
        import cupy
        return None if cupy.cuda.runtime.getDeviceCount() > 0 else "no CUDA GPU"
    except Exception as e:  # ImportError or CUDARuntimeError
        return f"CuPy or a CUDA GPU is missing: {e}"


REASON = _gpu_missing()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

F, H, I64, B = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL


def poison_pool(nbytes=64 << 20):
    """Leave NaN bytes in the pool's free blocks: the next cp.empty() returns garbage, not zeros."""
    import cupy as cp
    junk = cp.full(nbytes // 4, np.nan, np.float32)
    cp.cuda.Device().synchronize()
    del junk


def _model(op, inputs, n_out=1, opset=20, consts=None, domain="", **attrs):
    """inputs: [(name, elem, shape)]; consts: {name: array} become initializers."""
    vis = [helper.make_tensor_value_info(n, e, s) for n, e, s in inputs]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in (consts or {}).items()]
    names = [n for n, _, _ in inputs] + list(consts or {})
    order = attrs.pop("_order", None)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, order or names, outs, domain=domain, **attrs)
    g = helper.make_graph([node], op, vis, [helper.make_value_info(o, onnx.TypeProto()) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _feed(inputs, seed):
    rng = np.random.default_rng(seed)
    feed = {}
    for name, elem, shape in inputs:
        if elem == I64:
            feed[name] = rng.integers(0, 3, shape).astype(np.int64)
        elif elem == B:
            feed[name] = rng.random(shape) > 0.3
        else:
            dt = np.float16 if elem == H else np.float32
            feed[name] = rng.standard_normal(shape).astype(dt)
    return feed


def _check(model, feed, rtol=1e-4, atol=1e-5, **session_opts):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    cpu = graphopt.Session(model).run(None, feed)
    sess = graphopt.Session(model, device="gpu", **session_opts)
    for attempt in range(2):  # the second run takes the cached-shape path
        poison_pool()
        got = sess.run(None, feed)
        for w, c, g in zip(want, cpu, got):
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
            np.testing.assert_allclose(g.astype(np.float64), c.astype(np.float64), rtol=rtol, atol=atol)
    return sess


CASES = {
    "add_broadcast": (lambda: _model("Add", [("a", F, [2, 3, 4]), ("b", F, [4])]), {}),
    "mul_scalar_fp16": (lambda: _model("Mul", [("a", H, [8, 16]), ("b", H, [])]), {"rtol": 1e-3, "atol": 1e-3}),
    "div": (lambda: _model("Div", [("a", F, [5, 7]), ("b", F, [5, 1])]), {"rtol": 1e-4, "atol": 1e-4}),
    "gelu_erf": (lambda: _model("Gelu", [("a", F, [4, 33])]), {}),
    "gelu_tanh": (lambda: _model("Gelu", [("a", F, [4, 33])], approximate="tanh"), {}),
    "gelu_fp16": (lambda: _model("Gelu", [("a", H, [1000])]), {"rtol": 2e-3, "atol": 2e-3}),
    "sigmoid_tanh_erf_chain_parts": (lambda: _model("Erf", [("a", F, [3, 9])]), {}),
    "where": (lambda: _model("Where", [("c", B, [4, 5]), ("a", F, [4, 5]), ("b", F, [5])]), {}),
    "matmul_2d": (lambda: _model("MatMul", [("a", F, [37, 64]), ("b", F, [64, 29])]), {"rtol": 1e-3, "atol": 1e-4}),
    "matmul_batched": (lambda: _model("MatMul", [("a", F, [2, 3, 16, 32]), ("b", F, [2, 3, 32, 8])]),
                       {"rtol": 1e-3, "atol": 1e-4}),
    "matmul_broadcast": (lambda: _model("MatMul", [("a", F, [4, 16, 32]), ("b", F, [32, 8])]),
                         {"rtol": 1e-3, "atol": 1e-4}),
    "gemm_transb_bias": (lambda: _model("Gemm", [("a", F, [6, 32]), ("b", F, [10, 32]), ("c", F, [10])],
                                        transB=1, alpha=0.5, beta=2.0), {"rtol": 1e-3, "atol": 1e-4}),
    "conv3x3": (lambda: _model("Conv", [("x", F, [2, 3, 9, 9]), ("w", F, [8, 3, 3, 3]), ("b", F, [8])],
                               pads=[1, 1, 1, 1]), {"rtol": 1e-3, "atol": 1e-4}),
    "conv_stride_dilation": (lambda: _model("Conv", [("x", F, [1, 4, 13, 11]), ("w", F, [6, 4, 3, 3])],
                                            strides=[2, 2], dilations=[2, 1], pads=[1, 2, 0, 1]),
                             {"rtol": 1e-3, "atol": 1e-4}),
    "conv_groups": (lambda: _model("Conv", [("x", F, [2, 4, 8, 8]), ("w", F, [6, 2, 3, 3])], group=2),
                    {"rtol": 1e-3, "atol": 1e-4}),
    "conv_depthwise": (lambda: _model("Conv", [("x", F, [2, 6, 10, 10]), ("w", F, [12, 1, 3, 3]), ("b", F, [12])],
                                      group=6, pads=[1, 1, 1, 1], strides=[2, 2]), {"rtol": 1e-4, "atol": 1e-5}),
    "conv1d_same": (lambda: _model("Conv", [("x", F, [2, 3, 17]), ("w", F, [5, 3, 4])], auto_pad="SAME_UPPER"),
                    {"rtol": 1e-3, "atol": 1e-4}),
    "softmax_last": (lambda: _model("Softmax", [("x", F, [3, 5, 300])]), {}),
    "softmax_axis1": (lambda: _model("Softmax", [("x", F, [3, 7, 4])], axis=1), {}),
    "softmax_fp16": (lambda: _model("Softmax", [("x", H, [4, 2000])]), {"rtol": 2e-3, "atol": 1e-4}),
    "softmax_v11_coerced": (lambda: _model("Softmax", [("x", F, [2, 3, 4])], opset=11, axis=1), {}),
    "logsoftmax": (lambda: _model("LogSoftmax", [("x", F, [6, 50])]), {}),
    "layernorm_3_outputs": (lambda: _model("LayerNormalization", [("x", F, [2, 7, 48]), ("s", F, [48]),
                                                                  ("b", F, [48])], n_out=3, epsilon=1e-5), {}),
    "layernorm_axis1": (lambda: _model("LayerNormalization", [("x", F, [3, 4, 5]), ("s", F, [4, 5])], axis=1), {}),
    "maxpool": (lambda: _model("MaxPool", [("x", F, [2, 3, 11, 11])], kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1]), {}),
    "maxpool_ceil": (lambda: _model("MaxPool", [("x", F, [1, 2, 10, 10])], kernel_shape=[3, 3], strides=[2, 2],
                                    ceil_mode=1), {}),
    "avgpool_include_pad": (lambda: _model("AveragePool", [("x", F, [1, 3, 9, 9])], kernel_shape=[3, 3],
                                           pads=[1, 1, 1, 1], count_include_pad=1), {}),
    "avgpool_exclude_pad": (lambda: _model("AveragePool", [("x", F, [1, 3, 9, 9])], kernel_shape=[3, 3],
                                           strides=[2, 2], pads=[1, 1, 1, 1]), {}),
    "global_avgpool": (lambda: _model("GlobalAveragePool", [("x", F, [2, 8, 7, 7])]), {}),
    "transpose_0213": (lambda: _model("Transpose", [("x", F, [2, 5, 3, 8])], perm=[0, 2, 1, 3]), {}),
    "transpose_2d": (lambda: _model("Transpose", [("x", F, [70, 45])], perm=[1, 0]), {}),
    "transpose_batched": (lambda: _model("Transpose", [("x", H, [3, 40, 33])], perm=[0, 2, 1]), {}),
    "transpose_3120": (lambda: _model("Transpose", [("x", F, [2, 3, 4, 5])], perm=[3, 1, 2, 0]), {}),
    "reduce_mean": (lambda: _model("ReduceMean", [("x", F, [4, 6, 8])], opset=17, axes=[-1]), {}),
    "concat": (lambda: _model("Concat", [("a", F, [2, 3]), ("b", F, [2, 5])], axis=1), {}),
    "clip": (lambda: _model("Clip", [("x", F, [4, 9])], consts={"lo": np.float32(-0.5), "hi": np.float32(0.7)}), {}),
    "cast_to_half": (lambda: _model("Cast", [("x", F, [4, 9])], to=H), {}),
    "greater": (lambda: _model("Greater", [("a", F, [4, 9]), ("b", F, [9])]), {}),
    "batchnorm": (lambda: _model("BatchNormalization", [("x", F, [2, 3, 4, 5])], consts={
        "s": np.array([1.0, 0.5, 2.0], np.float32), "b": np.array([0.1, 0.0, -0.2], np.float32),
        "m": np.array([0.0, 0.3, -0.1], np.float32), "v": np.array([1.0, 0.5, 2.0], np.float32)}), {}),
    "global_maxpool": (lambda: _model("GlobalMaxPool", [("x", F, [2, 3, 5, 5])]), {}),
    "rmsnorm": (lambda: _model("RMSNormalization", [("x", F, [2, 6, 32]), ("s", F, [32])], opset=23), {}),
    "pad_constant": (lambda: _model("Pad", [("x", F, [2, 3, 4])], consts={"p": np.array([0, 1, 2, 0, 0, 1], np.int64),
                                                                           "v": np.float32(1.5)}), {}),
    "pad_reflect": (lambda: _model("Pad", [("x", F, [1, 2, 5, 5])], mode="reflect",
                                   consts={"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}), {}),
    "slice_steps": (lambda: _model("Slice", [("x", F, [6, 8])], consts={
        "st": np.array([1, -1], np.int64), "en": np.array([6, -9], np.int64), "ax": np.array([0, 1], np.int64),
        "sp": np.array([2, -3], np.int64)}), {}),
    "split": (lambda: _model("Split", [("x", F, [7, 4])], n_out=2, opset=13,
                             consts={"sp": np.array([3, 4], np.int64)}), {}),
    "expand": (lambda: _model("Expand", [("x", F, [3, 1])], consts={"sh": np.array([2, 3, 4], np.int64)}), {}),
    "tile": (lambda: _model("Tile", [("x", F, [2, 3])], consts={"r": np.array([2, 2], np.int64)}), {}),
    "gather_elements": (lambda: _model("GatherElements", [("x", F, [4, 5])], axis=1,
                                       consts={"i": np.array([[0, 4], [1, -1], [2, 2], [3, 0]], np.int64)}), {}),
    "argmax": (lambda: _model("ArgMax", [("x", F, [4, 7])], axis=1, keepdims=0), {}),
    "einsum": (lambda: _model("Einsum", [("a", F, [2, 3, 4]), ("b", F, [2, 4, 5])], equation="bij,bjk->bik"),
               {"rtol": 1e-4, "atol": 1e-4}),
    "reduce_sum_axes_input": (lambda: _model("ReduceSum", [("x", F, [3, 4, 5])], opset=13,
                                             consts={"ax": np.array([0, 2], np.int64)}), {"atol": 1e-4}),
    "squeeze_unsqueeze": (lambda: _model("Unsqueeze", [("x", F, [3, 4])], consts={"ax": np.array([0, 3], np.int64)}),
                          {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_onnxruntime_and_numpy_runtime(case):
    build, tol = CASES[case]
    model = build()
    inputs = [(vi.name, vi.type.tensor_type.elem_type, [d.dim_value for d in vi.type.tensor_type.shape.dim])
              for vi in model.graph.input]
    _check(model, _feed(inputs, seed=hash(case) % 1000), **tol)


def _const_model(op, x_info, consts, n_out=1, opset=20, **attrs):
    return _model(op, [x_info], n_out=n_out, opset=opset, consts=consts, **attrs)


@pytest.mark.parametrize("mode,ctm", [("nearest", "asymmetric"), ("nearest", "half_pixel"),
                                      ("linear", "half_pixel"), ("linear", "align_corners"),
                                      ("cubic", "pytorch_half_pixel")])
def test_resize(mode, ctm):
    scales = np.array([1, 1, 2.0, 1.5], np.float32)
    model = _model("Resize", [("x", F, [1, 2, 5, 6])], consts={"roi": np.zeros(0, np.float32), "scales": scales},
                   mode=mode, coordinate_transformation_mode=ctm)
    _check(model, _feed([("x", F, [1, 2, 5, 6])], 3), rtol=1e-4, atol=1e-5)


def test_gather_scatter_quantize():
    idx = np.array([[0, -1], [2, 1]], np.int64)
    _check(_const_model("Gather", ("x", F, [4, 5, 3]), {"i": idx}, axis=1), _feed([("x", F, [4, 5, 3])], 1))
    _check(_const_model("Gather", ("x", F, [6, 3]), {"i": np.array([5, 0, -2], np.int64)}),
           _feed([("x", F, [6, 3])], 2))
    nd_idx = np.array([[1], [3]], np.int64)
    upd = np.ones((2, 4), np.float32)
    _check(_model("ScatterND", [("x", F, [5, 4])], consts={"i": nd_idx, "u": upd}), _feed([("x", F, [5, 4])], 3))
    el_idx = np.array([[1, 0, 2], [0, 2, 1]], np.int64)
    for red in ("none", "add"):
        _check(_model("ScatterElements", [("x", F, [3, 3])], opset=18, reduction=red,
                      consts={"i": el_idx, "u": np.full((2, 3), 2.0, np.float32)}, axis=0),
               _feed([("x", F, [3, 3])], 4))
    for zp in (np.uint8(128), np.int8(-3)):
        q = _model("QuantizeLinear", [("x", F, [4, 6])], opset=19,
                   consts={"s": np.float32(0.05), "z": np.array(zp)})
        _check(q, _feed([("x", F, [4, 6])], 5), atol=1)  # rounding ties may differ by one step
        dq = _model("DequantizeLinear", [("q", TensorProto.UINT8 if zp.dtype == np.uint8 else TensorProto.INT8,
                                          [4, 6])], opset=19, consts={"s": np.float32(0.05), "z": np.array(zp)})
        rng = np.random.default_rng(6)
        _check(dq, {"q": rng.integers(-100 if zp.dtype == np.int8 else 0, 100, (4, 6)).astype(zp.dtype)})
    per_axis = _model("QuantizeLinear", [("x", F, [2, 3, 4])], opset=19, axis=1,
                      consts={"s": np.array([0.1, 0.02, 0.05], np.float32), "z": np.array([0, 10, 250], np.uint8)})
    _check(per_axis, _feed([("x", F, [2, 3, 4])], 7), atol=1)


def _attention_model(b, h, kvh, sq, sk, d, mask=None, causal=0, dtype=F):
    ins = [("q", dtype, [b, h, sq, d]), ("k", dtype, [b, kvh, sk, d]), ("v", dtype, [b, kvh, sk, d])]
    if mask is not None:
        ins.append(("m", mask, [1, 1, sq, sk]))
    return _model("Attention", ins, n_out=1, opset=23, is_causal=causal), ins


@pytest.mark.parametrize("b,h,kvh,sq,sk,d,mask,causal", [
    (2, 4, 4, 70, 70, 64, None, 0), (1, 4, 2, 33, 130, 32, F, 0), (2, 2, 2, 50, 50, 128, B, 0),
    (1, 3, 3, 100, 100, 64, None, 1), (1, 2, 2, 4096, 4096, 64, None, 0),
    (1, 2, 1, 40, 60, 160, F, 1)])  # head dim 160: the batched-GEMM path
def test_attention(b, h, kvh, sq, sk, d, mask, causal):
    model, ins = _attention_model(b, h, kvh, sq, sk, d, mask, causal)
    feed = _feed(ins, 8)
    if mask == B:
        feed["m"][..., 0] = True  # every query keeps a key: fully masked rows are a separate question
    _check(model, feed, rtol=1e-3, atol=1e-4)


def test_attention_fp16():
    model, ins = _attention_model(1, 2, 2, 64, 64, 64, dtype=H)
    _check(model, _feed(ins, 9), rtol=5e-3, atol=5e-3)


def test_missing_kernel_is_an_error_unless_fallback_is_asked():
    model = _model("TopK", [("x", F, [3, 10])], n_out=2, opset=11, consts={"k": np.array([4], np.int64)})
    with pytest.raises(Unsupported, match="TopK"):
        graphopt.Session(model, device="gpu")
    sess = _check(model, _feed([("x", F, [3, 10])], 10), gpu_fallback=True)
    assert sess.fallback_ops


def _prenorm_residual_model():
    """Pre-LN residual stream in standard ops: s = a + b feeds LayerNorm and the next residual Add,
    so --target graphopt fuses a skip-LayerNorm that also writes the sum (its 4th output)."""
    rng = np.random.default_rng(0)
    consts = [onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), n) for n in ("g", "beta")]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "beta"], ["ln"], axis=-1, epsilon=1e-5),
             helper.make_node("Add", ["s", "ln"], ["y"])]
    vis = [helper.make_tensor_value_info(n, F, [2, 5, 16]) for n in ("a", "b")]
    g = helper.make_graph(nodes, "prenorm", vis, [helper.make_tensor_value_info("y", F, [2, 5, 16])], consts)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def test_fused_skip_layernorm_writes_the_sum():
    model = _prenorm_residual_model()
    fused = graphopt.compile(model, level=2, target="graphopt")
    skip = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
    assert len(skip.output) == 4 and skip.output[3]
    feed = _feed([("a", F, [2, 5, 16]), ("b", F, [2, 5, 16])], seed=4)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    got = graphopt.Session(fused, device="gpu").run(None, feed)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


def test_fused_chain_and_cuda_graph_replay():
    x = helper.make_tensor_value_info("x", F, [4, 8, 32])
    nodes = [helper.make_node("Add", ["x", "b"], ["t0"]), helper.make_node("Gelu", ["t0"], ["t1"]),
             helper.make_node("Mul", ["t1", "s"], ["t2"]), helper.make_node("Sigmoid", ["t2"], ["t3"]),
             helper.make_node("MatMul", ["t3", "w"], ["y"])]
    rng = np.random.default_rng(11)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("b", [32]), ("s", [1, 8, 1]), ("w", [32, 16]))]
    g = helper.make_graph(nodes, "chain", [x], [helper.make_tensor_value_info("y", F, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    sess = _check(model, _feed([("x", F, [4, 8, 32])], 12), rtol=1e-4, atol=1e-4)
    assert any(s.desc.startswith("fused Add+Gelu+Mul+Sigmoid") for s in sess._gpu.steps)
    unfused = _check(model, _feed([("x", F, [4, 8, 32])], 13), rtol=1e-4, atol=1e-4, fuse=False)
    assert not any(s.desc.startswith("fused") for s in unfused._gpu.steps)
    graph_sess = graphopt.Session(model, device="gpu", cuda_graph=True)
    for seed in (14, 15, 16):  # capture, then replays with new data
        feed = _feed([("x", F, [4, 8, 32])], seed)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        poison_pool()
        np.testing.assert_allclose(graph_sess.run(None, feed)[0], want, rtol=1e-4, atol=1e-4)
    assert graph_sess._graphs, "no CUDA graph was captured"


def test_run_device_takes_and_returns_cupy_arrays():
    import cupy as cp
    model = _model("Softmax", [("x", F, [3, 70])])
    feed = _feed([("x", F, [3, 70])], 17)
    sess = graphopt.Session(model, device="gpu")
    out = sess.run_device(None, {"x": cp.asarray(feed["x"])})[0]
    assert isinstance(out, cp.ndarray)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=1e-5, atol=1e-6)
