"""Depthwise, grouped and small dense convolutions in the NumPy runtime (kernels/cpu/depthwise.py
and the prepared Conv in kernels/cpu/prepared.py) against ONNX Runtime on one-node models.

Covers strides 1/2, dilations, asymmetric pads, auto_pad SAME_UPPER/LOWER/VALID, pads wider than
the kernel, batch > 1, channel multiplier > 1, bias or none, 1-D/3-D convs, and graphopt's
FusedConv with an activation (expected: ORT on the equivalent Conv + activation model)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from graphopt.kernels.cpu.depthwise import RowWideConv
from graphopt.kernels.cpu.nn import conv_kernel, conv_pads
from graphopt.kernels.cpu.prepared import prepare_conv
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RTOL, ATOL = 1e-4, 1e-4


def conv_model(x_shape, w, bias, attrs, activation=None, fused=False):
    """One Conv (or ai.graphopt FusedConv) with constant weight/bias, optionally + an activation node."""
    inits = [numpy_helper.from_array(w, "W")]
    ins = ["X", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
        ins.append("B")
    nodes = []
    if fused:
        act, params = activation or ("Identity", [])
        extra = {"activation_params": params} if params else {}
        nodes.append(helper.make_node("FusedConv", ins, ["Y"], domain="ai.graphopt", activation=act,
                                      **extra, **attrs))
    else:
        nodes.append(helper.make_node("Conv", ins, ["C" if activation else "Y"], **attrs))
        if activation:
            act, params = activation
            extra = {"alpha": params[0]} if act == "LeakyRelu" else {}
            nodes.append(helper.make_node(act, ["C"], ["Y"], **extra))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * len(x_shape))], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.graphopt", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if not fused:
        onnx.checker.check_model(model)
    return model


def ort_run(model, feed):
    return ort_session(model).run(None, feed)  # optimizations off: the unoptimized model


# (name, N, C_in, C_out, group, spatial, kernel, attrs, bias)
CASES = [
    ("dw3x3_s1", 1, 16, 16, 16, (14, 14), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("dw3x3_s2_odd", 1, 16, 16, 16, (15, 15), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, False),
    ("dw3x3_s2_even", 1, 8, 8, 8, (16, 16), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    ("dw3x3_dil2", 1, 8, 8, 8, (13, 12), (3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, True),
    ("dw3x3_dil_2x3_asym", 1, 6, 6, 6, (11, 13), (3, 3), {"pads": [1, 3, 2, 0], "dilations": [2, 3]}, False),
    ("dw3x3_asym_pads", 1, 8, 8, 8, (10, 9), (3, 3), {"pads": [0, 1, 2, 1]}, True),
    ("dw3x3_left_only", 1, 8, 8, 8, (10, 9), (3, 3), {"pads": [1, 2, 1, 0]}, False),
    ("dw5x5_same_upper", 1, 8, 8, 8, (9, 11), (5, 5), {"auto_pad": "SAME_UPPER"}, True),
    ("dw4x4_same_lower", 1, 8, 8, 8, (9, 10), (4, 4), {"auto_pad": "SAME_LOWER"}, False),
    ("dw4x4_same_upper", 1, 8, 8, 8, (9, 10), (4, 4), {"auto_pad": "SAME_UPPER"}, True),
    ("dw3x3_s2_same_upper", 1, 8, 8, 8, (9, 10), (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    ("dw3x3_valid", 1, 8, 8, 8, (9, 10), (3, 3), {"auto_pad": "VALID"}, True),
    ("dw3x3_wide_pads", 1, 4, 4, 4, (6, 5), (3, 3), {"pads": [2, 3, 3, 4]}, True),
    ("dw1x3", 1, 8, 8, 8, (7, 9), (1, 3), {"pads": [0, 1, 0, 1]}, False),
    ("dw3x1", 1, 8, 8, 8, (7, 9), (3, 1), {"pads": [1, 0, 1, 0]}, True),
    ("dw3x3_batch3", 3, 12, 12, 12, (10, 10), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("dw3x3_s1_big", 1, 40, 40, 40, (64, 60), (3, 3), {"pads": [1, 2, 1, 0]}, True),
    ("dw3x3_s2_batch2", 2, 12, 12, 12, (11, 10), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, False),
    ("dw3x3_s2_big", 1, 32, 32, 32, (112, 111), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    ("dw5x5_s2_big_asym", 1, 16, 16, 16, (99, 120), (5, 5), {"pads": [1, 2, 3, 0], "strides": [2, 2]}, False),
    ("dw_multiplier2", 1, 8, 16, 8, (9, 9), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("dw_multiplier3_batch2", 2, 4, 12, 4, (8, 7), (3, 3), {"pads": [1, 1, 1, 1]}, False),
    ("dw_multiplier2_s2", 1, 8, 16, 8, (9, 9), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    ("grouped3x3", 1, 12, 24, 3, (10, 10), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("grouped3x3_batch2_nobias", 2, 16, 8, 4, (9, 11), (3, 3), {"pads": [1, 0, 1, 2]}, False),
    ("grouped3x3_s2", 1, 12, 24, 3, (10, 10), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    ("grouped1x1_g4", 1, 16, 16, 4, (7, 7), (1, 1), {}, True),
    ("grouped1x1_g3_batch2", 2, 12, 24, 3, (5, 6), (1, 1), {}, False),
    ("dense3x3_small", 1, 8, 6, 1, (8, 8), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("dense3x3_small_batch2", 2, 5, 7, 1, (6, 7), (3, 3), {"pads": [0, 2, 1, 0]}, False),
    ("dense3x3_large", 1, 4, 4, 1, (20, 20), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("dense3x3_winograd_sized", 1, 40, 36, 1, (16, 16), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("dense3x3_winograd_odd_nobias_batch2", 2, 64, 96, 1, (29, 27), (3, 3), {"pads": [1, 1, 1, 1]}, False),
    ("dense3x3_winograd_bias", 1, 96, 64, 1, (14, 14), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    # columns past depthwise.SLAB_MIN_BYTES: copied and multiplied a slab of output rows at a time
    ("dense3x3_row_slabs", 1, 48, 8, 1, (100, 110), (3, 3), {"pads": [1, 2, 0, 1]}, True),
    ("dense3x3_s2_row_slabs_batch2", 2, 40, 6, 1, (150, 131), (3, 3), {"pads": [0, 1, 2, 1], "strides": [2, 2]},
     False),
    ("dw1d_k5", 1, 8, 8, 8, (20,), (5,), {"pads": [2, 2]}, True),
    ("dense1d_s2", 2, 6, 10, 1, (33,), (7,), {"pads": [3, 2], "strides": [2]}, True),
    ("dw1d_dil2_asym", 2, 6, 6, 6, (17,), (3,), {"pads": [3, 1], "dilations": [2]}, False),
    ("dw3d", 1, 4, 4, 4, (5, 6, 7), (3, 3, 3), {"pads": [1] * 6}, True),
    # a batch of small outputs: one GEMM over the batch (prepared.PreparedConv._batch_merged)
    ("dense3x3_batch4_merged", 4, 64, 64, 1, (6, 5), (3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("pointwise_batch3_merged", 3, 256, 160, 1, (4, 4), (1, 1), {}, False),
    ("dense1d_s2_batch4_merged", 4, 129, 128, 1, (9,), (3,), {"pads": [1, 1], "strides": [2]}, True),
    ("stft_like_merged", 4, 1, 258, 1, (832,), (256,), {"strides": [128]}, True),
    # a wide kernel with a stride: plain im2col, not row-wide
    ("stft_like_k64_s32", 2, 1, 66, 1, (200,), (64,), {"strides": [32], "pads": [5, 3]}, False),
    # few columns: one gather through an index (kernels/cpu/conv_gather.py), bias as a weight column
    ("gather_1d_frames", 1, 129, 128, 1, (4,), (3,), {"pads": [1, 1]}, True),
    ("gather_1d_s2_nobias", 1, 64, 64, 1, (2,), (3,), {"pads": [1, 1], "strides": [2]}, False),
    ("gather_2d_dil_asym", 1, 8, 12, 1, (5, 6), (3, 3), {"pads": [2, 0, 1, 3], "dilations": [2, 1]}, True),
    ("gather_2d_s2_same_upper_batch2", 2, 6, 10, 1, (7, 9), (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    ("gather_2d_pads_past_kernel", 1, 3, 5, 1, (3, 3), (3, 3), {"pads": [3, 2, 4, 3]}, False),
    ("gather_3d", 1, 3, 4, 1, (3, 4, 5), (2, 3, 3), {"pads": [1, 0, 1, 1, 1, 0]}, True),
]
GATHERED = {c[0] for c in CASES if c[0].startswith("gather_")}
WINOGRAD = {"dense3x3_winograd_odd_nobias_batch2", "dense3x3_winograd_bias"}


def make_case(n, cin, cout, group, spatial, kernel, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin) + spatial).astype(np.float32)
    w = rng.standard_normal((cout, cin // group) + kernel).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    return x, w, b


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_matches_ort(case):
    name, n, cin, cout, group, spatial, kernel, attrs, bias = case
    x, w, b = make_case(n, cin, cout, group, spatial, kernel, bias, seed=len(name))
    model = conv_model(x.shape, w, b, {"group": group, "kernel_shape": list(kernel), **attrs})
    want = ort_run(model, {"X": x})[0]
    sess = Session(model)
    got = sess.run(None, {"X": x})[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if name in GATHERED | WINOGRAD:  # the case exercises the path it is named for
        conv = prepare_conv({"group": group, "kernel_shape": list(kernel), "strides": None, "dilations": None,
                             "pads": None, "auto_pad": "NOTSET", **attrs}, [None, w, b], conv_kernel)
        path = conv._geometry(x.shape)
        assert path.gather is not None if name in GATHERED else path.wino
    # a second run on other values reuses the buffers the first one filled (and scratch it left dirty)
    x2 = (x * -2.0 + 1.0).astype(np.float32)
    again = sess.run(None, {"X": x2})[0]
    np.testing.assert_allclose(again, ort_run(model, {"X": x2})[0], rtol=RTOL, atol=ATOL)


ROW_WIDE = [c for c in CASES if 1 <= len(c[5]) <= 2 and any(k > 1 for k in c[6])]


def row_wide_run(case, seed):
    """(the row-wide kernel's output, the plan it made, ORT's output) for a CASES entry."""
    name, n, cin, cout, group, spatial, kernel, attrs, bias = case
    x, w, b = make_case(n, cin, cout, group, spatial, kernel, bias, seed=seed)
    model = conv_model(x.shape, w, b, {"group": group, "kernel_shape": list(kernel), **attrs})
    nsp = len(spatial)
    strides = attrs.get("strides") or [1] * nsp
    begin, end, out = conv_pads(list(spatial), list(kernel), strides, attrs.get("dilations"),
                                attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    kk = int(np.prod(kernel))
    conv = RowWideConv(w.reshape(group, cout // group, (cin // group) * kk), list(kernel),
                       attrs.get("dilations") or [1] * nsp)
    got = conv(x, begin, end, out, b, strides)
    (plan,) = conv._plans.values()
    return got, plan, ort_run(model, {"X": x})[0]


@pytest.mark.parametrize("case", ROW_WIDE, ids=[c[0] for c in ROW_WIDE])
def test_row_wide_kernel_matches_ort(case):
    """The row-wide kernel itself, whatever prepare_conv would pick for the shape."""
    got, plan, want = row_wide_run(case, seed=len(case[0]) + 1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert (plan.rows < plan.ho) == ("row_slabs" in case[0])  # the case exercises the path it is named for


def test_row_wide_cases_cover_both_row_layouts():
    """Rows with zero columns between them (no wrapped reads to zero) and rows as wide as the input."""
    cases = {c[0]: c for c in ROW_WIDE}
    gapped = {"dw5x5_same_upper", "dw3x3_valid", "dw3x3_wide_pads", "dw1d_k5", "dw4x4_same_lower"}
    wrapped = {"dw3x3_s1", "dw3x3_s2_odd", "dw3x3_asym_pads", "dense3x3_small", "dw5x5_s2_big_asym"}
    for name in gapped | wrapped:
        assert row_wide_run(cases[name], seed=1)[1].gapped == (name in gapped), name


def test_prepared_conv_path_choice():
    """The model-level tests above only exercise the new kernel if prepare_conv selects it."""
    x, w, b = make_case(1, 32, 32, 32, (14, 14), (3, 3), True, seed=3)
    at = {"group": 32, "kernel_shape": [3, 3], "strides": [1, 1], "dilations": [1, 1], "pads": [1] * 4,
          "auto_pad": "NOTSET"}
    conv = prepare_conv(at, [None, w, b], conv_kernel)
    assert conv._geometry(x.shape).rowwide
    strided = prepare_conv({**at, "strides": [2, 2]}, [None, w, b], conv_kernel)
    assert strided._geometry(x.shape).rowwide
    pointwise = prepare_conv({**at, "kernel_shape": [1, 1], "pads": [0] * 4}, [None, w[:, :, :1, :1], b], conv_kernel)
    assert not pointwise._geometry(x.shape).rowwide  # one GEMM on the input as is
    big = np.zeros((256, 256, 3, 3), np.float32)
    dense = prepare_conv({**at, "group": 1}, [None, big, None], conv_kernel)
    path = dense._geometry((1, 256, 28, 28))
    assert path.wino and not path.rowwide  # Winograd's GEMMs dominate
    path = dense._geometry((1, 256, 4, 4))
    assert not path.wino and path.rowwide
    assert dense._geometry((4, 256, 4, 4)).merge  # a batch of 16-pixel outputs: one GEMM
    assert dense._geometry((1, 256, 2, 2)).gather is not None  # 9k columns: one gather
    wide = prepare_conv({"group": 1, "kernel_shape": [256], "strides": [128], "dilations": [1], "pads": [0, 0],
                         "auto_pad": "NOTSET"}, [None, np.zeros((16, 1, 256), np.float32), None], conv_kernel)
    assert not wide._geometry((1, 1, 832)).rowwide  # a copy per kernel column: plain im2col instead


@pytest.mark.parametrize("act", [("Relu", []), ("LeakyRelu", [0.1]), ("Sigmoid", [])], ids=lambda a: a[0])
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_conv_depthwise_activation(act, stride):
    x, w, b = make_case(2, 12, 12, 12, (9, 10), (3, 3), True, seed=7)
    attrs = {"group": 12, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [stride, stride]}
    want = ort_run(conv_model(x.shape, w, b, attrs, activation=act), {"X": x})[0]
    got = Session(conv_model(x.shape, w, b, attrs, activation=act, fused=True)).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_float64_depthwise():
    x, w, b = make_case(2, 8, 8, 8, (9, 10), (3, 3), True, seed=11)
    x, w, b = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    model = conv_model(x.shape, w, b, {"group": 8, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    # ORT has no double Conv: the expected values come from onnx.reference (the spec's own code)
    want = ReferenceEvaluator(model).run(None, {"X": x})[0]
    got = Session(model).run(None, {"X": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
