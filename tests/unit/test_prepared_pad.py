"""Pad with constant pads (kernels/cpu/prepared_pad.py) against ONNX Runtime on one-node models:
every mode, pads on some or all axes, axes input (opset 18), a fill value, integer dtypes, and a
second run at another shape (plans are per input shape)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime.session import Session
from graphopt.verify import ort_session


def pad_model(x_shape, pads, mode, value=None, axes=None, dtype=TensorProto.FLOAT, opset=19):
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads")]
    ins = ["x", "pads"]
    if value is not None or axes is not None:
        ins.append("value" if value is not None else "")
        if value is not None:
            inits.append(numpy_helper.from_array(np.array(value, helper.tensor_dtype_to_np_dtype(dtype)), "value"))
    if axes is not None:
        ins.append("axes")
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    node = helper.make_node("Pad", ins, ["y"], mode=mode)
    graph = helper.make_graph([node], "pad", [helper.make_tensor_value_info("x", dtype, [None] * len(x_shape))],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


CASES = [  # (x shape, pads, mode, value, axes)
    ((4, 832), [0, 128, 0, 128], "reflect", None, None),
    ((2, 3, 5, 6), [0, 0, 1, 2, 0, 0, 3, 1], "reflect", None, None),
    ((2, 3, 5, 6), [0, 0, 2, 0, 0, 0, 0, 4], "edge", None, None),
    ((2, 3, 5, 6), [0, 1, 2, 3, 1, 0, 2, 1], "constant", 1.5, None),
    ((2, 3, 5), [1, 1, 1, 2, 2, 2], "constant", None, None),
    ((3, 7), [2, 9], "wrap", None, [1]),
    ((2, 3, 4), [1, 1, 3, 0], "reflect", None, [-1, 0]),
    ((2, 5), [0, 0, 0, 0], "edge", None, None),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[2]}{i}" for i, c in enumerate(CASES)])
def test_pad_matches_ort(case):
    shape, pads, mode, value, axes = case
    model = pad_model(shape, pads, mode, value, axes)
    sess, ref = Session(model), ort_session(model)
    rng = np.random.default_rng(len(shape))
    for s in (shape, tuple(d + 2 for d in shape)):  # a second shape: its own plan
        x = rng.standard_normal(s).astype(np.float32)
        for _ in range(2):
            got = sess.run(None, {"x": x})[0]
            want = ref.run(None, {"x": x})[0]
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_pad_integer_fill_and_crop_fall_back():
    model = pad_model((3, 4), [1, 0, 0, 2], "constant", 7, dtype=TensorProto.INT32)
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.testing.assert_array_equal(Session(model).run(None, {"x": x})[0], ort_session(model).run(None, {"x": x})[0])
    crop = pad_model((3, 4), [-1, 1, 0, -2], "constant")  # negative pads crop: the generic kernel
    xf = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(Session(crop).run(None, {"x": xf})[0], ort_session(crop).run(None, {"x": xf})[0])
