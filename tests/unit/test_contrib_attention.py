"""ORT's com.microsoft Attention, MultiHeadAttention and EmbedLayerNormalization run by
graphopt.Session (kernels/cpu/attention_ort.py), against ORT itself on the same one-node model:
biases, every mask form (key lengths, 0/1 key masks, per-query masks, additive attention_bias),
unidirectional, scale and mask_filter_value attributes, present outputs, segment and position ids;
and the forms that need a KV cache are refused when the Session is built."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import Unsupported
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

MS = "com.microsoft"
RNG = np.random.default_rng(11)
B, S, L, D, HEADS = 2, 5, 7, 16, 4


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model(node, feeds, consts):
    def info(name, v):
        return helper.make_tensor_value_info(name, TensorProto.INT32 if v.dtype == np.int32 else TensorProto.FLOAT, v.shape)
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o]
    graph = helper.make_graph([node], "g", [info(k, v) for k, v in feeds.items()], outputs,
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def check(node, feeds, consts=None):
    m = model(node, feeds, consts or {})
    want = ort_session(m).run(None, feeds)
    sess = Session(m)
    for _ in range(2):
        got = sess.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def key_lengths():
    return np.array([L, 3], np.int32)


def key_mask():
    m = np.ones((B, L), np.int32)
    m[1, 4:] = 0
    return m


MHA_CASES = {  # name -> (input names after q/k/v, feeds, attributes)
    "plain": ([], {}, {}),
    "bias": (["bias"], {"bias": data(3 * D)}, {}),
    "key_padding_mask": (["", "kpm"], {"kpm": key_mask()}, {}),
    "key_lengths": (["", "kpm"], {"kpm": key_lengths()}, {"mask_filter_value": -1e4}),
    "attention_bias": (["", "", "ab"], {"ab": data(B, HEADS, S, L)}, {}),
    "broadcast_bias_and_mask": (["bias", "kpm", "ab"], {"bias": data(3 * D), "kpm": key_mask(), "ab": data(1, 1, S, L)},
                                {"scale": 0.3}),
}


@pytest.mark.parametrize("case", MHA_CASES, ids=list(MHA_CASES))
def test_multi_head_attention(case):
    extra, feeds, attrs = MHA_CASES[case]
    feeds = {"q": data(B, S, D), "k": data(B, L, D), "v": data(B, L, D), **feeds}
    consts = {k: feeds.pop(k) for k in ("bias",) if k in feeds}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"] + extra, ["y"], domain=MS, num_heads=HEADS, **attrs)
    check(node, feeds, consts)


def test_multi_head_attention_unidirectional_with_present():
    feeds = {"q": data(B, S, D), "k": data(B, S, D), "v": data(B, S, D)}
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y", "pk", "pv"], domain=MS, num_heads=HEADS,
                            unidirectional=1)
    check(node, feeds)


ATTENTION_CASES = {  # name -> (mask_index or None, attention_bias?, attributes)
    "plain": (None, False, {}),
    "key_lengths": (key_lengths, False, {}),
    "key_mask": (key_mask, False, {}),
    "per_query_mask": (lambda: (RNG.random((B, L, L)) > 0.3).astype(np.int32), False, {}),
    "unidirectional": (None, False, {"unidirectional": 1}),
    "unidirectional_key_mask": (key_mask, False, {"unidirectional": 1, "mask_filter_value": -5000.0}),
    "attention_bias_scale": (None, True, {"scale": 0.2}),
}


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=list(ATTENTION_CASES))
def test_attention(case):
    make_mask, with_bias, attrs = ATTENTION_CASES[case]
    feeds = {"x": data(B, L, D)}  # self-attention: L queries and keys (the masks are made for L keys)
    ins = ["x", "w", "b"]
    if make_mask is not None:
        feeds["mask"] = make_mask()
        ins.append("mask")
    if with_bias:
        feeds["ab"] = data(B, 1, L, L)
        ins += [""] * (5 - len(ins)) + ["ab"]  # mask_index and past left out
    node = helper.make_node("Attention", ins, ["y", "present"], domain=MS, num_heads=HEADS, **attrs)
    check(node, feeds, {"w": data(D, 3 * D), "b": data(3 * D)})


def test_attention_unequal_hidden_sizes():
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain=MS, num_heads=HEADS,
                            qkv_hidden_sizes=[16, 16, 24])
    check(node, {"x": data(B, S, D)}, {"w": data(D, 56), "b": data(56)})


@pytest.mark.parametrize("op,ins,why", [
    ("Attention", ["x", "w", "b", "", "past"], "past"),
    ("MultiHeadAttention", ["x", "x", "x", "", "", "", "", "", "pl"], "past_sequence_length"),  # past: runs
])
def test_forms_with_a_kv_cache_are_refused_at_build(op, ins, why):
    node = helper.make_node(op, ins, ["y"], domain=MS, num_heads=HEADS)
    feeds = {"x": data(B, S, D), "past": data(2, B, HEADS, 3, D // HEADS), "pl": np.array([3], np.int32)}
    feeds = {k: v for k, v in feeds.items() if k in ins}
    consts = {"w": data(D, 3 * D), "b": data(3 * D)} if op == "Attention" else {}
    with pytest.raises(Unsupported, match=f"com.microsoft::{op} \\({why}"):
        Session(model(node, feeds, consts))


@pytest.mark.parametrize("segments,mask,positions", [(True, True, False), (False, False, False), (True, True, True)])
def test_embed_layer_normalization(segments, mask, positions):
    vocab, seq = 30, 6
    ids = RNG.integers(0, vocab, (B, seq)).astype(np.int32)
    feeds = {"ids": ids}
    ins = ["ids", "seg" if segments else "", "word", "pos", "segtab" if segments else "", "gamma", "beta"]
    if segments:
        feeds["seg"] = RNG.integers(0, 2, (B, seq)).astype(np.int32)
    if mask:
        m = np.ones((B, seq), np.int32)
        m[1, 4:] = 0
        feeds["mask"] = m
    ins.append("mask" if mask else "")
    if positions:
        feeds["posids"] = np.array([[5, 4, 3, 2, 1, 0]] * B, np.int32)
        ins.append("posids")
    consts = {"word": data(vocab, D), "pos": data(16, D), "segtab": data(2, D), "gamma": data(D), "beta": data(D)}
    consts = {k: v for k, v in consts.items() if k in ins}
    outs = ["y", "mask_index", "sum"] if mask else ["y", "mask_index"]  # ORT requires mask_index
    node = helper.make_node("EmbedLayerNormalization", ins, outs, domain=MS)
    m = model(node, feeds, consts)
    for vi in m.graph.output:
        if vi.name == "mask_index":
            vi.type.tensor_type.elem_type = TensorProto.INT32
    want = ort_session(m).run(None, feeds)
    got = Session(m).run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
