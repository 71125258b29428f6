"""MatMulInteger and ConvInteger on full-range uint8 x int8 data: exact integer results, as the ONNX
spec defines them (expected values: the spec's formula in int64). ONNX Runtime is not the oracle here:
its u8*s8 kernels on AVX2 CPUs without VNNI add pairs of products in int16 and saturate (on this data
its MatMulInteger differs by tens of thousands), which is why `onnxruntime.quantization.quantize_dynamic`
models with int8 weights can disagree with graphopt while graphopt follows the spec."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime.session import Session

RNG = np.random.default_rng(3)


def one_node(op, a, b, a_zp, b_zp, **attrs):
    a_type = TensorProto.UINT8
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b", "az", "bz"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("a", a_type, list(a.shape))], [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(a_zp, np.uint8), "az"),
         numpy_helper.from_array(np.array(b_zp, np.int8), "bz")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_matmul_integer_u8_s8_full_range_is_exact():
    a = RNG.integers(0, 256, (8, 64)).astype(np.uint8)
    b = RNG.integers(-128, 128, (64, 16)).astype(np.int8)
    got = Session(one_node("MatMulInteger", a, b, 128, -3)).run(None, {"a": a})[0]
    want = (a.astype(np.int64) - 128) @ (b.astype(np.int64) + 3)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_conv_integer_u8_s8_full_range_is_exact():
    x = RNG.integers(0, 256, (1, 16, 6, 6)).astype(np.uint8)
    w = RNG.integers(-128, 128, (8, 16, 3, 3)).astype(np.int8)
    got = Session(one_node("ConvInteger", x, w, 255, 0, pads=[1, 1, 1, 1])).run(None, {"a": x})[0]
    xp = np.pad(x.astype(np.int64) - 255, [(0, 0), (0, 0), (1, 1), (1, 1)])  # pads hold the zero point: 0 after the shift
    want = np.zeros((1, 8, 6, 6), np.int64)
    for i in range(3):
        for j in range(3):
            want += np.einsum("nchw,mc->nmhw", xp[:, :, i:i + 6, j:j + 6], w[:, :, i, j].astype(np.int64))
    np.testing.assert_array_equal(got, want)
