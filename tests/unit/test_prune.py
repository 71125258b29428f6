"""Pruning. Channel mode is checked on a model whose lowest-norm channels are exactly zero (weight,
bias and the BatchNormalization shift): removing them must leave ORT's outputs unchanged, while the
weight shapes really shrink. Expected outputs come from ORT on the original model."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from graphopt.cli import main
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
     "cannot follow channels through 'Concat"),
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
