"""A small BERT encoder as PyTorch's exporter writes it (opset 17): embeddings, 3 post-LN layers, pooler.

Embeddings: Gather of word, position (position_ids buffer sliced to the sequence length) and
token-type (zeros buffer) tables, summed, decomposed LayerNorm. The extended attention mask is the
newer HF spelling: Where(bool(1 - mask), finfo(float32).min, 0), built once and shared by every layer.
The layers vary the way exported models do, so the fusions must be general:
  layer 0  scores / sqrt(d), K split with perm [0,2,3,1], heads merged through a Shape/Gather/Concat chain
  layer 1  scores * 1/sqrt(d), K split [0,2,1,3] then transposed [0,1,3,2], heads merged with [0,0,H]
  layer 2  q and k each scaled by d^-1/4, heads merged with [0,0,-1]; FFN uses the tanh GELU (x^3 as Pow)
Pooler: first token -> MatMul + Add -> Tanh. Symbolic batch and seq; int64 input_ids and attention_mask.
Targets: LayerNorm/skip-LayerNorm/GELU/bias-GELU/attention fusion; target ort/graphopt/onnx lowering.
"""
import numpy as np

from build_common import FLOAT, INT64, const, io, ints, layer_norm, linear, model, node, rng, scalar, weight

VOCAB, MAX_POS, TYPES = 120, 32, 2
HIDDEN, HEADS, FFN, LAYERS = 64, 4, 128, 3
HEAD_DIM = HIDDEN // HEADS
DIMS = {"batch": 2, "seq": 7}


def inputs(r):
    batch, seq = DIMS["batch"], DIMS["seq"]
    mask = np.ones((batch, seq), np.int64)
    mask[1, seq - 3:] = 0  # the second sequence is padded
    return {"input_ids": r.integers(0, VOCAB, (batch, seq)).astype(np.int64), "attention_mask": mask}


def _embeddings(r, inits, nodes):
    inits += [weight(r, "emb.word", VOCAB, HIDDEN, scale=1.0), weight(r, "emb.pos", MAX_POS, HIDDEN, scale=0.5),
              weight(r, "emb.type", TYPES, HIDDEN, scale=0.5),
              const("position_ids", np.arange(MAX_POS, dtype=np.int64)[None]),
              const("token_type_buffer", np.zeros((1, MAX_POS), np.int64))]
    nodes += [node("Shape", "input_ids", "ids_shape"), node("Gather", ["ids_shape", "one_scalar"], "seq_len", axis=0),
              node("Unsqueeze", ["seq_len", "zero"], "seq_end"),
              node("Slice", ["position_ids", "zero", "seq_end", "one_i"], "pos_ids"),
              node("Slice", ["token_type_buffer", "zero", "seq_end", "one_i"], "type_ids"),
              node("Gather", ["emb.word", "input_ids"], "word_emb", axis=0),
              node("Gather", ["emb.pos", "pos_ids"], "pos_emb", axis=0),
              node("Gather", ["emb.type", "type_ids"], "type_emb", axis=0),
              node("Add", ["word_emb", "type_emb"], "emb_sum0"), node("Add", ["emb_sum0", "pos_emb"], "emb_sum")]
    return layer_norm(r, "emb.ln", "emb_sum", HIDDEN, inits, nodes)


def _heads(x, name, nodes, perms):
    nodes.append(node("Reshape", [x, "heads_shape"], f"{name}.heads"))
    src = f"{name}.heads"
    for i, perm in enumerate(perms):
        nodes.append(node("Transpose", src, f"{name}.t{i}", perm=perm))
        src = f"{name}.t{i}"
    return src


def _attention(r, i, x, inits, nodes):
    p = f"l{i}.attn"
    q = linear(r, f"{p}.q", x, HIDDEN, HIDDEN, inits, nodes)
    k = linear(r, f"{p}.k", x, HIDDEN, HIDDEN, inits, nodes)
    v = linear(r, f"{p}.v", x, HIDDEN, HIDDEN, inits, nodes)
    qh = _heads(q, f"{p}.qh", nodes, [[0, 2, 1, 3]])
    kh = _heads(k, f"{p}.kh", nodes, [[0, 2, 3, 1]] if i != 1 else [[0, 2, 1, 3], [0, 1, 3, 2]])
    vh = _heads(v, f"{p}.vh", nodes, [[0, 2, 1, 3]])
    if i == 0:
        nodes += [node("MatMul", [qh, kh], f"{p}.scores"), node("Div", [f"{p}.scores", "sqrt_d"], f"{p}.scaled")]
    elif i == 1:
        nodes += [node("MatMul", [qh, kh], f"{p}.scores"), node("Mul", [f"{p}.scores", "rsqrt_d"], f"{p}.scaled")]
    else:
        nodes += [node("Mul", [qh, "qrt_d"], f"{p}.qs"), node("Mul", ["qrt_d", kh], f"{p}.ks"),
                  node("MatMul", [f"{p}.qs", f"{p}.ks"], f"{p}.scaled")]
    nodes += [node("Add", [f"{p}.scaled", "ext_mask"], f"{p}.masked"),
              node("Softmax", f"{p}.masked", f"{p}.probs", axis=-1),
              node("MatMul", [f"{p}.probs", vh], f"{p}.ctx_heads"),
              node("Transpose", f"{p}.ctx_heads", f"{p}.ctx_t", perm=[0, 2, 1, 3])]
    if i == 0:
        nodes += [node("Shape", f"{p}.ctx_t", f"{p}.ctx_shape"),
                  node("Gather", [f"{p}.ctx_shape", "zero"], f"{p}.ctx_b", axis=0),
                  node("Gather", [f"{p}.ctx_shape", "one_i"], f"{p}.ctx_s", axis=0),
                  node("Concat", [f"{p}.ctx_b", f"{p}.ctx_s", "hidden_dim"], f"{p}.merge_shape", axis=0),
                  node("Reshape", [f"{p}.ctx_t", f"{p}.merge_shape"], f"{p}.ctx")]
    else:
        nodes.append(node("Reshape", [f"{p}.ctx_t", "merge_shape" if i == 1 else "merge_shape_auto"], f"{p}.ctx"))
    o = linear(r, f"{p}.out", f"{p}.ctx", HIDDEN, HIDDEN, inits, nodes)
    nodes.append(node("Add", [o, x], f"{p}.res"))
    return layer_norm(r, f"l{i}.ln1", f"{p}.res", HIDDEN, inits, nodes)


