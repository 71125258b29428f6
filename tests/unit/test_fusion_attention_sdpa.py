"""fuse-attention on torch's export of scaled_dot_product_attention (transformers 5 with the TorchScript
and dynamo exporters): head splits sized from Shape(attention_mask) with allowzero=1, q and k each
scaled, K transposed through 3-D (Reshape/Transpose[0,2,1]/Reshape), the Where(IsNaN(p), 0, p)
guard, a view of P*V to its own shape built from Shape reads of values the fusion removes.
Expected numbers: ONNX Runtime on the unoptimized model, with a fully padded sequence in the batch
(its score rows are entirely masked: the guard's 0 rows)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fusion_check import hits, tensor
from graphopt.verify import compare_arrays, run_ort
from target_check import compile_for, ops, rand, run_target

ATT = ["fuse-attention"]
NEG_INF, FMIN = float("-inf"), float(np.finfo(np.float32).min)


def sdpa(masked=NEG_INF, k_through_3d=True, view_pv=True, guard=True, merge_from="mask"):
    """x (N,S,8) -> 2 heads of 4, as torch exports F.scaled_dot_product_attention with a padding mask."""
    w = [tensor(f"w{n}", rand(8, 8, seed=i, scale=0.5)) for i, n in enumerate("qkv")]
    b = [tensor(f"b{n}", rand(8, seed=10 + i, scale=0.1)) for i, n in enumerate("qkv")]
    ints = {"m1": [-1], "four": [4], "lo": [int(np.iinfo(np.int64).min)], "m2": [-2], "ax12": [1, 2], "z0": [0],
            "i0": np.array(0), "i2": np.array(2)}
    inits = w + b + [tensor(k, np.array(v), "int64") for k, v in ints.items()] + [
        "float c = {0.8408964}", "float zero = {0.0}", f"float masked = {{{masked!r}}}".replace("-inf", "-inf")]
    kt = "kt"
    if k_through_3d:
        k_lines = """ks = Shape(kt)
  kT = Slice(ks, m2, m1)
  kBH = Slice(ks, lo, m2)
  flat = Concat<axis=0>(m1, kT, four)
  kf = Reshape(kt, flat)
  kft = Transpose<perm=[0, 2, 1]>(kf)
  back = Concat<axis=0>(kBH, four, kT)
  ktt = Reshape(kft, back)"""
        kt = "ktt"
    else:
        k_lines = "ktt = Transpose<perm=[0, 1, 3, 2]>(kt)"
        kt = "ktt"
    probs = "p = Softmax<axis=-1>(sm)\n  nan = IsNaN(p)\n  g = Where(nan, zero, p)" if guard else \
        "g = Softmax<axis=-1>(sm)"
    if view_pv:
        view = """pvs = Shape(pv)
  pb = Gather<axis=0>(pvs, i0)
  pbu = Unsqueeze(pb, z0)
  qs_ = Shape(qt)
  qsl = Gather<axis=0>(qs_, i2)
  qslu = Unsqueeze(qsl, z0)
  vshape = Concat<axis=0>(pbu, m1, qslu, four)
  pvv = Reshape(pv, vshape)"""
    else:
        view = ""
    merge = "mshape = Concat<axis=0>(mb, ms, m1)" if merge_from == "mask" else ""
    out_type = "float[T,8] y" if merge_from == "flat" else "float[N,S,8] y"
    return f"""<ir_version: 9, opset_import: ["" : 18]>
