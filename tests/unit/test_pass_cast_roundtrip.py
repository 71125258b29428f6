"""eliminate-noops, rule cast-roundtrip: Cast back to the input's type after a widening Cast is x.
(Found by the fuzzer: ONNX Runtime loses a Cast->Cast value read only by If subgraphs.)"""
import numpy as np
import pytest

from passcheck import check_pass, hits

H18 = '<ir_version: 8, opset_import: ["" : 18]>'
PASSES = ["infer-shapes", "eliminate-noops"]


def _model(src, mid, back):
    return H18 + f"""
        g ({src}[2,3] x) => (float[2,3] y) {{
            a = Cast<to = {mid}>(x)
            b = Cast<to = {back}>(a)
            y = Relu(b)
        }}"""


def test_float_double_float_removed():
    result = check_pass(_model("float", 11, 1), PASSES, expect_ops=["Relu"])
    assert hits(result, "eliminate-noops")["cast-roundtrip"] == 1


def test_half_float_half_removed():
    result = check_pass(H18 + """
        g (float16[2,3] x) => (float16[2,3] y) {
            a = Cast<to = 1>(x)
            b = Cast<to = 10>(a)
            y = Relu(b)
        }""", PASSES, expect_ops=["Relu"])
    assert hits(result, "eliminate-noops")["cast-roundtrip"] == 1


@pytest.mark.parametrize("src,mid,back", [("float", 10, 1),   # float -> half rounds
                                          ("double", 1, 11),  # double -> float rounds
                                          ("float", 6, 1)])   # float -> int32 truncates
def test_lossy_round_trip_stays(src, mid, back):
    feeds = [{"x": np.array([[0.1, 1.7, -2.5], [1e-9, 3.3, 70000.5]],
                            np.float32 if src == "float" else np.float64)}]
    text = _model(src, mid, back).replace("=> (float[2,3] y)", f"=> ({'float' if back == 1 else 'double'}[2,3] y)")
    result = check_pass(text, PASSES, expect_ops=["Cast", "Cast", "Relu"], feeds=feeds)
    assert hits(result, "eliminate-noops")["cast-roundtrip"] == 0


def test_int64_through_double_stays():
    # 2**53 + 1 does not survive float64
    result = check_pass(H18 + """
        g (int64[2] x) => (int64[2] y) {
            a = Cast<to = 11>(x)
            b = Cast<to = 7>(a)
            y = Neg(b)
        }""", PASSES, expect_ops=["Cast", "Cast", "Neg"], feeds=[{"x": np.array([2**53 + 1, 3], np.int64)}])
    assert hits(result, "eliminate-noops")["cast-roundtrip"] == 0


def test_int32_through_float_stays():
    result = check_pass(H18 + """
        g (int32[2] x) => (int32[2] y) {
            a = Cast<to = 1>(x)
            b = Cast<to = 6>(a)
            y = Neg(b)
        }""", PASSES, expect_ops=["Cast", "Cast", "Neg"], feeds=[{"x": np.array([2**24 + 1, 3], np.int32)}])
    assert hits(result, "eliminate-noops")["cast-roundtrip"] == 0


def test_inner_cast_with_other_users_stays_for_them():
    result = check_pass(H18 + """
        g (float[2,3] x) => (float[2,3] y, double[2,3] d) {
            d = Cast<to = 11>(x)
            b = Cast<to = 1>(d)
            y = Relu(b)
        }""", PASSES, expect_ops=["Cast", "Relu"])
    assert hits(result, "eliminate-noops")["cast-roundtrip"] == 1
