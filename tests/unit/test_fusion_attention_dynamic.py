"""fuse-attention on dynamic shapes: head split/merge Reshapes whose shape is computed at run time
from Shape/Gather/Slice/Unsqueeze/Concat pieces (passes/fusion/shape_proof.py). Expected numbers come
from ONNX Runtime on the unoptimized model, at more than one (batch, seq)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from fusion_check import hits, tensor
from graphopt import golden
from graphopt.verify import compare_arrays, random_feed, run_ort
from target_check import compile_for, ops, rand, run_target

ATT = ["fuse-attention"]
SPLITS = {  # Q/K/V (N, S, 8) -> (N, S, 2, 4): how exporters spell the target shape
    "size_of_projection": "sh{t} = Shape({t})\n  bi{t} = Gather<axis=0>(sh{t}, i0)\n  bu{t} = Unsqueeze(bi{t}, z0)\n"
                          "  si{t} = Gather<axis=0>(sh{t}, i1)\n  su{t} = Unsqueeze(si{t}, z0)\n"
                          "  hs{t} = Concat<axis=0>(bu{t}, su{t}, two, four)",
    "input_shape_minus_one": "f{t} = Shape(x)\n  l{t} = Slice(f{t}, z0, m1)\n  hs{t} = Concat<axis=0>(l{t}, m1, four)",
    "shape_start_end": "l{t} = Shape<start=0, end=2>(x)\n  hs{t} = Concat<axis=0>(l{t}, two, four)",
}
MERGES = {  # (N, 2, S, 4) -> (N, S, 8)
    "size_of_context": "mb = Shape(ct)\n  mbi = Gather<axis=0>(mb, i0)\n  mbu = Unsqueeze(mbi, z0)\n"
                       "  msi = Gather<axis=0>(mb, i1)\n  msu = Unsqueeze(msi, z0)\n  ms = Concat<axis=0>(mbu, msu, eight)",
    "size_of_product": "mb = Shape(c)\n  mbi = Gather<axis=0>(mb, i0)\n  mbu = Unsqueeze(mbi, z0)\n"
                       "  msi = Gather<axis=0>(mb, i2)\n  msu = Unsqueeze(msi, z0)\n  ms = Concat<axis=0>(mbu, msu, eight)",
    "input_shape_minus_one": "mfull = Shape(x)\n  ml = Slice(mfull, z0, m1)\n  ms = Concat<axis=0>(ml, m1)",
    "constant": "ms = Identity(c088)",
}


def dyn_attention(split="size_of_projection", merge="size_of_context", batch_source=None, opset=17):
    """x (N,S,8) -> 2 heads of 4 with a (1 - mask) * min padding mask; split/merge shapes at run time.
    batch_source: a tensor whose dim 0 replaces Q's batch in the split (a proof the fusion must refuse)."""
    w = [tensor(f"w{n}", rand(8, 8, seed=i, scale=0.5)) for i, n in enumerate("qkv")]
    b = [tensor(f"b{n}", rand(8, seed=10 + i, scale=0.1)) for i, n in enumerate("qkv")]
    ints = {"i0": np.array(0), "i1": np.array(1), "i2": np.array(2), "z0": [0], "m1": [-1], "two": [2], "four": [4],
            "eight": [8], "c088": [0, 0, 8], "maxes": [1, 2]}
    inits = w + b + [tensor(k, np.array(v), "int64") for k, v in ints.items()] + [
        "float s = {2.0}", "float one = {1.0}", f"float fmin = {{{float(np.finfo(np.float32).min)!r}}}"]
    lines = []
    for t in "qkv":
        text = SPLITS[split].format(t=t)
        if batch_source and t == "q":
            text = text.replace(f"bi{t} = Gather<axis=0>(sh{t}, i0)", f"ob = Shape({batch_source})\n  bi{t} = Gather<axis=0>(ob, i0)")
        lines.append(text)
    extra_in = ", float[M,S,8] other" if batch_source == "other" else ""
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
g (float[N,S,8] x, int64[N,S] mask{extra_in}) => (float[N,S,8] y)
<{", ".join(inits)}>
{{
  qm = MatMul(x, wq)
  q = Add(qm, bq)
  km = MatMul(x, wk)
  k = Add(km, bk)
  vm = MatMul(x, wv)
  v = Add(vm, bv)
  {chr(10).join(lines)}
  qr = Reshape(q, hsq)
  qt = Transpose<perm=[0, 2, 1, 3]>(qr)
  kr = Reshape(k, hsk)
  kt = Transpose<perm=[0, 2, 3, 1]>(kr)
  vr = Reshape(v, hsv)
  vt = Transpose<perm=[0, 2, 1, 3]>(vr)
  m4 = Unsqueeze(mask, maxes)
  mf = Cast<to=1>(m4)
  inv = Sub(one, mf)
  em = Mul(inv, fmin)
  sc = MatMul(qt, kt)
  ss = Div(sc, s)
  sm = Add(ss, em)
  p = Softmax<axis=-1>(sm)
  c = MatMul(p, vt)
  ct = Transpose<perm=[0, 2, 1, 3]>(c)
  {MERGES[merge]}
  y = Reshape(ct, ms)
}}"""


def _feeds(model, shapes=((2, 5), (3, 7))):
    """Random inputs at several (batch, seq), every sequence padded at its end but one token kept."""
    feeds = []
    for seed, (batch, seq) in enumerate(shapes):
        feed = random_feed(model, seed, {"N": batch, "S": seq, "M": batch, "batch": batch, "seq": seq})
        if "mask" in feed or "attention_mask" in feed:
            key = "mask" if "mask" in feed else "attention_mask"
            keep = np.random.default_rng(seed).integers(1, seq + 1, batch)
            feed[key] = (np.arange(seq)[None, :] < keep[:, None]).astype(np.int64)
        if "input_ids" in feed:
            feed["input_ids"] = np.random.default_rng(seed).integers(0, 100, (batch, seq)).astype(np.int64)
        feeds.append(feed)
    return feeds


def _matches_ort_on_original(model, out, target, rtol=1e-4, atol=1e-5):
    onnx.checker.check_model(out, full_check=True)
    for feed in _feeds(model):
        want, got = run_ort(model, feed), run_target(out, feed, target)
        for name in want:
            err = compare_arrays(name, want[name], got[name], rtol, atol)
            assert err.ok, f"{name}: max abs {err.max_abs:.3g} ({target})"


TARGETS = [("graphopt", None, {"go:Attention"}), ("ort", None, {"ms:Attention", "ms:MultiHeadAttention"}),
           ("onnx", 23, {"Attention"})]  # ORT's packed Attention when nothing else reads Q/K/V


@pytest.mark.parametrize("target,opset,fused", TARGETS)
@pytest.mark.parametrize("split,merge", [("size_of_projection", "size_of_context"),
                                         ("input_shape_minus_one", "input_shape_minus_one"),
                                         ("shape_start_end", "size_of_product"),
                                         ("size_of_projection", "constant")])
def test_dynamic_head_split_fuses(target, opset, fused, split, merge):
    model, out, report = compile_for(dyn_attention(split, merge), ATT, target, opset)
    assert hits(report, "attention") == 1
    assert fused & set(ops(out)) and "Softmax" not in ops(out), ops(out)
    _matches_ort_on_original(model, out, target)


def test_dynamic_head_split_fuses_at_O2_with_cleanup():
    """The whole pipeline (shape folding, CSE) then fusion: the dead shape pieces go too."""
    model, out, report = compile_for(dyn_attention(), [], "ort", level=2)
    assert hits(report, "attention") == 1
    assert "Reshape" not in ops(out) and "Softmax" not in ops(out), ops(out)
    _matches_ort_on_original(model, out, "ort")


def test_batch_from_another_tensor_is_refused_and_named():
    """Q's split takes its batch from another input: equal sizes cannot be proven, so nothing fuses
    and --trace names the piece."""
    model, out, report = compile_for(dyn_attention(batch_source="other"), ATT, "graphopt", trace=["attention"])
    assert hits(report, "attention") == 0 and "Softmax" in ops(out)
    reason = report.near_misses["attention"][2]
    assert "element 0 (dim 0 of 'other') is not provably the batch" in reason, reason
    feed = _feeds(model)[0]
    want, got = run_ort(model, feed), run_target(out, feed, "graphopt")
    assert np.allclose(want["y"], got["y"], rtol=1e-5, atol=1e-6)


def test_merge_reading_head_dims_is_refused():
    """The context's Shape also read at the heads axis (not a batch/seq size the fused op keeps)."""
    text = dyn_attention(merge="size_of_context").replace("msi = Gather<axis=0>(mb, i1)", "msi = Gather<axis=0>(mb, i2)")
    model, out, report = compile_for(text, ATT, "graphopt", trace=["attention"])
    assert hits(report, "attention") == 0, "fused a merge of (batch, heads, 8)"
    assert "merge-heads" in report.near_misses["attention"][2], report.near_misses["attention"]


BERT_DYNAMIC = golden.model_path("bert_dynamic")


@pytest.mark.parametrize("target,opset,fused", TARGETS)
def test_bert_dynamic_every_layer_fuses(target, opset, fused):
    """models/bert_dynamic: three layers, three spellings of the run-time head split/merge."""
    model = onnx.load_model(str(BERT_DYNAMIC))
    result = graphopt.compile_model(model, level=2, target=target, opset=opset, trace=["attention"])
    out = result.model
    assert sum(ops(out).count(f) for f in fused) == 3 and "Softmax" not in ops(out), ops(out)
    assert hits(result.report, "attention") == 3
    assert "attention" not in result.report.near_misses, result.report.near_misses  # --trace: zero refusals
    _matches_ort_on_original(model, out, target, rtol=1e-4, atol=1e-4)