def _ffn(r, i, x, inits, nodes):
    p = f"l{i}.ffn"
    h = linear(r, f"{p}.in", x, HIDDEN, FFN, inits, nodes)
    if i == LAYERS - 1:  # tanh GELU: 0.5 * h * (1 + tanh(sqrt(2/pi) * (h + 0.044715 * h^3)))
        nodes += [node("Pow", [h, "three"], f"{p}.cube"), node("Mul", [f"{p}.cube", "gelu_c"], f"{p}.cube_c"),
                  node("Add", [h, f"{p}.cube_c"], f"{p}.poly"), node("Mul", [f"{p}.poly", "gelu_k"], f"{p}.arg"),
                  node("Tanh", f"{p}.arg", f"{p}.tanh"), node("Add", [f"{p}.tanh", "one"], f"{p}.onep"),
                  node("Mul", ["half", h], f"{p}.half"), node("Mul", [f"{p}.half", f"{p}.onep"], f"{p}.gelu")]
    else:  # erf GELU
        nodes += [node("Div", [h, "sqrt2"], f"{p}.div"), node("Erf", f"{p}.div", f"{p}.erf"),
                  node("Add", [f"{p}.erf", "one"], f"{p}.onep"), node("Mul", [h, f"{p}.onep"], f"{p}.mul"),
                  node("Mul", [f"{p}.mul", "half"], f"{p}.gelu")]
    o = linear(r, f"{p}.out", f"{p}.gelu", FFN, HIDDEN, inits, nodes)
    nodes.append(node("Add", [o, x], f"{p}.res"))
    return layer_norm(r, f"l{i}.ln2", f"{p}.res", HIDDEN, inits, nodes)


def build():
    r = rng(7)
    inits = [scalar("two", 2.0), scalar("ln_eps", 1e-12), scalar("one", 1.0), scalar("half", 0.5),
             scalar("sqrt2", float(np.sqrt(2.0))), scalar("three", 3.0), scalar("gelu_c", 0.044715),
             scalar("gelu_k", float(np.sqrt(2 / np.pi))), scalar("sqrt_d", float(np.sqrt(HEAD_DIM))),
             scalar("rsqrt_d", float(1 / np.sqrt(HEAD_DIM))), scalar("qrt_d", float(HEAD_DIM ** -0.25)),
             scalar("zero_f", 0.0), scalar("finfo_min", float(np.finfo(np.float32).min)),
             ints("heads_shape", 0, 0, HEADS, HEAD_DIM), ints("merge_shape", 0, 0, HIDDEN),
             ints("merge_shape_auto", 0, 0, -1), ints("mask_axes", 1, 2), ints("zero", 0), ints("one_i", 1),
             ints("hidden_dim", HIDDEN), const("first_scalar", np.array(0, np.int64)),
             const("one_scalar", np.array(1, np.int64))]
    nodes = [node("Unsqueeze", ["attention_mask", "mask_axes"], "mask4d"), node("Cast", "mask4d", "mask_f", to=FLOAT),
             node("Sub", ["one", "mask_f"], "mask_inv"), node("Cast", "mask_inv", "mask_bool", to=9),
             node("Where", ["mask_bool", "finfo_min", "zero_f"], "ext_mask")]
    x = _embeddings(r, inits, nodes)
    for i in range(LAYERS):
        x = _ffn(r, i, _attention(r, i, x, inits, nodes), inits, nodes)
    nodes.append(node("Identity", x, "last_hidden_state"))
    nodes.append(node("Gather", ["last_hidden_state", "first_scalar"], "cls", axis=1))  # the [CLS] token
    pooled = linear(r, "pooler", "cls", HIDDEN, HIDDEN, inits, nodes)
    nodes.append(node("Tanh", pooled, "pooler_output"))
    return model("bert_encoder", nodes,
                 [io("input_ids", INT64, ["batch", "seq"]), io("attention_mask", INT64, ["batch", "seq"])],
                 [io("last_hidden_state", FLOAT, ["batch", "seq", HIDDEN]), io("pooler_output", FLOAT, ["batch", HIDDEN])],
                 inits, opset=17)
