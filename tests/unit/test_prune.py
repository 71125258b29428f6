"""Pruning. Channel mode is checked on a model whose lowest-norm channels are exactly zero (weight,
bias and the BatchNormalization shift): removing them must leave ORT's outputs unchanged, while the
weight shapes really shrink. Expected outputs come from ORT on the original model."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from graphopt.cli.main import main
from graphopt.passes.prune import prune

CHAIN = """<ir_version: 8, opset_import: ["": 17]>
chain (float[N,3,8,8] x) => (float[N,5] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  n1 = BatchNormalization(c1, s1, t1, m1, v1)
  r1 = Relu(n1)
  d1 = Conv<group=8, pads=[1,1,1,1]>(r1, wd, bd)
  h1 = HardSigmoid(d1)
  g1 = Mul(d1, h1)
  c2 = Conv(g1, w2, b2)
  r2 = Relu(c2)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  y = Gemm<transB=1>(f, w3, b3)
}"""
DEAD = [1, 4, 6]  # output channels of c1 that carry nothing


def _chain(seed=0):
    model = onnx.parser.parse_model(CHAIN)
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8) * 0.1
    w1[DEAD], b1[DEAD] = 0.0, 0.0
    s1, t1, m1, v1 = rng.uniform(0.5, 1.5, 8), rng.normal(size=8) * 0.1, rng.normal(size=8) * 0.1, rng.uniform(0.5, 2, 8)
    t1[DEAD], m1[DEAD] = 0.0, 0.0  # BN maps 0 to 0 on the dead channels
    wd, bd = rng.normal(size=(8, 1, 3, 3)), rng.normal(size=8) * 0.1
    bd[DEAD] = 0.0
    w2, b2 = rng.normal(size=(6, 8, 1, 1)), rng.normal(size=6)
    w2[[0, 3]] *= 1e-3  # tiny but non-zero: the channel pruning of c2 removes these two
    b2[[0, 3]] = -10.0  # ... and their ReLU output is 0 on every input here
    w3, b3 = rng.normal(size=(5, 6)), rng.normal(size=5)
    for name, v in dict(w1=w1, b1=b1, s1=s1, t1=t1, m1=m1, v1=v1, wd=wd, bd=bd, w2=w2, b2=b2, w3=w3, b3=b3).items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(v.astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _weight(model, node_output):
    node = next(n for n in model.graph.node if n.output[0] == node_output)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    return onnx.numpy_helper.to_array(init)


def test_channel_pruning_shrinks_shapes_and_keeps_outputs():
    model = _chain()
    pruned, report = prune(model, 0.375, "channel", sample_shapes={"x": (1, 3, 8, 8)})
    onnx.checker.check_model(pruned, full_check=True)
    assert _weight(pruned, "c1").shape == (5, 3, 3, 3)       # 3 of 8 channels gone ...
    assert _weight(pruned, "d1").shape == (5, 1, 3, 3)       # ... through BN, ReLU, the depthwise conv,
    assert _weight(pruned, "c2").shape == (4, 5, 1, 1)       # the HardSigmoid gate, into c2's inputs
    assert _weight(pruned, "y").shape == (5, 4)              # c2 lost 2 of 6, followed through GAP+Flatten
    d1 = next(n for n in pruned.graph.node if n.output[0] == "d1")
    assert next(a.i for a in d1.attribute if a.name == "group") == 5
    assert report.params_after < report.params_before and report.flops_after < report.flops_before
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("text, reason", [
    ("""<ir_version: 8, opset_import: ["": 17]>
       g (float[1,4,5,5] x) => (float[1,4,5,5] y) { c = Conv(x, w, b)  a = Add(c, x)  y = Conv(a, w, b) }""",
     "joins the channels with another activation"),
    ("""<ir_version: 8, opset_import: ["": 17]>
       g (float[1,4,5,5] x) => (float[1,4,5,5] y) { y = Conv(x, w, b) }""", "reach the graph output"),
    ("""<ir_version: 8, opset_import: ["": 17]>
       g (float[1,4,5,5] x) => (float[1,8,5,5] y) { c = Conv(x, w, b)  y = Concat<axis=1>(c, x) }""",
     "channels reach the graph output 'y'"),
])
def test_channel_pruning_refuses_what_it_cannot_follow(text, reason):
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w"),
                                    onnx.numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")])
    pruned, report = prune(model, 0.5, "channel")
    assert any(reason in why for why in report.refused.values()), report.refused
    assert not report.pruned and _weight(pruned, pruned.graph.node[0].output[0]).shape == (4, 4, 1, 1)
    onnx.checker.check_model(pruned, full_check=True)


def test_unstructured_zeroes_the_smallest_weights():
    model = _chain()
    pruned, report = prune(model, 0.5, "unstructured")
    w, p = _weight(model, "c2"), _weight(pruned, "c2")
    assert p.shape == w.shape and abs((p == 0).mean() - 0.5) < 0.05
    assert np.abs(w[p == 0]).max() <= np.abs(w[p != 0]).min()
    assert np.array_equal(p[p != 0], w[p != 0])


def test_global_unstructured_uses_one_threshold():
    model = _chain()
    pruned, _ = prune(model, 0.5, "unstructured", scope="global")
    names = ("c1", "c2", "y")  # the producers (depthwise convs are followed, not pruned)
    before = np.concatenate([np.abs(_weight(model, n)).ravel() for n in names])
    after = np.concatenate([_weight(pruned, n).ravel() for n in names])
    assert abs((after == 0).mean() - 0.5) < 0.02
    assert before[after == 0].max() <= before[after != 0].min()  # the smallest half overall, not per layer


def test_two_four_keeps_two_of_every_four_inputs():
    model = _chain()
    pruned, report = prune(model, 0.5, "2:4")
    p = _weight(pruned, "c2")  # (6, 8, 1, 1): groups of 4 along the 8 input channels
    groups = p.reshape(6, 2, 4)
    assert ((groups != 0).sum(-1) <= 2).all()
    assert "c1" not in str(report.pruned) and any("multiple of 4" in r for r in report.refused.values())


def test_cli_prune(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_chain(), src)
    assert main(["compile", str(src), "-o", str(out), "-O0", "--prune", "0.375"]) == 0
    text = capsys.readouterr().out
    assert "prune (channel, ratio 0.375)" in text and "parameters" in text
    assert _weight(onnx.load(out), "c1").shape[0] == 5
    assert main(["compile", str(src), "-o", str(tmp_path / "bad.onnx"), "--prune", "1.5"]) == 2
    assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------ through Concat / Split
def _build(text, shapes, seed=0):
    """Parse `text` and give every name in `shapes` a seeded random initializer (BN means/shifts 0,
    variances positive, so a channel that is exactly 0 stays 0 through BN)."""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        if name.startswith(("mean", "shift")):
            v = np.zeros(shape)
        elif name.startswith(("var", "scale")):
            v = rng.uniform(0.5, 2.0, shape)
        elif isinstance(shape, np.ndarray):
            v = shape
        else:
            v = rng.normal(size=shape)
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(v, v.dtype if v.dtype.kind == "i"
                                                                               else np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def _init(model, name):
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _zero_lowest(model, layers, ratio):
    """Reference model: the original with the weights of the lowest-L2-norm output channels of each
    named Conv (weight name, bias name) set to exactly zero. Those channels then hold the constant
    act(bias), which pruning folds into the next layer's bias: with unpadded consumers, removing the
    channels must reproduce this model exactly."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for wname, bname in layers:
        w, b = _init(model, wname).copy(), _init(model, bname).copy()
        dead = np.argsort(np.sqrt((w.reshape(len(w), -1).astype(np.float64) ** 2).sum(1)))[:int(len(w) * ratio)]
        w[dead] = 0.0
        for t in ref.graph.initializer:
            if t.name in (wname, bname):
                t.CopyFrom(onnx.numpy_helper.from_array(w if t.name == wname else b, t.name))
    return ref


