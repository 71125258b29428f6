"""Llama-style decoder attention as transformers 5 exports it: rotary embedding (rotate_half on split heads,
cos/sin of run-time angles positions * inv_freq), grouped-query attention (repeat_kv as
Unsqueeze/Expand/Reshape), a causal + padding mask, the SDPA NaN guard. fuse-rotary moves the rotation
before the head split (RotaryEmbedding), fuse-attention then takes the block with kv_num_heads.
Expected numbers: ONNX Runtime on the unoptimized model, left-padded batches included."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fusion_check import hits, tensor
from graphopt.verify import compare_arrays, run_ort
from target_check import compile_for, ops, rand, run_target

HEADS, KV, D = 4, 2, 4  # hidden 16, K/V 8
PASSES = ["fuse-rotary", "fuse-attention"]


def decoder(masked=float("-inf"), rotary=True, gqa=True):
    """x (N,S,16) -> causal GQA attention with RoPE; mask int64 (N,S) of kept tokens."""
    kv = KV if gqa else HEADS
    inits = [tensor("wq", rand(16, 16, seed=1, scale=0.4)), tensor("wk", rand(16, kv * D, seed=2, scale=0.4)),
             tensor("wv", rand(16, kv * D, seed=3, scale=0.4)),
             tensor("inv_freq", np.array([1.0, 0.1], np.float32)),
             "float zero = {0.0}", f"float masked = {{{masked!r}}}", "float c = {0.70710677}"]
    ints = {"qsplit": [0, 0, HEADS, D], "kvsplit": [0, 0, -1, D], "z": [0], "one": [1], "two": [2], "three": [3],
            "half": [D // 2], "big": [int(np.iinfo(np.int64).max)], "ax01": [0, 2], "ax12": [1, 2], "rep": [HEADS // kv],
            "dd": [D], "m1": [-1], "i1": np.array(1), "i0": np.array(0), "merge": [0, 0, HEADS * D]}
    inits += [tensor(k, np.array(v), "int64") for k, v in ints.items()]

    def rope(t):
        if not rotary:
            return ""
        return f"""{t}c = Mul({t}, cos4)
  {t}lo = Slice({t}, z, half, three, one)
  {t}hi = Slice({t}, half, big, three, one)
  {t}n = Neg({t}hi)
  {t}rot = Concat<axis=-1>({t}n, {t}lo)
  {t}s = Mul({t}rot, sin4)
  {t}r = Add({t}c, {t}s)"""

    def repeat(t):
        if not gqa:
            return ""
        return f"""{t}u = Unsqueeze({t}, two)
  {t}sh = Shape({t})
  {t}b = Slice({t}sh, z, one)
  {t}s = Slice({t}sh, two, three)
  {t}w = Concat<axis=0>({t}b, one, rep, {t}s, dd)
  {t}e = Expand({t}u, {t}w)
  {t}back = Concat<axis=0>({t}b, m1, {t}s, dd)
  {t}x = Reshape({t}e, {t}back)"""
    kv_split = "kvsplit"
    qrot, krot = ("qtr", "ktr") if rotary else ("qt", "kt")
    kfull, vfull = (krot + "x", "vtx") if gqa else (krot, "vt")
    return f"""<ir_version: 9, opset_import: ["" : 18]>
