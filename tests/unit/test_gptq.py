"""GPTQ int4 rounding (passes/quantize/gptq.py): equal to a plain NumPy optimal-brain-quantizer
reference, and a smaller output error than round-to-nearest on held-out data (the float model run
in ONNX Runtime is the reference)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main
from graphopt.passes.quantize.common import ModelView, select_nodes
from graphopt.passes.quantize.gptq import collect_hessians, gptq_quantize
from graphopt.passes.quantize.int4 import apply_int4, quantize_blocks


def _correlated(rows, k, rng, mix_seed=7):
    """Activations with strongly correlated features and a few large ones (as real layers have);
    the correlation structure is fixed by mix_seed, the samples drawn from rng."""
    mixing = np.random.default_rng(mix_seed)
    mix = mixing.normal(0, 1, (k // 4, k)) * mixing.uniform(0.2, 3.0, k)
    return (rng.normal(0, 1, (rows, k // 4)) @ mix + 0.1 * rng.normal(0, 1, (rows, k))).astype(np.float32)


def _reference(w, h, block, act_order, damp=0.01):
    """Optimal brain quantization, one input row at a time: quantize row i, move its error onto the
    remaining rows through the inverse Hessian, drop row i from the inverse (no Cholesky, no blocks)."""
    k, n = w.shape
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[dead] = 0
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    hinv = np.linalg.inv(h)
    blocks = -(-k // block)
    scale = np.ones((blocks, n))

    def block_scale(rows):
        amax = np.abs(rows).max(axis=0)
        return np.where(amax > 0, amax / 7.0, 1.0)

    if act_order:
        for b in range(blocks):
            scale[b] = block_scale(w[b * block:(b + 1) * block])
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    q = np.zeros((k, n))
    left = list(order)
    for i in order:
        b = i // block
        if not act_order and i % block == 0:
            scale[b] = block_scale(w[i:i + block])
        q[i] = np.clip(np.rint(w[i] / scale[b]), -8, 7)
        err = w[i] - q[i] * scale[b]
        left.remove(i)
        for j in left:
            w[j] -= hinv[j, i] / hinv[i, i] * err
        hinv = hinv - np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q.astype(np.int8), scale.astype(np.float32)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_equals_numpy_reference(act_order):
    rng = np.random.default_rng(0)
    x = _correlated(512, 96, rng)
    w = rng.normal(0, 0.1, (96, 24)).astype(np.float32)
    h = x.astype(np.float64).T @ x
    h[:, 5] = h[5, :] = 0  # an input that is always zero
    q, s = gptq_quantize(w, h, 32, act_order, gptq_block=64)
    q_ref, s_ref = _reference(w, h, 32, act_order)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    assert np.mean(q == q_ref) > 0.995  # rounding ties may flip a value or two
    assert q.min() >= -8 and q.max() <= 7 and not q[5].any()


def _mlp(rng, k=128, hidden=96, n=32):
    w1 = (rng.normal(0, 1, (k, hidden)) / np.sqrt(k)).astype(np.float32)
    w2 = (rng.normal(0, 1, (n, hidden)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                               numpy_helper.from_array(rng.normal(0, 0.1, n).astype(np.float32), "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gptq_beats_round_to_nearest_on_held_out_outputs():
    rng = np.random.default_rng(1)
    model = _mlp(rng)
    feeds = [{"x": _correlated(32, 128, rng)} for _ in range(16)]
    calib, held = feeds[:8], feeds[8:]
    nodes = select_nodes(ModelView(model), {"MatMul", "Gemm"}, (), False).quantize
    hessians = collect_hessians(model, nodes, calib)
    assert set(hessians) == {"fc1", "fc2"}

    def out(m):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, f)[0] for f in held])

    ref = out(model)
    rtn, _ = apply_int4(model, 32, "onnx")
    errors = {}
    for name, kwargs in (("gptq", {}), ("gptq act-order", {"act_order": True})):
        q, rep = apply_int4(model, 32, "onnx", hessians=hessians, **kwargs)
        onnx.checker.check_model(q)
        errors[name] = np.linalg.norm(out(q) - ref)
    errors["rtn"] = np.linalg.norm(out(rtn) - ref)
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
    assert errors["gptq act-order"] < 0.8 * errors["rtn"], errors


def test_gptq_rows_are_the_int4_format():
    """GPTQ output goes through the same writer as RTN: equal when H is the identity (no correlations)
    and there is one row per block (nothing to spread the error onto)."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (64, 8)).astype(np.float32)
    q, s = gptq_quantize(w, np.eye(64), 16, damp=0.0)
    q_rtn, s_rtn = quantize_blocks(w, 16)
    np.testing.assert_array_equal(q, q_rtn)
    np.testing.assert_allclose(s, s_rtn, rtol=1e-6)


def test_cli_int4_gptq(tmp_path, capsys):
    rng = np.random.default_rng(3)
    src, cal, out = tmp_path / "m.onnx", tmp_path / "cal", tmp_path / "q.onnx"
    onnx.save(_mlp(rng), src)
    assert main(["compile", str(src), "-o", str(out), "--int4-weights", "--int4-method", "gptq"]) != 0
    assert "--int4-method gptq needs calibration data (--calib DATA)" in capsys.readouterr().err
    assert not out.exists()
    cal.mkdir()
    for i in range(4):
        np.savez(cal / f"{i}.npz", x=_correlated(16, 128, rng))
    assert main(["compile", str(src), "-o", str(out), "--int4-weights", "--calib", str(cal)]) == 0
    assert "gptq" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(out))