def _run_all(model, feed):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


CONCAT = """<ir_version: 8, opset_import: ["": 17]>
cat (float[N,3,8,8] x) => (float[N,5,8,8] y) {
  a = Conv<pads=[1,1,1,1]>(x, wa, ba)
  ra = Relu(a)
  b = Conv(x, wb, bb)
  rb = Relu(b)
  c = Concat<axis=1>(rb, ra, x)
  n = BatchNormalization(c, scale, shift, mean, var)
  p = MaxPool<kernel_shape=[3,3], pads=[1,1,1,1]>(n)
  y = Conv(p, wy, by)
}"""


def test_channel_pruning_through_concat_slices_the_consumer_at_the_right_offsets():
    positive = np.abs(np.random.default_rng(9).normal(size=12)) + 0.5  # relu(bias) > 0: there is a constant to fold
    model = _build(CONCAT, {"wa": (8, 3, 3, 3), "ba": positive[:8], "wb": (4, 3, 1, 1), "bb": positive[8:], "scale": (15,),
                            "shift": (15,), "mean": (15,), "var": (15,), "wy": (5, 15, 1, 1), "by": (5,)})
    pruned, report = prune(model, 0.25, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert set(report.pruned) == {"Conv:a", "Conv:b"} and "graph output 'y'" in report.refused["Conv:y"]
    # b (4 -> 3) sits before a (8 -> 6) in the Concat, the graph input x (3) stays whole: 3 + 6 + 3
    assert _weight(pruned, "a").shape == (6, 3, 3, 3) and _weight(pruned, "b").shape == (3, 3, 1, 1)
    assert _weight(pruned, "y").shape == (5, 12, 1, 1)
    bn = next(n for n in pruned.graph.node if n.op_type == "BatchNormalization")
    assert all(_init(pruned, i).shape == (12,) for i in bn.input[1:])
    ref = _zero_lowest(model, [("wa", "ba"), ("wb", "bb")], 0.25)
    x = np.random.default_rng(3).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run_all(pruned, {"x": x})[0], _run_all(ref, {"x": x})[0], rtol=1e-4, atol=1e-5)


