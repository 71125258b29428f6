"""ORT's com.microsoft DynamicQuantizeLSTM (kernels/cpu/contrib_quant_lstm.py) against ORT on one-node
models: uint8 and int8 weights, per-direction and per-column scales and zero points, forward and
bidirectional, initial states. The int8 weights stay within +-60 so that ORT's u8 x s8 kernels do not
saturate their int16 pair sums (CPUs without VNNI; see test_integer_ops_exact.py): then graphopt and
ORT agree to float rounding. Peepholes are refused when the Session is built."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import Unsupported
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(0)
SEQ, BATCH, INPUT, HIDDEN = 6, 2, 8, 5


def model(wdt, per_column, dirs, peephole=False):
    H = HIDDEN
    lo, hi = (68, 189) if wdt == np.uint8 else (-60, 61)
    w = RNG.integers(lo, hi, (dirs, INPUT, 4 * H)).astype(wdt)
    r = RNG.integers(lo, hi, (dirs, H, 4 * H)).astype(wdt)
    shape = (dirs, 4 * H) if per_column else (dirs,)
    zp = np.full(shape, 128 if wdt == np.uint8 else 0, wdt)
    consts = {"W": w, "R": r, "B": RNG.standard_normal((dirs, 8 * H)).astype(np.float32),
              "ws": (RNG.random(shape) * 0.02 + 0.005).astype(np.float32), "wz": zp,
              "rs": (RNG.random(shape) * 0.02 + 0.005).astype(np.float32), "rz": zp.copy()}
    if peephole:
        consts["P"] = RNG.standard_normal((dirs, 3 * H)).astype(np.float32)
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "W", "R", "B", "", "h0", "c0", "P" if peephole else "",
                                                   "ws", "wz", "rs", "rz"], ["y", "yh", "yc"], domain="com.microsoft",
                            hidden_size=H, direction="bidirectional" if dirs == 2 else "forward")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, INPUT]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, BATCH, H]),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, [dirs, BATCH, H])]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                                    for n in ("y", "yh", "yc")],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    feed = {"x": RNG.standard_normal((SEQ, BATCH, INPUT)).astype(np.float32),
            "h0": (RNG.standard_normal((dirs, BATCH, H)) * 0.5).astype(np.float32),
            "c0": RNG.standard_normal((dirs, BATCH, H)).astype(np.float32)}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)]), feed


@pytest.mark.parametrize("wdt", [np.uint8, np.int8], ids=["uint8", "int8"])
@pytest.mark.parametrize("per_column", [False, True], ids=["per_direction", "per_column"])
@pytest.mark.parametrize("dirs", [1, 2], ids=["forward", "bidirectional"])
def test_dynamic_quantize_lstm_matches_ort(wdt, per_column, dirs):
    m, feed = model(wdt, per_column, dirs)
    want = ort_session(m).run(None, feed)
    got = Session(m).run(None, feed)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_dynamic_quantize_lstm_with_peepholes_is_refused_at_build():
    m, _ = model(np.uint8, False, 1, peephole=True)
    with pytest.raises(Unsupported, match="DynamicQuantizeLSTM \\(peepholes"):
        Session(m)
