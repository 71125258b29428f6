"""Channel pruning across joins (a gate's producer taken along, residual streams pruned as one
group), the constants of dropped channels folded into the next bias, ConvTranspose, a transformer
FFN, and subgraph reads. Expected outputs come from ONNX Runtime on the original model (whose
pruned channels are exactly dead) or on a reference with those channels' weights zeroed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt.passes.prune import prune
from test_prune import _build, _run_all, _weight, _zero_lowest


SE = """<ir_version: 8, opset_import: ["": 17]>
se (float[N,3,6,6] x) => (float[N,5,6,6] y) {
  a = Conv<pads=[1,1,1,1]>(x, wa, ba)
  r = Relu(a)
  p = GlobalAveragePool(r)
  s1 = Conv(p, ws1, bs1)
  sr = Relu(s1)
  s2 = Conv(sr, ws2, bs2)
  g = HardSigmoid(s2)
  m = Mul(r, g)
  y = Conv(m, wy, by)
}"""


def test_channel_pruning_takes_the_gate_producer_along():
    """x * hardsigmoid(conv(relu(conv(pool(x))))): the gate's expand conv loses the same channels."""
    rng = np.random.default_rng(8)
    ws1 = rng.normal(size=(4, 8, 1, 1))
    ws1[2] *= 1e-3  # the squeeze conv's channel to go, whatever a's pruning leaves
    wa, ba = rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8)
    wa[[3, 5]] *= 1e-3  # a's channels to go: relu(0) = 0, so x * gate is 0 there and nothing is lost
    ba[[3, 5]] = 0.0
    model = _build(SE, {"wa": wa, "ba": ba, "ws1": ws1, "bs1": (4,), "ws2": (8, 4, 1, 1),
                        "bs2": (8,), "wy": (5, 8, 1, 1), "by": (5,)})
    pruned, report = prune(model, 0.25, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert report.pruned == {"Conv:a": "6/8 channels", "Conv:s2": "6/8 channels (with Conv:a)",
                             "Conv:s1": "3/4 channels"}, report.refused
    assert [_weight(pruned, n).shape[:2] for n in ("a", "s1", "s2", "y")] == [(6, 3), (3, 6), (6, 3), (5, 6)]
    ref = _zero_lowest(model, [("wa", "ba"), ("ws1", "bs1")], 0.25)
    x = np.random.default_rng(2).normal(size=(2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], _run_all(ref, {"x": x})[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("change, reason", [
    (("ws2", (1, 4, 1, 1)), "different widths [1, 8]"),             # a 1-channel gate broadcasts
    (("extra", None), "channels reach the graph output 'z'"),       # the gate is also read elsewhere: z
])
def test_channel_pruning_refuses_gates_it_cannot_shrink(change, reason):
    text = SE if change[0] != "extra" else SE.replace("y = Conv(m, wy, by)", "y = Conv(m, wy, by)\n  z = Relu(g)") \
        .replace("=> (float[N,5,6,6] y)", "=> (float[N,5,6,6] y, float[N,8,1,1] z)")
    shapes = {"wa": (8, 3, 3, 3), "ba": (8,), "ws1": (4, 8, 1, 1), "bs1": (4,), "ws2": (8, 4, 1, 1), "bs2": (8,),
              "wy": (5, 8, 1, 1), "by": (5,)}
    if change[0] == "ws2":
        shapes["ws2"], shapes["bs2"] = change[1], (1,)
    model = _build(text, shapes)
    pruned, report = prune(model, 0.25, "channel")
    assert "Conv:a" not in report.pruned and reason in report.refused["Conv:a"], report.refused
    assert _weight(pruned, "a").shape == (8, 3, 3, 3) and _weight(pruned, "s2").shape[0] == _weight(model, "s2").shape[0]
    onnx.checker.check_model(pruned, full_check=True)


def test_excluded_layers_stay_whole_and_hold_back_the_layer_they_gate():
    model = _build(SE, {"wa": (8, 3, 3, 3), "ba": (8,), "ws1": (4, 8, 1, 1), "bs1": (4,), "ws2": (8, 4, 1, 1),
                        "bs2": (8,), "wy": (5, 8, 1, 1), "by": (5,)})
    pruned, report = prune(model, 0.25, "channel", exclude=["Conv:s2"])
    assert "gate's producer 'Conv:s2' is excluded" in report.refused["Conv:a"]
    assert _weight(pruned, "a").shape[0] == 8 and _weight(pruned, "s2").shape[0] == 8 and "Conv:s1" in report.pruned
    pruned, report = prune(model, 0.5, "unstructured", exclude=["Conv:a"])
    assert np.array_equal(_weight(pruned, "a"), _weight(model, "a")) and "Conv:a" not in report.pruned
    assert (_weight(pruned, "s1") == 0).mean() == 0.5


DW_GEMM = """<ir_version: 8, opset_import: ["": 17]>
dw (float[N,3,8,8] x) => (float[N,4] y) {
  a = Conv<pads=[1,1,1,1]>(x, wa, ba)
  h = HardSwish(a)
  d = Conv<group=8>(h, wd, bd)
  p = GlobalAveragePool(d)
  f = Flatten(p)
  y = Gemm<transB=1>(f, wg, bg)
}"""


def test_dropped_constants_are_folded_through_depthwise_into_the_gemm_bias():
    ba = np.abs(np.random.default_rng(6).normal(size=8)) + 0.5
    model = _build(DW_GEMM, {"wa": (8, 3, 3, 3), "ba": ba, "wd": (8, 1, 3, 3), "bd": (8,), "wg": (4, 8), "bg": (4,)})
    pruned, report = prune(model, 0.25, "channel")
    assert report.pruned == {"Conv:a": "6/8 channels"} and _weight(pruned, "y").shape == (4, 6)
    ref = _zero_lowest(model, [("wa", "ba")], 0.25)
    x = np.random.default_rng(4).normal(size=(2, 3, 8, 8)).astype(np.float32)
    want = _run_all(ref, {"x": x})[0]
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], want, rtol=1e-4, atol=1e-5)
    assert np.abs(_run_all(model, {"x": x})[0] - want).max() > 1e-3  # the reference really differs: not vacuous


def test_conv_transpose_is_pruned_and_followed():
    text = """<ir_version: 8, opset_import: ["": 17]>
    up (float[N,3,4,4] x) => (float[N,4,16,16] y) {
      a = Conv<pads=[1,1,1,1]>(x, wa, ba)
      r = Relu(a)
      t = ConvTranspose<strides=[2,2], kernel_shape=[2,2]>(r, wt, bt)
      s = Relu(t)
      y = ConvTranspose<strides=[2,2], kernel_shape=[2,2]>(s, wu, bu)
    }"""
    rng = np.random.default_rng(3)
    wa, ba, wt, bt = rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8), rng.normal(size=(8, 6, 2, 2)), rng.normal(size=6)
    wa[[1, 4]] *= 1e-3  # a's channels to go, and t's output channel 3 (its weight's axis 1)
    wt[:, 3] *= 1e-3
    ba[[1, 4]], bt[3] = 0.0, 0.0  # relu(0) = 0: a transposed conv gets no folded constant
    model = _build(text, {"wa": wa, "ba": ba, "wt": wt, "bt": bt, "wu": (6, 4, 2, 2), "bu": (4,)})
    pruned, report = prune(model, 0.2, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert report.pruned == {"Conv:a": "7/8 channels", "ConvTranspose:t": "5/6 channels"}, report.refused
    assert _weight(pruned, "t").shape == (7, 5, 2, 2) and _weight(pruned, "y").shape == (5, 4, 2, 2)
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    dead_a = int(np.argmin(np.linalg.norm(wa.reshape(8, -1), axis=1)))
    wa0, wt0 = wa.copy(), wt.copy()
    wa0[dead_a], wt0[:, 3] = 0.0, 0.0
    for t in ref.graph.initializer:
        if t.name in ("wa", "wt"):
            t.CopyFrom(onnx.numpy_helper.from_array((wa0 if t.name == "wa" else wt0).astype(np.float32), t.name))
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], _run_all(ref, {"x": x})[0], rtol=1e-4, atol=1e-5)


