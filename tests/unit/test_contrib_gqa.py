"""com.microsoft GroupQueryAttention run by graphopt.Session against ONNX Runtime on the same one-node
model: a decode loop (prefill, then single tokens feeding present back as past), grouped heads, packed
Q|K|V, rotary from cos/sin caches, a local window, a right-padded first prompt (seqlens_k)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphopt.errors import Unsupported
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

MS = "com.microsoft"
B, N, KV, H = 2, 4, 2, 16  # ORT rotates only head sizes that are multiples of 16
F, I32 = TensorProto.FLOAT, TensorProto.INT32


def _model(packed=False, rotary=False, attrs=None):
    qkv = ["qkv", "", ""] if packed else ["q", "k", "v"]
    ins = qkv + ["past_key", "past_value", "seqlens_k", "total_len"] + (["cos", "sin"] if rotary else [])
    node = helper.make_node("GroupQueryAttention", ins, ["y", "present_key", "present_value"], domain=MS,
                            num_heads=N, kv_num_heads=KV, do_rotary=int(rotary), **(attrs or {}))
    vi = helper.make_tensor_value_info
    inputs = [vi("qkv", F, ["b", "s", (N + 2 * KV) * H])] if packed else [
        vi("q", F, ["b", "s", N * H]), vi("k", F, ["b", "s", KV * H]), vi("v", F, ["b", "s", KV * H])]
    inputs += [vi(n, F, ["b", KV, "p", H]) for n in ("past_key", "past_value")]
    inputs += [vi("seqlens_k", I32, ["b"]), vi("total_len", I32, [])]
    if rotary:
        inputs += [vi(n, F, [32, H // 2]) for n in ("cos", "sin")]
    outputs = [vi(n, F, None) for n in ("y", "present_key", "present_value")]
    return helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def _feed(rng, packed, rotary, new, past, lengths):
    width = [(N + 2 * KV) * H] if packed else [N * H, KV * H, KV * H]
    feed = dict(zip(["qkv"] if packed else ["q", "k", "v"],
                    (rng.standard_normal((B, new, w)).astype(np.float32) for w in width)))
    feed.update(past)
    feed["seqlens_k"] = np.array(lengths, np.int32) - 1
    feed["total_len"] = np.array(max(lengths), np.int32)
    if rotary:
        angles = np.arange(32)[:, None] * (1.0 / 10000 ** (np.arange(H // 2) / (H // 2)))[None, :]
        feed["cos"], feed["sin"] = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    return feed


def _compare(want, got, step):
    for name, w, g in zip(("y", "present_key", "present_value"), want, got):
        assert g.shape == w.shape, (step, name, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"step {step} {name}")


@pytest.mark.parametrize("packed,rotary,attrs", [(False, False, {}), (True, False, {}), (False, True, {}),
                                                 (False, False, {"local_window_size": 2}),
                                                 (False, False, {"scale": 0.3, "softcap": 5.0})])
def test_decode_loop_matches_ort(packed, rotary, attrs):
    rng = np.random.default_rng(4)
    model = _model(packed, rotary, attrs)
    ort, ours = ort_session(model), Session(model)
    past = {n: np.zeros((B, KV, 0, H), np.float32) for n in ("past_key", "past_value")}
    length = 0
    for step, new in enumerate((5, 1, 1)):
        length += new
        feed = _feed(rng, packed, rotary, new, past, [length] * B)
        want = ort.run(None, feed)
        _compare(want, ours.run(None, feed), step)
        past = {"past_key": want[1], "past_value": want[2]}


def test_right_padded_first_prompt_matches_ort():
    """The first prompt's second sequence holds 3 of 5 tokens: seqlens_k masks its padding keys."""
    rng = np.random.default_rng(6)
    model = _model()
    past = {n: np.zeros((B, KV, 0, H), np.float32) for n in ("past_key", "past_value")}
    feed = _feed(rng, False, False, 5, past, [5, 3])
    want = ort_session(model).run(None, feed)
    got = Session(model).run(None, feed)
    np.testing.assert_allclose(got[0][0], want[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[0][1, :3], want[0][1, :3], rtol=1e-4, atol=1e-5)  # its real tokens
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_head_sink_is_refused_at_build():
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "sl", "tl", "", "", "", "", "sink"],
                            ["y"], domain=MS, num_heads=N, kv_num_heads=KV)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [vi("q", F, [B, 3, N * H]), vi("k", F, [B, 3, KV * H]),
                                            vi("v", F, [B, 3, KV * H]), vi("sl", I32, [B]), vi("tl", I32, []),
                                            vi("sink", F, [N])], [vi("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    with pytest.raises(Unsupported, match="head_sink"):
        Session(model)
