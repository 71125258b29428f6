"""Small transformer models exported as a user would today (bench only: needs torch and transformers).

Each model has random seeded weights (structure is what the fusions see) and dynamic batch/sequence
axes, exported by torch's TorchScript exporter (`ts`, opset 17) or its dynamo exporter (`dynamo`,
opset 18). Decoders are exported without a KV cache (the prefill graph).

    python -m bench.transformer_exports --out /tmp/exports      # writes <model>_<exporter>.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

HIDDEN, HEADS, LAYERS = 64, 4, 2
MODELS = ("bert", "vit", "llama", "gpt2")
EXPORTERS = ("ts", "dynamo")


def _text_module(inner, out):
    """forward(input_ids, attention_mask) -> out(inner(...)) (named arguments: the exporters read them)."""
    import torch

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return out(self.inner(input_ids=input_ids, attention_mask=attention_mask))
    return Text().eval()


def _build(name: str):
    """(torch module, example inputs, dynamic dims per input, ORT optimizer model_type, heads)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 200, (2, 7)), torch.ones(2, 7, dtype=torch.int64)
    text_inputs = {"input_ids": ids, "attention_mask": mask}
    seq = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    if name == "bert":
        cfg = tf.BertConfig(vocab_size=200, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            intermediate_size=2 * HIDDEN, max_position_embeddings=128)
        return _text_module(tf.BertModel(cfg).eval(), lambda o: o.last_hidden_state), text_inputs, seq, "bert", HEADS
    if name == "llama":
        cfg = tf.LlamaConfig(vocab_size=200, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, num_key_value_heads=HEADS // 2, max_position_embeddings=128,
                             use_cache=False)
        return _text_module(tf.LlamaForCausalLM(cfg).eval(), lambda o: o.logits), text_inputs, seq, "gpt2", HEADS
    if name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=200, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=128,
                            use_cache=False)
        return _text_module(tf.GPT2LMHeadModel(cfg).eval(), lambda o: o.logits), text_inputs, seq, "gpt2", HEADS
    if name == "vit":
        cfg = tf.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                           intermediate_size=2 * HIDDEN, image_size=32, patch_size=8)
        inner = tf.ViTModel(cfg, add_pooling_layer=False).eval()

        class Vision(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).last_hidden_state
        return Vision().eval(), {"pixel_values": torch.randn(2, 3, 32, 32)}, {"pixel_values": {0: "batch"}}, "vit", HEADS
    raise ValueError(name)


KV_LAYERS, KV_HEADS = LAYERS, HEADS // 2


def export_llama_kv(out: Path) -> Path:
    """The Llama-style decoder's step graph with a KV cache (TorchScript exporter): input_ids (B, S),
    attention_mask (B, P+S), past_<layer>_<k|v> (B, kv, P, D) -> logits, present_<layer>_<k|v>.
    Prefill is the same graph with P = 0."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=200, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=KV_LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256)
    inner = tf.LlamaForCausalLM(cfg).eval()

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, *past):
            cache = tf.DynamicCache(config=cfg)
            for i in range(KV_LAYERS):
                cache.update(past[2 * i], past[2 * i + 1], i)
            start = past[0].shape[2]
            pos = torch.arange(start, start + input_ids.shape[1]).unsqueeze(0)
            o = self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                           position_ids=pos, use_cache=True)
            return (o.logits, *[t for layer in o.past_key_values.layers for t in (layer.keys, layer.values)])

    head = HIDDEN // HEADS
    past = [torch.randn(2, KV_HEADS, 5, head) for _ in range(2 * KV_LAYERS)]
    names = ["input_ids", "attention_mask"] + [f"past_{i}_{t}" for i in range(KV_LAYERS) for t in "kv"]
    outs = ["logits"] + [f"present_{i}_{t}" for i in range(KV_LAYERS) for t in "kv"]
    dims = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}}
    dims.update({n: {0: "batch", 2: "past"} for n in names[2:]})
    dims.update({n: {0: "batch", 2: "total"} for n in outs[1:]})
    path = out / "llama-kv_ts.onnx"
    torch.onnx.export(Step().eval(), (torch.randint(0, 200, (2, 3)), torch.ones(2, 8, dtype=torch.int64), *past),
                      str(path), dynamo=False, opset_version=17, input_names=names, output_names=outs,
                      dynamic_axes=dims)
    return path


def export(name: str, exporter: str, out: Path) -> tuple[Path, str, int]:
    """Export one model; (path, ORT optimizer model_type, heads). Raises what torch raises."""
    import torch

    model, inputs, dims, model_type, heads = _build(name)
    path = out / f"{name}_{exporter}.onnx"
    names = list(inputs)
    kwargs = {"input_names": names, "output_names": ["out"]}
    if exporter == "ts":
        torch.onnx.export(model, tuple(inputs.values()), str(path), dynamo=False, opset_version=17,
                          dynamic_axes=dims, **kwargs)
    else:
        shapes = {k: {i: torch.export.Dim(d) for i, d in v.items()} for k, v in dims.items()}
        torch.onnx.export(model, tuple(inputs.values()), str(path), dynamo=True, opset_version=18,
                          dynamic_shapes=shapes, **kwargs)
    return path, model_type, heads


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/graphopt_transformer_exports")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        for exporter in EXPORTERS:
            try:
                print(export(name, exporter, out)[0])
            except Exception as e:  # noqa: BLE001  (an exporter's failure is reported, the rest go on)
                print(f"{name}_{exporter}: export failed: {str(e).splitlines()[0][:200]}")
    try:
        print(export_llama_kv(out))
    except Exception as e:  # noqa: BLE001
        print(f"llama-kv_ts: export failed: {str(e).splitlines()[0][:200]}")


if __name__ == "__main__":
    main()
