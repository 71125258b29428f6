"""Recovery after channel pruning (passes/prune_recover.py): every refit layer equals a NumPy
least-squares solve of the same ridge problem, and end-to-end agreement with the original model
(run in ONNX Runtime) improves on held-out data."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from graphopt.cli import main
from graphopt.passes.prune import prune
from graphopt.passes.prune_recover import recover

# Conv 3x3, strided Conv, a depthwise Conv between two pointwise ones, a 1-D-free Gemm head and a
# MatMul: the layer kinds recovery refits.
CNN = """<ir_version: 8, opset_import: ["": 17]>
cnn (float[N,3,12,12] x) => (float[N,6] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv<pads=[1,1,1,1], strides=[2,2]>(r1, w2, b2)
  r2 = Relu(c2)
  c3 = Conv<group=24, pads=[1,1,1,1]>(r2, w3, b3)
  r3 = Relu(c3)
  c4 = Conv(r3, w4, b4)
  r4 = Relu(c4)
  p = GlobalAveragePool(r4)
  f = Flatten(p)
  h = Gemm<transB=1>(f, w5, b5)
  r5 = Relu(h)
  y = MatMul(r5, w6)
}"""
SHAPES = {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (24, 16, 3, 3), "b2": (24,), "w3": (24, 1, 3, 3), "b3": (24,),
          "w4": (32, 24, 1, 1), "b4": (32,), "w5": (20, 32), "b5": (20,), "w6": (20, 6)}


def _cnn(seed=0) -> onnx.ModelProto:
    model = onnx.parser.parse_model(CNN)
    rng = np.random.default_rng(seed)
    for name, shape in SHAPES.items():
        if name.startswith("b"):
            value = rng.normal(0.05, 0.1, shape)
        else:  # output channels of very different norms, as trained layers have
            fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[-1 if name == "w5" else 0]
            value = rng.normal(0, 1, shape) * np.sqrt(2 / fan_in)
            value *= rng.uniform(0.2, 1.5, (shape[0],) + (1,) * (len(shape) - 1))
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    onnx.checker.check_model(model)
    return model


def _feeds(count, seed):
    """Smooth images (coarse noise upsampled), like natural pixels correlated with their neighbours."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (count, 3, 4, 4)).astype(np.float32)
    return [{"x": np.kron(c[None], np.ones((1, 1, 3, 3), np.float32)) + 0.1 * rng.normal(0, 1, (1, 3, 12, 12))
             .astype(np.float32)} for c in coarse]


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _values(model, names, feed):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return _session(m).run(names, feed)


