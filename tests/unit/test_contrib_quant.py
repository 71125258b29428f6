"""ORT's com.microsoft QOperator-format ops (kernels/cpu/contrib_quant.py) run by graphopt.Session
against ORT itself on one-node models: uint8 and int8, broadcasting,
per-channel QGemm weights, int32 bias, float and quantized QGemm outputs. ORT rounds some of them
through other float steps, so outputs may differ by one quantization step, never more. QGemm's uint8
input stays within 7 bits, as ORT's quantizer keeps it (reduce_range): on full-range uint8 x int8 data
ORT's kernels on CPUs without VNNI saturate pair sums in int16 (see test_integer_ops_exact.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import golden
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

MS = "com.microsoft"
RNG = np.random.default_rng(17)
ELEM = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
        np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}


def q8(dtype, *shape):
    lo, hi = (0, 256) if dtype == np.uint8 else (-128, 128)
    return RNG.integers(lo, hi, shape).astype(dtype)


def scalar(v, dtype=np.float32):
    return np.array(v, dtype)


def check(op, inputs, consts, attrs=None, out_type=None, max_step=1):
    """inputs: [(name, array)] fed at run time; consts: {name: array}; node inputs in the given order
    (names; "" for an absent optional)."""
    names, feeds = [], {}
    for name, value in inputs:
        names.append(name)
        if value is not None and name not in consts:
            feeds[name] = value
    out_elem = out_type or ELEM[np.dtype(next(v for n, v in inputs if n in feeds).dtype)]
    node = helper.make_node(op, names, ["y"], domain=MS, **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, ELEM[v.dtype], v.shape) for k, v in feeds.items()],
                              [helper.make_tensor_value_info("y", out_elem, None)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    want = ort_session(model).run(None, feeds)[0]
    got = Session(model).run(None, feeds)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= max_step


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_binary(op, dtype):
    a, b = q8(dtype, 2, 3, 4, 5), q8(dtype, 4, 1)  # b broadcasts
    zp = (lambda v: scalar(v, dtype))
    consts = {"as": scalar(0.05), "az": zp(3), "b": b, "bs": scalar(0.02), "bz": zp(-2 if dtype == np.int8 else 120),
              "cs": scalar(0.07 if op == "QLinearAdd" else 0.2), "cz": zp(5)}
    check(op, [("a", a), ("as", None), ("az", None), ("b", b), ("bs", None), ("bz", None), ("cs", None), ("cz", None)], consts)


@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {"alpha": 0.1})])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_lookup_ops(op, attrs, dtype):
    x = q8(dtype, 2, 16, 5)
    consts = {"xs": scalar(0.06), "xz": scalar(10, dtype), "ys": scalar(1 / 256 if op == "QLinearSigmoid" else 0.05),
              "yz": scalar(0 if op == "QLinearSigmoid" else 7, dtype)}
    check(op, [("x", x), ("xs", None), ("xz", None), ("ys", None), ("yz", None)], consts, attrs)


def test_qlinear_concat_mixed_scales():
    x1, x2 = q8(np.uint8, 1, 3, 4), q8(np.uint8, 1, 5, 4)
    consts = {"ys": scalar(0.1), "yz": scalar(128, np.uint8), "s1": scalar(0.1), "z1": scalar(128, np.uint8),
              "s2": scalar(0.03), "z2": scalar(100, np.uint8)}
    check("QLinearConcat", [("ys", None), ("yz", None), ("x1", x1), ("s1", None), ("z1", None),
                            ("x2", x2), ("s2", None), ("z2", None)], consts, {"axis": 1})


@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool(channels_last):
    x = q8(np.uint8, 2, 7, 6, 5)
    consts = {"xs": scalar(0.02), "xz": scalar(3, np.uint8), "ys": scalar(0.01), "yz": scalar(9, np.uint8)}
    check("QLinearGlobalAveragePool", [("x", x), ("xs", None), ("xz", None), ("ys", None), ("yz", None)], consts,
          {"channels_last": channels_last})


def test_qlinear_average_pool():
    x = q8(np.uint8, 1, 4, 9, 9)
    consts = {"xs": scalar(0.02), "xz": scalar(3, np.uint8), "ys": scalar(0.02), "yz": scalar(5, np.uint8)}
    check("QLinearAveragePool", [("x", x), ("xs", None), ("xz", None), ("ys", None), ("yz", None)], consts,
          {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 0})


@pytest.mark.parametrize("opset,axis", [(13, -1), (12, 1), (11, None)])
def test_qlinear_softmax(opset, axis):
    """axis left out is -1 for this op even with opset 11 (where Softmax's own default was 1)."""
    x = q8(np.uint8, 2, 3, 10)
    consts = {"xs": scalar(0.08), "xz": scalar(128, np.uint8), "ys": scalar(1 / 256), "yz": scalar(0, np.uint8)}
    check("QLinearSoftmax", [("x", x), ("xs", None), ("xz", None), ("ys", None), ("yz", None)], consts,
          {"opset": opset, **({} if axis is None else {"axis": axis})})


@pytest.mark.parametrize("trans_b,per_channel,bias,quantized", [
    (0, False, False, True), (1, True, True, True), (1, False, True, False), (0, True, False, False)])
def test_qgemm(trans_b, per_channel, bias, quantized):
    a = RNG.integers(0, 128, (4, 12)).astype(np.uint8)
    b = q8(np.int8, 6, 12) if trans_b else q8(np.int8, 12, 6)
    consts = {"as": scalar(0.02), "az": scalar(64, np.uint8), "b": b,
              "bs": (RNG.random(6).astype(np.float32) * 0.01 + 0.001) if per_channel else scalar(0.004),
              "bz": np.zeros(6, np.int8) if per_channel else scalar(0, np.int8)}
    names = [("a", a), ("as", None), ("az", None), ("b", b), ("bs", None), ("bz", None)]
    if bias:
        consts["c"] = RNG.integers(-2000, 2000, 6).astype(np.int32)
    names.append(("c" if bias else "", None))
    if quantized:
        consts.update({"ys": scalar(0.05), "yz": scalar(128, np.uint8)})
        names += [("ys", None), ("yz", None)]
    check("QGemm", names, consts, {"transB": trans_b}, out_type=TensorProto.UINT8 if quantized else TensorProto.FLOAT)


@pytest.mark.parametrize("name", ["convnet", "mobilenet_yolo", "transformer_block"])
def test_models_quantized_by_onnxruntime_run(name, tmp_path):
    """What onnxruntime.quantization writes in QOperator format (QLinearConv/MatMul plus the contrib
    ops above) runs in graphopt.Session and gives ORT's outputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    feed = golden.load_golden(name).inputs

    class OneFeed(CalibrationDataReader):
        def __init__(self):
            self.left = [feed]

        def get_next(self):
            return self.left.pop() if self.left else None
    out = tmp_path / "q.onnx"
    quantize_static(str(golden.model_path(name)), str(out), OneFeed(), quant_format=QuantFormat.QOperator)
    model = onnx.load(out)
    assert any(n.domain == MS for n in model.graph.node)
    want = ort_session(model).run(None, feed)
    got = Session(model).run(None, feed)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(w).max())))


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """(..., count) small ints -> (..., bytes) uint8, the lowest bits first (MatMulNBits' layout)."""
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    v = np.concatenate([values, np.zeros(values.shape[:-1] + (pad,), values.dtype)], axis=-1).astype(np.uint8)
    v = v.reshape(values.shape[:-1] + (-1, per_byte))
    return np.bitwise_or.reduce(v << (np.arange(per_byte, dtype=np.uint8) * bits), axis=-1).astype(np.uint8)


@pytest.mark.parametrize("bits,block,k,zp_kind,bias", [
    (4, 32, 64, None, False), (4, 16, 40, "packed", True), (4, 32, 64, "float", False), (8, 16, 48, "packed", True),
    (2, 16, 32, "packed", False)])
def test_matmul_nbits(bits, block, k, zp_kind, bias):
    """Weight-only quantized MatMul (ORT's MatMulNBitsQuantizer writes it for int4 LLMs), K not always a
    multiple of the block size, zero points absent / packed / float, a bias."""
    n = 12
    blocks = -(-k // block)
    q = RNG.integers(0, 1 << bits, (n, blocks, block))
    b = _pack(q, bits)  # (N, blocks, block * bits / 8)
    scales = (RNG.random(n * blocks) * 0.1 + 0.01).astype(np.float32)
    consts = {"b": b, "s": scales}
    ins = ["a", "b", "s"]
    if zp_kind == "packed":
        consts["z"] = _pack(RNG.integers(0, 1 << bits, (n, blocks)), bits).reshape(-1)
    elif zp_kind == "float":
        consts["z"] = (RNG.random(n * blocks) * 8).astype(np.float32)
    ins.append("z" if zp_kind else "")
    if bias:
        consts["bias"] = RNG.standard_normal(n).astype(np.float32)
        ins += ["", "bias"]
    while ins[-1] == "":
        ins.pop()
    a = RNG.standard_normal((2, 3, k)).astype(np.float32)
    node = helper.make_node("MatMulNBits", ins, ["y"], domain=MS, K=k, N=n, bits=bits, block_size=block)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, name) for name, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    want = ort_session(model).run(None, {"a": a})[0]
    got = Session(model).run(None, {"a": a})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
