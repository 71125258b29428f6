"""A BERT-style encoder block as exporters emit it (PyTorch -> ONNX, opset 17, post-LayerNorm).

Decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add), erf-GELU
(Div sqrt2 / Erf / Add 1 / Mul / Mul 0.5), multi-head softmax attention with an additive mask
built from an int64 attention_mask, Shape/Gather/Concat chains for the head merge, and the
Identity/Dropout nodes of exported models. Symbolic batch and seq.
Targets: LayerNorm/GELU/attention fusion, no-op removal, partial shape folding.
"""
import numpy as np

from build_common import FLOAT, INT64, io, ints, layer_norm, model, node, rng, scalar, weight

HIDDEN, HEADS, FFN = 32, 4, 64
HEAD_DIM = HIDDEN // HEADS
DIMS = {"batch": 2, "seq": 5}


def inputs(r):
    batch, seq = DIMS["batch"], DIMS["seq"]
    mask = np.ones((batch, seq), np.int64)
    mask[1, seq - 2:] = 0  # the second sequence is padded
    return {"hidden_states": r.standard_normal((batch, seq, HIDDEN)).astype(np.float32), "attention_mask": mask}


def _linear(r, prefix, x, fan_in, fan_out, inits, nodes, tied=False):
    """MatMul + Add bias; `tied` routes the weight through an Identity like shared exported weights."""
    w = weight(r, f"{prefix}.weight", fan_in, fan_out, scale=1 / np.sqrt(fan_in))
    inits += [w, weight(r, f"{prefix}.bias", fan_out, scale=0.1)]
    wname = w.name
    if tied:
        nodes.append(node("Identity", w.name, f"{prefix}.weight.tied"))
        wname = f"{prefix}.weight.tied"
    nodes += [node("MatMul", [x, wname], f"{prefix}.mm"), node("Add", [f"{prefix}.mm", f"{prefix}.bias"], prefix)]
    return prefix


def _split_heads(x, name, perm, nodes):
    nodes += [node("Reshape", [x, "heads_shape"], f"{name}.heads"),
              node("Transpose", f"{name}.heads", name, perm=perm)]
    return name


def build():
    r = rng(2)
    inits = [scalar("two", 2.0), scalar("ln_eps", 1e-12), scalar("one", 1.0), scalar("mask_min", -10000.0),
             scalar("sqrt_head_dim", float(np.sqrt(HEAD_DIM))), scalar("sqrt2", float(np.sqrt(2.0))),
             scalar("half", 0.5), scalar("dropout_ratio", 0.1),
             ints("heads_shape", 0, 0, HEADS, HEAD_DIM), ints("mask_axes", 1, 2), ints("zero", 0), ints("one_i", 1),
             ints("hidden_dim", HIDDEN)]
    nodes = [
        # extended attention mask: (1 - mask[:, None, None, :]) * -10000
        node("Unsqueeze", ["attention_mask", "mask_axes"], "mask4d"),
        node("Cast", "mask4d", "mask_f", to=1),
        node("Sub", ["one", "mask_f"], "mask_inv"),
        node("Mul", ["mask_inv", "mask_min"], "mask_add"),
        node("Identity", "hidden_states", "x"),
    ]
    q = _linear(r, "attn.q", "x", HIDDEN, HIDDEN, inits, nodes, tied=True)
    k = _linear(r, "attn.k", "x", HIDDEN, HIDDEN, inits, nodes)
    v = _linear(r, "attn.v", "x", HIDDEN, HIDDEN, inits, nodes)
    q = _split_heads(q, "q_t", [0, 2, 1, 3], nodes)
    k = _split_heads(k, "k_t", [0, 2, 3, 1], nodes)
    v = _split_heads(v, "v_t", [0, 2, 1, 3], nodes)
    nodes += [
        node("MatMul", [q, k], "scores"),
        node("Div", ["scores", "sqrt_head_dim"], "scores_scaled"),
        node("Add", ["scores_scaled", "mask_add"], "scores_masked"),
        node("Softmax", "scores_masked", "probs", axis=-1),
        node("Dropout", ["probs", "dropout_ratio"], "probs_drop"),
        node("MatMul", ["probs_drop", v], "ctx_heads"),
        node("Transpose", "ctx_heads", "ctx_t", perm=[0, 2, 1, 3]),
        # merge heads with the shape chain exporters emit for x.view(*x.shape[:2], hidden)
        node("Shape", "ctx_t", "ctx_shape"),
        node("Gather", ["ctx_shape", "zero"], "ctx_b", axis=0),
        node("Gather", ["ctx_shape", "one_i"], "ctx_s", axis=0),
        node("Concat", ["ctx_b", "ctx_s", "hidden_dim"], "merge_shape", axis=0),
        node("Reshape", ["ctx_t", "merge_shape"], "ctx"),
    ]
    o = _linear(r, "attn.out", "ctx", HIDDEN, HIDDEN, inits, nodes)
    nodes += [node("Dropout", [o, "dropout_ratio"], "attn_drop"), node("Add", ["attn_drop", "x"], "attn_res")]
    ln1 = layer_norm(r, "ln1", "attn_res", HIDDEN, inits, nodes)
    h = _linear(r, "ffn.in", ln1, HIDDEN, FFN, inits, nodes)
    nodes += [node("Div", [h, "sqrt2"], "gelu.div"), node("Erf", "gelu.div", "gelu.erf"),
              node("Add", ["gelu.erf", "one"], "gelu.add"), node("Mul", [h, "gelu.add"], "gelu.mul"),
              node("Mul", ["gelu.mul", "half"], "gelu")]
    o2 = _linear(r, "ffn.out", "gelu", FFN, HIDDEN, inits, nodes)
    nodes += [node("Dropout", [o2, "dropout_ratio"], "ffn_drop"), node("Add", ["ffn_drop", ln1], "ffn_res")]
    ln2 = layer_norm(r, "ln2", "ffn_res", HIDDEN, inits, nodes)
    nodes.append(node("Identity", ln2, "last_hidden_state"))
    return model("transformer_block", nodes,
                 [io("hidden_states", FLOAT, ["batch", "seq", HIDDEN]), io("attention_mask", INT64, ["batch", "seq"])],
                 [io("last_hidden_state", FLOAT, ["batch", "seq", HIDDEN])], inits, opset=17)