g (float[N,S,16] x, int64[N,S] mask) => (float[N,S,16] y)
<{", ".join(inits)}>
{{
  xs = Shape(x)
  sl = Slice(xs, one, two)
  sq = Squeeze(sl)
  pos = Range(i0, sq, i1)
  posu = Unsqueeze(pos, ax01)
  posf = Cast<to=1>(posu)
  f = Mul(posf, inv_freq)
  ff = Concat<axis=-1>(f, f)
  cs = Cos(ff)
  sn = Sin(ff)
  cos4 = Unsqueeze(cs, one)
  sin4 = Unsqueeze(sn, one)
  q = MatMul(x, wq)
  k = MatMul(x, wk)
  v = MatMul(x, wv)
  qr0 = Reshape(q, qsplit)
  qt = Transpose<perm=[0, 2, 1, 3]>(qr0)
  kr0 = Reshape(k, {kv_split})
  kt = Transpose<perm=[0, 2, 1, 3]>(kr0)
  vr0 = Reshape(v, {kv_split})
  vt = Transpose<perm=[0, 2, 1, 3]>(vr0)
  {rope("qt")}
  {rope("kt")}
  {repeat(krot)}
  {repeat("vt")}
  kT = Transpose<perm=[0, 1, 3, 2]>({kfull})
  qs = Mul({qrot}, c)
  ks = Mul(kT, c)
  sc = MatMul(qs, ks)
  rows = Unsqueeze(pos, one)
  cols = Unsqueeze(pos, z)
  causal = LessOrEqual(cols, rows)
  keep = Cast<to=9>(mask)
  keep4 = Unsqueeze(keep, ax12)
  both = And(causal, keep4)
  bias = Where(both, zero, masked)
  sm = Add(sc, bias)
  p = Softmax<axis=-1>(sm)
  nan = IsNaN(p)
  g = Where(nan, zero, p)
  pv = MatMul(g, {vfull})
  ct = Transpose<perm=[0, 2, 1, 3]>(pv)
  y = Reshape(ct, merge)
}}"""


def _feeds():
    rng = np.random.default_rng(9)
    out = []
    for batch, seq, pad in ((3, 6, 2), (1, 1, 0), (2, 5, 0)):
        mask = np.ones((batch, seq), np.int64)
        if pad:
            mask[1, :pad] = 0  # left padding: its first queries see no key (the guard's 0 rows)
        out.append({"x": rng.standard_normal((batch, seq, 16)).astype(np.float32), "mask": mask})
    return out


def _check(model, out, target):
    onnx.checker.check_model(out, full_check=True)
    for feed in _feeds():
        want, got = run_ort(model, feed), run_target(out, feed, target)
        err = compare_arrays("y", want["y"], got["y"], 1e-4, 1e-5)
        assert err.ok, f"max abs {err.max_abs:.3g} ({target}, {feed['x'].shape})"


@pytest.mark.parametrize("target,opset,expect", [
    ("graphopt", None, {"go:Attention", "go:RotaryEmbedding"}),
    ("onnx", 23, {"Attention", "RotaryEmbedding"}),
    ("ort", 23, {"Attention", "RotaryEmbedding"}),
    ("ort", None, {"ms:MultiHeadAttention"}),  # rotation written out on the 3-D value below opset 23
])
@pytest.mark.parametrize("variant", [{}, {"gqa": False}, {"rotary": False}])
def test_decoder_attention_fuses(target, opset, expect, variant):
    model, out, report = compile_for(decoder(**variant), PASSES, target, opset)
    assert hits(report, "attention") == 1, report.near_misses
    assert hits(report, "rotary") == (2 if variant.get("rotary", True) else 0)
    want = expect if variant.get("rotary", True) else {e for e in expect if "Rotary" not in e}
    assert want <= set(ops(out)) and "Softmax" not in ops(out), ops(out)
    _check(model, out, target)


def test_gqa_for_ort_contrib_ops_repeats_heads():
    """Below opset 23 the ort target's MultiHeadAttention takes as many K/V heads as query heads."""
    model, out, report = compile_for(decoder(rotary=False), ["fuse-attention"], "ort")
    assert "ms:MultiHeadAttention" in ops(out) and "Expand" in ops(out), ops(out)
    _check(model, out, "ort")


def test_rotary_refuses_below_opset_23_for_onnx():
    model, out, report = compile_for(decoder(), PASSES, "onnx", None, trace=["rotary"])
    assert hits(report, "rotary") == 0
    assert "only from opset 23" in report.near_misses["rotary"][2]


def test_rotary_refuses_other_halves():
    """Q's first "half" sliced from 1:3 is not rotate_half: only K's rotation fuses, the trace says why."""
    text = decoder().replace("qtlo = Slice(qt, z, half, three, one)", "qtlo = Slice(qt, one, three, three, one)")
    model, out, report = compile_for(text, ["fuse-rotary"], "graphopt", trace=["rotary"])
    assert hits(report, "rotary") == 1
    assert "two halves" in report.near_misses["rotary"][2], report.near_misses["rotary"]
    _check(model, out, "graphopt")


