"""QLinearConv / QLinearMatMul with constant weights (kernels/cpu/quant.py: weights centered
once, float32 accumulation where a build-time bound proves it exact) against ONNX Runtime and, where
float rounding could hide an inexact sum, against the spec's formula in int64.

Weights stay within [-64, 63] in the ORT comparisons with uint8 activations: ORT's u8 x s8 kernels on
AVX2 CPUs without VNNI saturate pairs of products in int16 (tests/unit/test_integer_ops_exact.py)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(11)
_ELEM = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}


def qlinear_model(op, x_shape, x_dtype, w, w_scale, w_zp, y_dtype=np.uint8, bias=None, x_zp=3, x_scale=0.05,
                  y_scale=0.2, y_zp=None, **attrs):
    y_zp = (7 if y_dtype == np.uint8 else -5) if y_zp is None else y_zp
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, x_dtype), "xz"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.asarray(w_scale, np.float32), "ws"),
             numpy_helper.from_array(np.asarray(w_zp, w.dtype), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, y_dtype), "yz")]
    ins = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.int32), "b"))
        ins.append("b")
    graph = helper.make_graph([helper.make_node(op, ins, ["y"], **attrs)], "q",
                              [helper.make_tensor_value_info("x", _ELEM[x_dtype], list(x_shape))],
                              [helper.make_tensor_value_info("y", _ELEM[y_dtype], None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def prepared_steps(sess) -> list[str]:
    return [step[0].__qualname__ for step in sess._plan.steps]


def ints(dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    return RNG.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


CONV_CASES = {  # name: (x shape, x dtype, weight shape, weight range, per-channel, bias, attrs)
    "u8_3x3_pad": ((1, 8, 9, 9), np.uint8, (16, 8, 3, 3), (-64, 63), False, True, {"pads": [1, 1, 1, 1]}),
    "u8_per_channel_stride2": ((2, 6, 11, 10), np.uint8, (12, 6, 3, 3), (-64, 63), True, True,
                               {"pads": [1, 0, 1, 2], "strides": [2, 2]}),
    "s8_depthwise_5x5": ((1, 16, 12, 12), np.int8, (16, 1, 5, 5), (-128, 127), True, True,
                         {"group": 16, "pads": [2, 2, 2, 2]}),
    "s8_grouped_dilated": ((1, 8, 10, 10), np.int8, (8, 2, 3, 3), (-128, 127), False, False,
                           {"group": 4, "dilations": [2, 2], "pads": [2, 1, 2, 1]}),
    "u8_same_upper": ((1, 4, 7, 8), np.uint8, (6, 4, 3, 3), (-64, 63), False, True,
                      {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "u8_pointwise": ((1, 32, 7, 7), np.uint8, (24, 32, 1, 1), (-64, 63), True, True, {}),
    "u8_1d": ((2, 4, 20), np.uint8, (6, 4, 3), (-64, 63), False, True, {"pads": [1, 1]}),
    "s8_big_k_float64": ((1, 256, 6, 6), np.int8, (8, 256, 3, 3), (-128, 127), True, True, {"pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_qlinear_conv_prepared_matches_ort(name):
    x_shape, x_dtype, w_shape, (lo, hi), per_channel, with_bias, attrs = CONV_CASES[name]
    w = ints(np.int8, w_shape, lo, hi)
    m = w_shape[0]
    w_scale = RNG.uniform(0.001, 0.01, m) if per_channel else 0.004
    w_zp = np.zeros(m, np.int8) if per_channel else 0
    bias = RNG.integers(-2000, 2000, m) if with_bias else None
    y_dtype = np.uint8 if x_dtype == np.uint8 else np.int8
    x_zp = 3 if x_dtype == np.uint8 else -2
    model = qlinear_model("QLinearConv", x_shape, x_dtype, w, w_scale, w_zp, y_dtype, bias, x_zp=x_zp, **attrs)
    sess = Session(model)
    assert any(q.startswith("prepare_qlinear_conv") for q in prepared_steps(sess))
    ref = ort_session(model)
    for _ in range(2):  # a second run reuses the plan's buffers
        x = ints(x_dtype, x_shape)
        got, want = sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        # ORT requantizes in float32, graphopt in float64: a value on a rounding boundary may go
        # either way, one step apart
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, name


def test_qlinear_conv_large_sums_are_exact():
    """Sums past 2**24 (where float32 stops holding every integer) still come out exact: the bound
    sends such a layer to float64. The bias cancels the true sum, and the scales make the output
    the integer accumulator itself, so any rounding in the sum would show."""
    x_shape = (1, 1024, 3, 3)
    w = ints(np.int8, (4, 1024, 3, 3), 100, 127)
    x = ints(np.uint8, x_shape, 200, 255)
    acc = ((x.astype(np.int64) - 0)[:, None] * w.astype(np.int64)[None]).sum(axis=(2, 3, 4))[0]  # spec: (x - x_zp) * (w - w_zp)
    assert acc.max() > 2 ** 27
    bias = -acc + 100  # y = acc + bias + y_zp = 100 + y_zp exactly
    model = qlinear_model("QLinearConv", x_shape, np.uint8, w, 1.0, 0, np.uint8, bias, x_zp=0, x_scale=1.0,
                          y_scale=1.0, y_zp=20)
    got = Session(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, np.full((1, 4, 1, 1), 120, np.uint8))


MATMUL_CASES = {  # name: (a shape, a dtype, b shape, b range, per-column)
    "u8_2d": ((6, 40), np.uint8, (40, 24), (-64, 63), False),
    "u8_stacked_per_column": ((2, 5, 32), np.uint8, (32, 16), (-64, 63), True),
    "s8_big_k_float64": ((4, 1200), np.int8, (1200, 8), (-128, 127), True),
}


@pytest.mark.parametrize("name", list(MATMUL_CASES))
def test_qlinear_matmul_prepared_matches_ort(name):
    a_shape, a_dtype, b_shape, (lo, hi), per_column = MATMUL_CASES[name]
    b = ints(np.int8, b_shape, lo, hi)
    n = b_shape[1]
    b_scale = RNG.uniform(0.001, 0.01, n) if per_column else 0.004
    b_zp = np.zeros(n, np.int8) if per_column else 0
    y_dtype = np.uint8 if a_dtype == np.uint8 else np.int8
    model = qlinear_model("QLinearMatMul", a_shape, a_dtype, b, b_scale, b_zp, y_dtype,
                          x_zp=3 if a_dtype == np.uint8 else -2)
    sess = Session(model)
    assert any(q.startswith("prepare_qlinear_matmul") for q in prepared_steps(sess))
    a = ints(a_dtype, a_shape)
    got, want = sess.run(None, {"x": a})[0], ort_session(model).run(None, {"x": a})[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_qlinear_matmul_large_sums_are_exact():
    """Partial sums near 2**25 that cancel to a small result (a float32 running sum would have rounded
    on the way, its spacing being 4 there): the bound sends the layer to float64, and with unit
    scales the output is the exact accumulator plus the zero point."""
    b = np.full((4096, 3), 127, np.int8)
    a = np.concatenate([np.full((2, 2048), 255), np.full((2, 2048), 1)], axis=1).astype(np.uint8)  # a - 128 = +-127
    a[1, 7] = 254
    acc = (a.astype(np.int64) - 128) @ b.astype(np.int64)  # spec: (a - a_zp) * (b - b_zp)
    assert set(acc[:, 0]) == {0, -127}
    model = qlinear_model("QLinearMatMul", a.shape, np.uint8, b, 1.0, 0, np.uint8, x_zp=128, x_scale=1.0,
                          y_scale=1.0, y_zp=200)
    got = Session(model).run(None, {"x": a})[0]
    np.testing.assert_array_equal(got, (acc + 200).astype(np.uint8))


def test_qlinear_conv_weights_fed_at_run_time_keep_the_generic_kernel():
    w = ints(np.int8, (4, 3, 3, 3), -64, 63)
    model = qlinear_model("QLinearConv", (1, 3, 6, 6), np.uint8, w, 0.004, 0, pads=[1, 1, 1, 1])
    graph = model.graph
    w_init = next(i for i in graph.initializer if i.name == "w")
    graph.initializer.remove(w_init)
    graph.input.append(helper.make_tensor_value_info("w", TensorProto.INT8, [4, 3, 3, 3]))
    sess = Session(model)
    assert not any(q.startswith("prepare_qlinear_conv") for q in prepared_steps(sess))
    x = ints(np.uint8, (1, 3, 6, 6))
    got, want = sess.run(None, {"x": x, "w": w})[0], ort_session(model).run(None, {"x": x, "w": w})[0]
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1