FFN = """<ir_version: 8, opset_import: ["": 17]>
ffn (float[N,T,8] x) => (float[N,T,8] y) {
  h = MatMul(x, w1)
  hb = Add(h, b1)
  d = Div(hb, sqrt2)
  e = Erf(d)
  e1 = Add(e, one)
  g = Mul(hb, e1)
  g2 = Mul(g, half)
  o = MatMul(g2, w2)
  y = Add(o, b2)
}"""


def test_transformer_ffn_is_pruned_through_an_erf_gelu_and_the_bias_is_folded():
    rng = np.random.default_rng(11)
    w1 = rng.normal(size=(8, 16))
    w1[:, [2, 9, 13, 14]] *= 0.0  # these hidden units hold gelu(b1) whatever the input
    model = _build(FFN, {"w1": w1, "b1": (16,), "sqrt2": np.array(np.sqrt(2.0)), "one": np.array(1.0),
                         "half": np.array(0.5), "w2": (16, 8), "b2": (8,)})
    pruned, report = prune(model, 0.25, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert report.pruned == {"MatMul:h": "12/16 channels"} and _weight(pruned, "o").shape == (12, 8), report.refused
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    # the removed units were constant: the original model is its own reference
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], _run_all(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_channels_read_inside_a_subgraph_are_not_followed():
    model = _build("""<ir_version: 8, opset_import: ["": 17]>
    g (float[1,4,4,4] x, bool c) => (float[1,4,4,4] y, float[1,4,4,4] z) {
      a = Conv(x, w, b)
      y = Conv(a, w, b)
      z = If(c) <then_branch = t () => (float[1,4,4,4] o) { o = Identity(a) },
                 else_branch = e () => (float[1,4,4,4] o) { o = Identity(x) }>
    }""", {"w": (4, 4, 1, 1), "b": (4,)})
    pruned, report = prune(model, 0.25, "channel")
    assert "'a' is read inside a subgraph" in report.refused["Conv:a"] and not report.pruned
    assert pruned.graph.node == model.graph.node


def test_a_gate_computed_from_the_pruned_channels_themselves():
    """x * sigmoid(conv(pool(x))) with one conv: it loses both input and output channels."""
    text = """<ir_version: 8, opset_import: ["": 17]>
    eca (float[N,3,6,6] x) => (float[N,5,6,6] y) {
      a = Conv<pads=[1,1,1,1]>(x, wa, ba)
      r = Relu(a)
      p = GlobalAveragePool(r)
      s = Conv(p, ws, bs)
      g = Sigmoid(s)
      m = Mul(r, g)
      y = Conv(m, wy, by)
    }"""
    rng = np.random.default_rng(12)
    wa, ba = rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8)
    wa[[0, 6]], ba[[0, 6]] = 0.0, -1.0  # relu(-1) = 0: the channels to go carry nothing
    model = _build(text, {"wa": wa, "ba": ba, "ws": (8, 8, 1, 1), "bs": (8,), "wy": (5, 8, 1, 1), "by": (5,)})
    pruned, report = prune(model, 0.25, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert report.pruned == {"Conv:a": "6/8 channels", "Conv:s": "6/8 channels (with Conv:a)"}, report.refused
    assert _weight(pruned, "s").shape == (6, 6, 1, 1) and _weight(pruned, "y").shape == (5, 6, 1, 1)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], _run_all(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


RESNET = """<ir_version: 8, opset_import: ["": 17]>
res (float[N,3,6,6] x) => (float[N,5] y) {
  s = Conv<pads=[1,1,1,1]>(x, ws, bs)
  r0 = Relu(s)
  a = Conv(r0, wa, ba)
  ra = Relu(a)
  b = Conv(ra, wb, bb)
  j1 = Add(b, r0)
  r1 = Relu(j1)
  c = Conv(r1, wc, bc)
  rc = Relu(c)
  d = Conv(rc, wd, bd)
  j2 = Add(d, r1)
  r2 = Relu(j2)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  y = Gemm<transB=1>(f, wy, by)
}"""


def test_residual_stream_is_pruned_as_one_group():
    """The stem and both blocks' last convs write into one stream: they lose the same channels."""
    rng = np.random.default_rng(13)
    shapes = {"ws": (8, 3, 3, 3), "wa": (4, 8, 1, 1), "wb": (8, 4, 1, 1), "wc": (4, 8, 1, 1), "wd": (8, 4, 1, 1)}
    values = {}
    for w, shape in shapes.items():
        values[w], values["b" + w[1]] = rng.normal(size=shape), rng.normal(size=shape[0]) * 0.1
        dead = [2, 5] if shape[0] == 8 else [1]  # the stream's channels 2 and 5 are 0 in every writer
        values[w][dead], values["b" + w[1]][dead] = 0.0, 0.0
    model = _build(RESNET, {**values, "wy": (5, 8), "by": (5,)})
    pruned, report = prune(model, 0.25, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert report.pruned == {"Conv:s": "6/8 channels", "Conv:b": "6/8 channels (with Conv:s)",
                             "Conv:d": "6/8 channels (with Conv:s)", "Conv:a": "3/4 channels",
                             "Conv:c": "3/4 channels"}, report.refused
    assert [_weight(pruned, n).shape[:2] for n in "sabcd"] == [(6, 3), (3, 6), (6, 3), (3, 6), (6, 3)]
    assert _weight(pruned, "y").shape == (5, 6)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], _run_all(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    # a writer left whole (excluded) holds the whole stream back
    _, report = prune(model, 0.25, "channel", exclude=["Conv:d"])
    assert set(report.pruned) == {"Conv:a", "Conv:c"} and "'Conv:d' is excluded" in report.refused["Conv:s"]