def decoder_with_past(gqa=True, rotary=True):
    """decoder() with a KV cache: past_k/past_v (N, kv, P, 4) concatenated before the new keys/values
    (present_* are graph outputs), positions P..P+S-1, a mask over all P+S keys."""
    text = decoder(gqa=gqa, rotary=rotary)
    kv = KV if gqa else HEADS
    k_new = "ktr" if rotary else "kt"
    text = text.replace("g (float[N,S,16] x, int64[N,S] mask) => (float[N,S,16] y)",
                        f"g (float[N,S,16] x, int64[N,T] mask, float[N,{kv},P,{D}] past_k, float[N,{kv},P,{D}] past_v)"
                        f" => (float[N,S,16] y, float[N,{kv},T,{D}] present_k, float[N,{kv},T,{D}] present_v)")
    text = text.replace("""  pos = Range(i0, sq, i1)""", """  ps = Shape(past_k)
  pl = Slice(ps, two, three)
  p0 = Squeeze(pl)
  pend = Add(p0, sq)
  pos = Range(p0, pend, i1)
  allpos = Range(i0, pend, i1)""")
    text = text.replace("cols = Unsqueeze(pos, z)", "cols = Unsqueeze(allpos, z)")
    # the cache Concat sits between the rotation and repeat_kv
    text = text.replace(f"{k_new}u = Unsqueeze({k_new}, two)",
                        f"present_k = Concat<axis=2>(past_k, {k_new})\n  {k_new}u = Unsqueeze(present_k, two)")
    text = text.replace(f"{k_new}sh = Shape({k_new})", f"{k_new}sh = Shape(present_k)")
    text = text.replace("vtu = Unsqueeze(vt, two)", "present_v = Concat<axis=2>(past_v, vt)\n  vtu = Unsqueeze(present_v, two)")
    text = text.replace("vtsh = Shape(vt)", "vtsh = Shape(present_v)")
    if not gqa:
        text = text.replace(f"kT = Transpose<perm=[0, 1, 3, 2]>({k_new})", f"present_k = Concat<axis=2>(past_k, {k_new})\n"
                            "  kT = Transpose<perm=[0, 1, 3, 2]>(present_k)")
        text = text.replace("pv = MatMul(g, vt)", "present_v = Concat<axis=2>(past_v, vt)\n  pv = MatMul(g, present_v)")
    return text


def _past_feeds(gqa):
    rng = np.random.default_rng(12)
    kv = KV if gqa else HEADS
    out = []
    for batch, seq, past, pad in ((2, 4, 0, 0), (2, 1, 5, 2), (3, 2, 3, 0)):
        mask = np.ones((batch, past + seq), np.int64)
        mask[1, :pad] = 0  # left padding inside the cache
        out.append({"x": rng.standard_normal((batch, seq, 16)).astype(np.float32), "mask": mask,
                    "past_k": rng.standard_normal((batch, kv, past, D)).astype(np.float32),
                    "past_v": rng.standard_normal((batch, kv, past, D)).astype(np.float32)})
    return out


@pytest.mark.parametrize("target,opset", [("graphopt", None), ("onnx", 23), ("ort", 23), ("ort", None)])
@pytest.mark.parametrize("gqa", [True, False])
def test_decoder_with_kv_cache_fuses(target, opset, gqa):
    model, out, report = compile_for(decoder_with_past(gqa), PASSES, target, opset)
    assert hits(report, "attention") == 1, report.near_misses
    assert "Softmax" not in ops(out), ops(out)
    onnx.checker.check_model(out, full_check=True)
    for feed in _past_feeds(gqa):
        want, got = run_ort(model, feed), run_target(out, feed, target)
        for name in ("y", "present_k", "present_v"):
            err = compare_arrays(name, want[name], got[name], 1e-4, 1e-5)
            assert err.ok, f"{name}: max abs {err.max_abs:.3g} ({target}, {feed['x'].shape})"
