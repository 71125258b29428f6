"""A BERT-class encoder as Hugging Face models export with dynamic batch and sequence (opset 17).

Every Reshape that splits or merges heads takes a shape computed at run time from Shape pieces,
never a constant [0, 0, H, D], and each layer spells that arithmetic as a different HF version does:
  layer 0  `x.view(x.size()[:-1] + (H, D))` per projection: Shape(q)->Gather(0|1)->Unsqueeze, Concat
           with [H] and [D]; scores / sqrt(d); heads merged with Shape(context)->Gather->Concat([hidden])
  layer 1  `view(*input_shape, -1, D)` with input_shape = Shape(hidden_states)->Slice[:-1], shared by
           Q, K and V; q and k each * d^-1/4 (the SDPA export), K transposed twice; heads merged with
           Concat(input_shape, [-1])
  layer 2  Shape(hidden_states, start=0, end=2) (opset 15 attributes) + [H, D]; scores * 1/sqrt(d);
           heads merged from Shape of the P*V product (axes 0 and 2)
The extended mask is the older HF spelling (1 - mask) * finfo(float32).min, built once for all layers.
Post-LN layers with decomposed LayerNorm and erf GELU; int64 input_ids/attention_mask [batch, seq].
Targets: attention fusion on dynamic shapes (fuse-attention, shape_proof), for every target.
"""
import numpy as np

from build_common import FLOAT, INT64, const, io, ints, layer_norm, linear, model, node, rng, scalar, weight

VOCAB, MAX_POS = 100, 32
HIDDEN, HEADS, FFN, LAYERS = 64, 4, 128, 3
HEAD_DIM = HIDDEN // HEADS
DIMS = {"batch": 2, "seq": 6}


def inputs(r):
    batch, seq = DIMS["batch"], DIMS["seq"]
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq - 2:] = 0  # the first sequence is padded
    return {"input_ids": r.integers(0, VOCAB, (batch, seq)).astype(np.int64), "attention_mask": mask}


def _dim(src, index, out, nodes):
    """Unsqueeze(Gather(Shape(src), index)): one run-time dim as a 1-element vector (torch's x.size(i))."""
    nodes += [node("Shape", src, f"{out}.shape"), node("Gather", [f"{out}.shape", f"idx{index}"], f"{out}.scalar", axis=0),
              node("Unsqueeze", [f"{out}.scalar", "zero"], out)]
    return out


def _split(x, shape, name, nodes, perms):
    nodes.append(node("Reshape", [x, shape], f"{name}.heads"))
    src = f"{name}.heads"
    for i, perm in enumerate(perms):
        nodes.append(node("Transpose", src, f"{name}.t{i}", perm=perm))
        src = f"{name}.t{i}"
    return src


def _attention(r, i, x, inits, nodes):
    p = f"l{i}.attn"
    q, k, v = (linear(r, f"{p}.{n}", x, HIDDEN, HIDDEN, inits, nodes) for n in "qkv")
    shapes = {}
    if i == 0:  # each projection reshaped by its own size(): x.size()[:-1] + (H, D)
        for t in (q, k, v):
            nodes.append(node("Concat", [_dim(t, 0, f"{t}.b", nodes), _dim(t, 1, f"{t}.s", nodes), "heads", "head_dim"],
                              f"{t}.split_shape", axis=0))
            shapes[t] = f"{t}.split_shape"
    elif i == 1:  # input_shape = hidden_states.shape[:-1]; view(*input_shape, -1, D)
        nodes += [node("Shape", x, f"{p}.in_shape_full"),
                  node("Slice", [f"{p}.in_shape_full", "zero", "minus_one"], f"{p}.in_shape"),
                  node("Concat", [f"{p}.in_shape", "minus_one", "head_dim"], f"{p}.split_shape", axis=0)]
        shapes = dict.fromkeys((q, k, v), f"{p}.split_shape")
    else:  # Shape(x, start=0, end=2) + [H, D]
        nodes += [node("Shape", x, f"{p}.lead", start=0, end=2),
                  node("Concat", [f"{p}.lead", "heads_and_dim"], f"{p}.split_shape", axis=0)]
        shapes = dict.fromkeys((q, k, v), f"{p}.split_shape")
    qh = _split(q, shapes[q], f"{p}.qh", nodes, [[0, 2, 1, 3]])
    kh = _split(k, shapes[k], f"{p}.kh", nodes, [[0, 2, 3, 1]] if i != 1 else [[0, 2, 1, 3], [0, 1, 3, 2]])
    vh = _split(v, shapes[v], f"{p}.vh", nodes, [[0, 2, 1, 3]])
    if i == 0:
        nodes += [node("MatMul", [qh, kh], f"{p}.scores"), node("Div", [f"{p}.scores", "sqrt_d"], f"{p}.scaled")]
    elif i == 1:
        nodes += [node("Mul", [qh, "qrt_d"], f"{p}.qs"), node("Mul", [kh, "qrt_d"], f"{p}.ks"),
                  node("MatMul", [f"{p}.qs", f"{p}.ks"], f"{p}.scaled")]
    else:
        nodes += [node("MatMul", [qh, kh], f"{p}.scores"), node("Mul", [f"{p}.scores", "rsqrt_d"], f"{p}.scaled")]
    nodes += [node("Add", [f"{p}.scaled", "ext_mask"], f"{p}.masked"),
              node("Softmax", f"{p}.masked", f"{p}.probs", axis=-1),
              node("MatMul", [f"{p}.probs", vh], f"{p}.ctx_heads"),
              node("Transpose", f"{p}.ctx_heads", f"{p}.ctx_t", perm=[0, 2, 1, 3])]
    if i == 0:
        nodes.append(node("Concat", [_dim(f"{p}.ctx_t", 0, f"{p}.ctx_b", nodes), _dim(f"{p}.ctx_t", 1, f"{p}.ctx_s", nodes),
                                     "hidden_dim"], f"{p}.merge_shape", axis=0))
    elif i == 1:
        nodes.append(node("Concat", [f"{p}.in_shape", "minus_one"], f"{p}.merge_shape", axis=0))
    else:
        nodes.append(node("Concat", [_dim(f"{p}.ctx_heads", 0, f"{p}.ctx_b", nodes),
                                     _dim(f"{p}.ctx_heads", 2, f"{p}.ctx_s", nodes), "hidden_dim"],
                          f"{p}.merge_shape", axis=0))
    nodes.append(node("Reshape", [f"{p}.ctx_t", f"{p}.merge_shape"], f"{p}.ctx"))
    o = linear(r, f"{p}.out", f"{p}.ctx", HIDDEN, HIDDEN, inits, nodes)
    nodes.append(node("Add", [o, x], f"{p}.res"))
    return layer_norm(r, f"l{i}.ln1", f"{p}.res", HIDDEN, inits, nodes)


