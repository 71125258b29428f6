"""ConvTranspose with kernel == stride (kernels/cpu/nn.py) against ONNX Runtime, and the
forms the prepare hook leaves to the generic kernel."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphopt.kernels.cpu.nn import prepare_conv_transpose
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(5)


def deconv_model(x, w, b, attrs):
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    inits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if b is not None else [])
    node = helper.make_node("ConvTranspose", ["X", "W"] + (["B"] if b is not None else []), ["Y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", elem, x.shape)],
                              [helper.make_tensor_value_info("Y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = [  # (x shape, output channels, kernel, bias, dtype, extra attrs, the hook takes it)
    ((1, 24, 20, 20), 24, (2, 2), True, np.float32, {}, True),
    ((2, 6, 7, 5), 3, (2, 2), False, np.float32, {}, True),
    ((1, 4, 6, 9), 5, (3, 2), True, np.float32, {}, True),
    ((1, 3, 4, 4), 2, (2, 2), True, np.float64, {"auto_pad": "VALID"}, True),
    ((1, 4, 5, 5), 3, (2, 2), True, np.float32, {"pads": [1, 0, 0, 1]}, False),       # cropped: generic
    ((1, 4, 5, 5), 3, (2, 2), True, np.float32, {"output_padding": [1, 1]}, False),
    ((1, 4, 5, 5), 4, (2, 2), True, np.float32, {"group": 2}, False),
]


@pytest.mark.parametrize("shape, m, kernel, bias, dtype, extra, taken", CASES)
def test_conv_transpose_with_kernel_equal_to_stride_matches_ort(shape, m, kernel, bias, dtype, extra, taken):
    group = extra.get("group", 1)
    x = RNG.standard_normal(shape).astype(dtype)
    w = RNG.standard_normal((shape[1], m // group) + kernel).astype(dtype)
    b = RNG.standard_normal(m).astype(dtype) if bias else None
    attrs = {"kernel_shape": list(kernel), "strides": list(kernel), **extra}
    model = deconv_model(x, w, b, attrs)
    got = Session(model).run(None, {"X": x})[0]
    f32 = [v if v is None else v.astype(np.float32) for v in (x, w, b)]  # ORT has no float64 ConvTranspose
    want = ort_session(deconv_model(*f32, attrs)).run(None, {"X": f32[0]})[0]
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    full = {"group": 1, "dilations": None, "pads": None, "output_padding": None, "output_shape": None,
            "auto_pad": "NOTSET", **attrs}
    assert (prepare_conv_transpose(full, [None, w, b], None) is not None) == taken