SPLIT = {  # (opset, how the split sizes are given, first part's size)
    "sizes input": (17, "s0, s1 = Split<axis=1>(r, sizes)", 3),
    "split attribute": (11, "s0, s1 = Split<axis=1, split=[3,5]>(r)", 3),
    "equal (no sizes)": (17, "s0, s1 = Split<axis=1>(r)", 4),
    "num_outputs": (18, "s0, s1 = Split<axis=1, num_outputs=2>(r)", 4),
}


@pytest.mark.parametrize("form", list(SPLIT))
def test_channel_pruning_through_split_updates_the_sizes(form):
    opset, split, first = SPLIT[form]
    text = f"""<ir_version: 8, opset_import: ["": {opset}]>
    sp (float[N,3,6,6] x) => (float[N,4,6,6] y0, float[N,4,4,4] y1) {{
      a = Conv<pads=[1,1,1,1]>(x, wa, ba)
      r = Relu(a)
      {split}
      y0 = Conv(s0, w0, b0)
      h = Sigmoid(s1)
      y1 = Conv(h, w1, b1)
    }}"""
    wa = np.random.default_rng(5).normal(size=(8, 3, 3, 3))
    wa[[1, 6]] *= 0.01  # the two channels to go: one in each part, so both sizes shrink
    shapes = {"wa": wa, "ba": (8,), "w0": (4, first, 1, 1), "b0": (4,), "w1": (4, 8 - first, 3, 3), "b1": (4,)}
    if "sizes" in form:
        shapes["sizes"] = np.array([3, 5], np.int64)
    model = _build(text, shapes)
    pruned, report = prune(model, 0.25, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    assert report.pruned == {"Conv:a": "6/8 channels"}, report.refused
    assert _weight(pruned, "y0").shape[1] == first - 1 and _weight(pruned, "y1").shape[1] == 8 - first - 1
    x = np.random.default_rng(4).normal(size=(2, 3, 6, 6)).astype(np.float32)
    # the dropped channels hold relu(bias) (and sigmoid of it in h): folded into y0's and y1's biases
    ref = _zero_lowest(model, [("wa", "ba")], 0.25)
    for got, want in zip(_run_all(pruned, {"x": x}), _run_all(ref, {"x": x})):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


REFUSE = {
    "Concat on a spatial axis": ("""c = Conv(x, w, b)
        k = Concat<axis=2>(c, x)
        y = Conv(k, w, b)""", "not the channel axis", "float[1,4,8,4] y"),
    "Concat consumer cannot shrink": ("""c = Conv(x, w, b)
        k = Concat<axis=1>(c, x)
        y = Reshape(k, shape)""", "cannot follow channels through 'Reshape:y' (Reshape)", "float[1,128] y"),
    "Concat input channels unknown": ("""c = Conv(x, w, b)
        k = Concat<axis=1>(c, u)
        y = Reshape(k, shape)""", "channel count of 'u' unknown", "float[1,?] y"),
    "Split output is a graph output": ("""c = Conv(x, w, b)
        y, s1 = Split<axis=1>(c, halves)
        r = Relu(s1)""", "channels reach the graph output 'y'", "float[1,2,4,4] y"),
    "Split on a spatial axis": ("""c = Conv(x, w, b)
        s0, s1 = Split<axis=2>(c, halves)
        y = Concat<axis=2>(s1, s0)""", "not the channel axis", "float[1,4,4,4] y"),
    "Split output would be empty": ("""c = Conv(x, w, b)
        s0, s1 = Split<axis=1>(c, one_three)
        t = Concat<axis=1>(s1, s0)
        y = Conv(t, w, b)""", "would empty output 's0'", "float[1,4,4,4] y"),
}


@pytest.mark.parametrize("case", list(REFUSE))
def test_channel_pruning_refuses_concat_split_it_cannot_prove(case):
    body, reason, out = REFUSE[case]
    text = f"""<ir_version: 8, opset_import: ["": 17]>
    g (float[1,4,4,4] x, float[1,C,4,4] u) => ({out}) {{
      {body}
    }}"""
    w = np.random.default_rng(0).normal(size=(4, 4, 1, 1))
    w[0] *= 1e-3  # the lowest-norm channel is the one in s0 when sizes are [1, 3]
    model = _build(text, {"w": w, "b": (4,), "shape": np.array([1, -1], np.int64),
                          "halves": np.array([2, 2], np.int64), "one_three": np.array([1, 3], np.int64)})
    pruned, report = prune(model, 0.25, "channel")
    assert not report.pruned and reason in report.refused["Conv:c"], report.refused
    assert pruned.graph.node == model.graph.node  # the graph is left alone
    assert {t.name: onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer} == \
        {t.name: onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer
         if any(t.name in n.input for n in model.graph.node)}
    onnx.checker.check_model(pruned, full_check=True)


def test_kept_channels_are_rounded_to_a_multiple_of_align():
    model = _build("""<ir_version: 8, opset_import: ["": 17]>
    wide (float[1,3,4,4] x) => (float[1,5,4,4] y) { a = Conv(x, wa, ba)  r = Relu(a)  y = Conv(r, wy, by) }""",
                   {"wa": (32, 3, 1, 1), "ba": (32,), "wy": (5, 32, 1, 1), "by": (5,)})
    _, report = prune(model, 0.3, "channel")  # floor(9.6) = 9 cut -> 23 kept -> rounded up to 24
    assert report.pruned == {"Conv:a": "24/32 channels"}
    pruned, report = prune(model, 0.3, "channel", align=1)
    assert report.pruned == {"Conv:a": "23/32 channels"} and _weight(pruned, "y").shape == (5, 23, 1, 1)