def _ffn(r, i, x, inits, nodes):
    p = f"l{i}.ffn"
    h = linear(r, f"{p}.in", x, HIDDEN, FFN, inits, nodes)
    nodes += [node("Div", [h, "sqrt2"], f"{p}.div"), node("Erf", f"{p}.div", f"{p}.erf"),
              node("Add", [f"{p}.erf", "one"], f"{p}.onep"), node("Mul", [h, f"{p}.onep"], f"{p}.mul"),
              node("Mul", [f"{p}.mul", "half"], f"{p}.gelu")]
    o = linear(r, f"{p}.out", f"{p}.gelu", FFN, HIDDEN, inits, nodes)
    nodes.append(node("Add", [o, x], f"{p}.res"))
    return layer_norm(r, f"l{i}.ln2", f"{p}.res", HIDDEN, inits, nodes)


def build():
    r = rng(19)
    inits = [scalar("two", 2.0), scalar("ln_eps", 1e-12), scalar("one", 1.0), scalar("half", 0.5),
             scalar("sqrt2", float(np.sqrt(2.0))), scalar("sqrt_d", float(np.sqrt(HEAD_DIM))),
             scalar("rsqrt_d", float(1 / np.sqrt(HEAD_DIM))), scalar("qrt_d", float(HEAD_DIM ** -0.25)),
             scalar("finfo_min", float(np.finfo(np.float32).min)),
             ints("heads", HEADS), ints("head_dim", HEAD_DIM), ints("heads_and_dim", HEADS, HEAD_DIM),
             ints("hidden_dim", HIDDEN), ints("minus_one", -1), ints("zero", 0), ints("mask_axes", 1, 2),
             const("idx0", np.array(0, np.int64)), const("idx1", np.array(1, np.int64)),
             const("idx2", np.array(2, np.int64)),
             weight(r, "emb.word", VOCAB, HIDDEN, scale=1.0), weight(r, "emb.pos", MAX_POS, HIDDEN, scale=0.5),
             const("position_ids", np.arange(MAX_POS, dtype=np.int64)[None])]
    nodes = [node("Unsqueeze", ["attention_mask", "mask_axes"], "mask4d"), node("Cast", "mask4d", "mask_f", to=FLOAT),
             node("Sub", ["one", "mask_f"], "mask_inv"), node("Mul", ["mask_inv", "finfo_min"], "ext_mask")]
    nodes += [node("Gather", ["emb.word", "input_ids"], "word_emb", axis=0),
              node("Slice", ["position_ids", "zero", _dim("input_ids", 1, "seq_end", nodes), "idx1_vec"], "pos_ids"),
              node("Gather", ["emb.pos", "pos_ids"], "pos_emb", axis=0), node("Add", ["word_emb", "pos_emb"], "emb_sum")]
    inits.append(ints("idx1_vec", 1))
    x = layer_norm(r, "emb.ln", "emb_sum", HIDDEN, inits, nodes)
    for i in range(LAYERS):
        x = _ffn(r, i, _attention(r, i, x, inits, nodes), inits, nodes)
    nodes.append(node("Identity", x, "last_hidden_state"))
    return model("bert_dynamic", nodes,
                 [io("input_ids", INT64, ["batch", "seq"]), io("attention_mask", INT64, ["batch", "seq"])],
                 [io("last_hidden_state", FLOAT, ["batch", "seq", HIDDEN])], inits, opset=17)