def _init(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _producer(model, output):
    return next(n for n in model.graph.node if n.output[0] == output)


def _im2col(x, k, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    rows = [x[b, :, i * stride:i * stride + k, j * stride:j * stride + k].reshape(-1)
            for b in range(n) for i in range(ho) for j in range(wo)]
    return np.asarray(rows, np.float64)


def _ridge_lstsq(x, y, w0, damp):
    """argmin ||X W - Y||^2 + lam ||W - W0||^2 as an ordinary least-squares problem (stacked rows)."""
    lam = damp * np.mean(np.sum(x * x, axis=0))
    a = np.concatenate([x, np.sqrt(lam) * np.eye(x.shape[1])])
    b = np.concatenate([y, np.sqrt(lam) * w0])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def test_each_refit_layer_matches_numpy_least_squares():
    teacher = _cnn()
    calib = _feeds(12, 1)
    pruned, rep = prune(teacher, 0.25, "channel", align=1)
    assert {"c1", "c2", "c4"} <= {k.split(":")[-1] for k in rep.pruned}
    damp = 1e-2
    refit, rrep = recover(teacher, pruned, rep.kept, calib, damp=damp, rows_per_feed=10 ** 6)
    # c1 reads the model input: its kept rows already fit; c2 c3 c4 h lose inputs, y too (h was pruned)
    assert sorted(k.split(":")[-1] for k in rrep.layers) == ["c2", "c3", "c4", "h", "y"] and not rrep.skipped
    assert _init(refit, _producer(refit, "c1").input[1]) is not None
    checked = 0
    for out, k, stride, pad in (("c2", 3, 2, 1), ("c4", 1, 1, 0), ("h", None, None, None)):
        node_p, node_r = _producer(pruned, out), _producer(refit, out)
        w0, b0 = _init(pruned, node_p.input[1]), _init(pruned, node_p.input[2])
        keep = rep.kept.get(node_p.name or f"{node_p.op_type}:{out}", np.arange(_init(teacher, _producer(teacher, out).input[1]).shape[0]))
        xs, ys = [], []
        for feed in calib:  # the layer's input in the refit model (refit upstream), the teacher's output
            xs.append(_values(refit, [node_r.input[0]], feed)[0])
            ys.append(_values(teacher, [out], feed)[0])
        if k is None:  # Gemm transB: y = x W^T + b
            x, y = np.concatenate(xs), np.concatenate(ys)[:, keep]
            wk = np.concatenate([w0.T, b0[None]])
        else:
            x = np.concatenate([_im2col(v, k, stride, pad) for v in xs])
            y = np.concatenate([v[:, keep].transpose(0, 2, 3, 1).reshape(-1, keep.size) for v in ys])
            wk = np.concatenate([w0.reshape(w0.shape[0], -1).T, b0[None]])
        x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        want = _ridge_lstsq(x1, y.astype(np.float64), wk.astype(np.float64), damp)
        w1, b1 = _init(refit, node_r.input[1]), _init(refit, node_r.input[2])
        got = np.concatenate([(w1.T if k is None else w1.reshape(w1.shape[0], -1).T), b1[None]])
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * np.abs(want).max())
        fit = rrep.layers[node_r.name or f"{node_r.op_type}:{out}"]
        assert fit.error_after < fit.error_before
        checked += 1
    assert checked == 3


def test_depthwise_refit_is_one_solve_per_channel():
    teacher = _cnn(3)
    calib = _feeds(8, 2)
    pruned, rep = prune(teacher, 0.25, "channel", align=1)
    damp = 1e-3
    refit, _ = recover(teacher, pruned, rep.kept, calib, damp=damp, rows_per_feed=10 ** 6)
    node_p, node_r = _producer(pruned, "c3"), _producer(refit, "c3")
    keep = rep.kept["Conv:c3"]
    assert keep.size == 18 and _init(refit, node_r.input[1]).shape == (18, 1, 3, 3)
    xs = [_values(refit, ["r2"], f)[0] for f in calib]
    ys = [_values(teacher, ["c3"], f)[0] for f in calib]
    w0, b0 = _init(pruned, node_p.input[1]), _init(pruned, node_p.input[2])
    w1, b1 = _init(refit, node_r.input[1]), _init(refit, node_r.input[2])
    for j in (0, 7, 17):
        x = np.concatenate([_im2col(v[:, j:j + 1], 3, 1, 1) for v in xs])
        x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        y = np.concatenate([v[:, keep[j]].reshape(-1) for v in ys])[:, None]
        want = _ridge_lstsq(x1, y, np.concatenate([w0[j].ravel(), b0[j:j + 1]])[:, None], damp)[:, 0]
        np.testing.assert_allclose(np.concatenate([w1[j].ravel(), b1[j:j + 1]]), want, rtol=2e-3, atol=1e-5)


def test_recovery_improves_held_out_agreement_with_the_original():
    teacher = _cnn(5)
    calib, held = _feeds(24, 10), _feeds(16, 11)
    pruned, rep = prune(teacher, 0.4, "channel", align=1)
    refit, rrep = recover(teacher, pruned, rep.kept, calib)
    onnx.checker.check_model(refit)
    ref = [_session(teacher).run(None, f)[0] for f in held]  # ORT on the unpruned model

    def rel_error(model):
        s = _session(model)
        got = [s.run(None, f)[0] for f in held]
        return float(np.mean([np.linalg.norm(g - r) / np.linalg.norm(r) for g, r in zip(got, ref)]))

    before, after = rel_error(pruned), rel_error(refit)
    assert after < 0.7 * before, (before, after)
    assert all(f.error_after <= f.error_before for f in rrep.layers.values())
    assert "recover" in rrep.to_text() and "->" in rrep.to_text()


def test_singular_system_is_damped_not_nan():
    """An input channel that is always zero (a dead ReLU) makes X^T X singular: with no damping
    asked for, the solve must still give finite weights, with a note."""
    teacher = _cnn(7)
    w1 = _init(teacher, "b1").copy()
    for t in teacher.graph.initializer:
        if t.name == "w1":
            w = numpy_helper.to_array(t).copy()
            w[0] = 0
            t.CopyFrom(numpy_helper.from_array(w, "w1"))
        if t.name == "b1":
            w1[0] = -1.0  # channel 0 of r1: relu(-1) = 0 everywhere, but its weight norm is not the lowest
            t.CopyFrom(numpy_helper.from_array(w1, "b1"))
    pruned, rep = prune(teacher, 0.25, "channel", align=1)
    refit, rrep = recover(teacher, pruned, rep.kept, _feeds(6, 3), damp=0.0)
    for t in refit.graph.initializer:
        assert np.all(np.isfinite(numpy_helper.to_array(t)))
    assert any("damping" in f.note or "kept" in f.note for f in rrep.layers.values())


def test_cli_prune_with_calib_recovers(tmp_path, capsys):
    src, cal, out = tmp_path / "m.onnx", tmp_path / "cal", tmp_path / "p.onnx"
    onnx.save(_cnn(), src)
    cal.mkdir()
    for i, f in enumerate(_feeds(6, 4)):
        np.savez(cal / f"{i}.npz", **f)
    assert main(["compile", str(src), "-o", str(out), "--prune", "0.3", "--calib", str(cal)]) == 0
    assert "recover (least-squares refit" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(out))
    out2 = tmp_path / "p2.onnx"
    assert main(["compile", str(src), "-o", str(out2), "--prune", "0.3", "--calib", str(cal), "--no-recover"]) == 0
    assert "recover" not in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--prune", "0.3", "--recover"], "--recover needs calibration data (--calib DATA)"),
    (["--recover"], "--recover needs --prune"),
    (["--prune", "0.3", "--prune-mode", "unstructured", "--calib", "CAL"], "--calib with --prune needs --prune-mode channel"),
])
def test_cli_recover_usage_errors(tmp_path, capsys, args, message):
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(_cnn(), src)
    (tmp_path / "CAL").mkdir()
    args = [str(tmp_path / "CAL") if a == "CAL" else a for a in args]
    assert main(["compile", str(src), "-o", str(out)] + args) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_activation_scores_drop_the_channels_that_do_not_vary():
    """Channel 3 of c1 is constant (zero weights, bias 0.5) and channel 5 always negative before its
    Relu (large weights, bias -100): both carry nothing the refit cannot restore, so activation
    scores drop them, where the weight norm keeps channel 5 (the largest filter)."""
    from graphopt.passes.prune_select import activation_scores
    teacher = _cnn()
    w = _init(teacher, "w1").copy()
    b = _init(teacher, "b1").copy()
    w[3], b[3] = 0.0, 0.5
    w[5], b[5] = 3 * np.abs(w[5]).max(), -100.0
    for t in teacher.graph.initializer:
        if t.name in ("w1", "b1"):
            t.CopyFrom(numpy_helper.from_array(w if t.name == "w1" else b, t.name))
    scores = activation_scores(teacher, _feeds(6, 5))
    assert scores["Conv:c1"].shape == (16,) and scores["Conv:c1"][3] == 0 and scores["Conv:c1"][5] == 0
    assert np.all(np.delete(scores["Conv:c1"], [3, 5]) > 0)
    _, by_norm = prune(teacher, 2 / 16, "channel", align=1)
    _, by_act = prune(teacher, 2 / 16, "channel", align=1, scores=scores)
    assert 5 in by_norm.kept["Conv:c1"] and 3 not in by_norm.kept["Conv:c1"]
    assert 3 not in by_act.kept["Conv:c1"] and 5 not in by_act.kept["Conv:c1"]
