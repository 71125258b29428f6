"""com.microsoft MultiHeadAttention with a KV cache (past_key/past_value (B, N, P, H) -> present) run by
graphopt.Session against ONNX Runtime on the same one-node model: a prefill step, decode steps that
feed present back as past, causal (unidirectional) and padding masks over past + new keys, a bias."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphopt.runtime.session import Session
from graphopt.verify import ort_session

MS = "com.microsoft"
B, D, HEADS = 2, 16, 4
HEAD = D // HEADS


def _model(with_mask: bool, attrs: dict, bias: bool):
    ins = ["q", "k", "v", "bias" if bias else "", "kpm" if with_mask else "", "", "past_key", "past_value"]
    node = helper.make_node("MultiHeadAttention", ins, ["y", "present_key", "present_value"], domain=MS,
                            num_heads=HEADS, **attrs)
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, ["b", "s", D]) for n in ("q", "k", "v")]
    inputs += [helper.make_tensor_value_info(n, f, ["b", HEADS, "p", HEAD]) for n in ("past_key", "past_value")]
    if with_mask:
        inputs.append(helper.make_tensor_value_info("kpm", TensorProto.INT32, ["b", "t"]))
    if bias:
        inputs.append(helper.make_tensor_value_info("bias", f, [3 * D]))
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("y", "present_key", "present_value")]
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


@pytest.mark.parametrize("with_mask,attrs,bias", [
    (False, {"unidirectional": 1}, False),   # a decoder: causal over past + new positions
    (True, {"unidirectional": 1}, True),     # left-padded batch: the padding mask spans past + new
    (True, {"scale": 0.3}, False),
])
def test_decode_loop_matches_ort(with_mask, attrs, bias):
    rng = np.random.default_rng(3)
    model = _model(with_mask, attrs, bias)
    ort, ours = ort_session(model), Session(model)
    past = {n: np.zeros((B, HEADS, 0, HEAD), np.float32) for n in ("past_key", "past_value")}
    for step, new in enumerate((5, 1, 1, 2)):  # prefill 5 tokens, then single tokens and a pair
        feed = {n: rng.standard_normal((B, new, D)).astype(np.float32) for n in ("q", "k", "v")}
        feed.update(past)
        total = past["past_key"].shape[2] + new
        if with_mask:
            mask = np.ones((B, total), np.int32)
            mask[1, :2] = 0  # the second sequence is left-padded by two
            feed["kpm"] = mask
        if bias:
            feed["bias"] = (0.1 * rng.standard_normal(3 * D)).astype(np.float32)
        want, got = ort.run(None, feed), ours.run(None, feed)
        for name, w, g in zip(("y", "present_key", "present_value"), want, got):
            assert g.shape == w.shape, (step, name)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"step {step} {name}")
        past = {"past_key": want[1], "past_value": want[2]}