g (float[N,S,8] x, int64[N,S] mask) => ({out_type})
<{", ".join(inits + [tensor("m0m1", np.array([0, 0, -1]), "int64"), tensor("flat2", np.array([-1, 8]), "int64")])}>
{{
  mb = Shape<start=0, end=1>(mask)
  ms = Shape<start=1, end=2>(mask)
  split = Concat<axis=0>(mb, ms, m1, four)
  qm = MatMul(x, wq)
  q = Add(qm, bq)
  km = MatMul(x, wk)
  k = Add(km, bk)
  vm = MatMul(x, wv)
  v = Add(vm, bv)
  qr = Reshape<allowzero=1>(q, split)
  qt = Transpose<perm=[0, 2, 1, 3]>(qr)
  kr = Reshape<allowzero=1>(k, split)
  kt = Transpose<perm=[0, 2, 1, 3]>(kr)
  vr = Reshape<allowzero=1>(v, split)
  vt = Transpose<perm=[0, 2, 1, 3]>(vr)
  {k_lines}
  qsc = Mul(qt, c)
  ksc = Mul({kt}, c)
  sc = MatMul(qsc, ksc)
  m4 = Unsqueeze(mask, ax12)
  mbool = Cast<to=9>(m4)
  em = Where(mbool, zero, masked)
  sm = Add(sc, em)
  {probs}
  pv = MatMul(g, vt)
  {view}
  ct = Transpose<perm=[0, 2, 1, 3]>({"pvv" if view_pv else "pv"})
  {merge}
  y = Reshape<allowzero={int(merge_from == "mask")}>(ct, {dict(mask="mshape", flat="flat2").get(merge_from, "m0m1")})
}}"""


def _feeds(fully_padded=True):
    rng = np.random.default_rng(5)
    feeds = []
    for batch, seq in ((3, 5), (1, 1), (2, 6)):
        mask = np.ones((batch, seq), np.int64)
        if batch == 3:
            mask[1, 3:] = 0
            mask[2, :] = 0 if fully_padded else 1  # a fully padded sequence: the guard makes its rows 0
        feeds.append({"x": rng.standard_normal((batch, seq, 8)).astype(np.float32), "mask": mask})
    return feeds


def _check(model, out, target, fully_padded=True):
    onnx.checker.check_model(out, full_check=True)
    for feed in _feeds(fully_padded):
        want, got = run_ort(model, feed), run_target(out, feed, target)
        assert not np.isnan(got["y"]).any() or np.isnan(want["y"]).any()
        err = compare_arrays("y", want["y"], got["y"], 1e-4, 1e-5)
        assert err.ok, f"max abs {err.max_abs:.3g} ({target}, feed {feed['mask'].shape})"


TARGETS = [("graphopt", None, {"go:Attention"}), ("ort", None, {"ms:MultiHeadAttention", "ms:Attention"}),
           ("onnx", 23, {"Attention"})]


@pytest.mark.parametrize("target,opset,fused", TARGETS)
@pytest.mark.parametrize("variant", [{}, {"k_through_3d": False, "view_pv": False}, {"guard": False, "masked": FMIN},
                                     {"merge_from": "constant"}, {"merge_from": "flat"}])  # flat: (B*S, 8), GPT-2
def test_sdpa_export_fuses(target, opset, fused, variant):
    model, out, report = compile_for(sdpa(**variant), ATT, target, opset)
    assert hits(report, "attention") == 1, report.near_misses
    assert fused & set(ops(out)) and "Softmax" not in ops(out), ops(out)
    # ORT's Attention-23 kernel gives 0, not the uniform average the spec's softmax gives, for a row
    # whose every key is masked with finfo.min: that one case is left to the next test
    _check(model, out, target, fully_padded=not (target == "onnx" and variant.get("masked") == FMIN))


def test_onnx_target_fully_masked_finite_rows_in_graphopt_runtime():
    """The Attention-23 output on a fully padded sequence with a finfo.min mask: graphopt's runtime
    gives the original's uniform average (ORT's kernel gives 0 there, see above)."""
    model, out, _ = compile_for(sdpa(guard=False, masked=FMIN), ATT, "onnx", 23)
    assert "Attention" in ops(out)
    for feed in _feeds():
        err = compare_arrays("y", run_ort(model, feed)["y"], run_target(out, feed, "graphopt")["y"], 1e-4, 1e-5)
        assert err.ok, err.max_abs


@pytest.mark.parametrize("target", ["graphopt", "ort"])
def test_guard_over_a_finite_mask(target):
    """A finfo.min mask never makes NaN: a fully padded row averages every key, as the original."""
    model, out, _ = compile_for(sdpa(masked=FMIN), ATT, target)
    assert "Softmax" not in ops(out)
    _check(model, out, target)


def test_view_of_another_shape_is_refused():
    """P*V viewed with its heads and rows swapped is not a no-op view: nothing fuses, and the trace
    names the view."""
    text = sdpa().replace("vshape = Concat<axis=0>(pbu, m1, qslu, four)", "vshape = Concat<axis=0>(pbu, qslu, m1, four)")
    model, out, report = compile_for(text, ATT, "graphopt", trace=["attention"])
    assert hits(report, "attention") == 0 and "Softmax" in ops(out)
    assert "view of the P*V product" in report.near_misses["attention"][2], report.near_misses["attention"]
