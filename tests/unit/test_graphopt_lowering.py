"""Target graphopt takes neighbours into its fused ops (passes/fusion/lower.py), for fewer runtime steps:
the bias Add of a residual branch becomes SkipLayerNormalization's 5th input (as ORT's), and Q/K/V
projections of one x become one MatMul + Add + Split. Every compiled model is checked against ONNX
Runtime on the original; the ai.graphopt kernels against ORT's own SkipLayerNormalization."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from fusion_check import rand, tensor
from onnx import TensorProto, helper, numpy_helper
from target_check import assert_target_fused, check_target_numbers, compile_for, ops

import graphopt
from graphopt.verify import run_ort

SKIP = ["fuse-skip-layernorm"]


def residual(add="p = Add(mm, bias)", residual="s = Add(p, r)", bias=None, beta=True, extra_in="", extra_out="",
             reader=""):
    """Post-LN residual: LayerNorm(MatMul(h, w) + bias + r); `reader` lines may read the sum s."""
    inits = [tensor("w", rand(8, 8, seed=3)), tensor("gamma", rand(8, seed=5))]
    if bias is not False:
        inits.append(tensor("bias", rand(8, seed=4) if bias is None else bias))
    if beta:
        inits.append(tensor("beta", rand(8, seed=6)))
    return f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8] h, float[N,3,8] r{extra_in}) => (float[N,3,8] y{extra_out})
<{", ".join(inits)}>
{{
  mm = MatMul(h, w)
  {add}
  {residual}
  y = LayerNormalization<axis=-1, epsilon=1e-5>(s, gamma{", beta" if beta else ""})
  {reader}
}}"""


def skip_node(model):
    return next(n for n in model.graph.node if n.op_type == "SkipLayerNormalization")


@pytest.mark.parametrize("add,res", [("p = Add(mm, bias)", "s = Add(p, r)"),    # X = MatMul + bias
                                     ("p = Add(bias, mm)", "s = Add(r, p)")])   # bias first; on the R side
def test_skip_layernorm_takes_the_bias(add, res):
    out = assert_target_fused(residual(add, res), SKIP, "graphopt", "skip-layernorm",
                              ["MatMul", "go:SkipLayerNormalization"])
    skip = skip_node(out)
    assert skip.input[4] == "bias" and "mm" in skip.input[:2] and "r" in skip.input[:2]


def test_skip_layernorm_without_beta_leaves_its_slot_empty():
    out = assert_target_fused(residual(beta=False), SKIP, "graphopt", "skip-layernorm",
                              ["MatMul", "go:SkipLayerNormalization"])
    assert list(skip_node(out).input) == ["mm", "r", "gamma", "", "bias"]


def test_skip_layernorm_sum_output_includes_the_bias():
    """s = mm + bias + r is read by the next residual Add: the 4th output carries it, bias included
    (ORT on the original is the reference for both outputs)."""
    text = residual(extra_out=", float[N,3,8] z", reader="z = Add(s, y)")
    out = assert_target_fused(text, SKIP, "graphopt", "skip-layernorm", ["MatMul", "go:SkipLayerNormalization", "Add"])
    skip = skip_node(out)
    assert len(skip.input) == 5 and skip.output[3] in out.graph.node[2].input


@pytest.mark.parametrize("text", [
    residual(extra_out=", float[N,3,8] p"),                               # the bias Add is a graph output
    residual(reader="q = Mul(p, p)\n  z = Add(q, y)", extra_out=", float[N,3,8] z"),  # read by another node
    residual(bias=False, extra_in=", float[8] bias"),                     # the bias is not a constant
    residual(bias=rand(3, 8, seed=4)),                                    # a matrix, not a vector
    residual(bias=rand(1, seed=4)),                                       # a broadcast scalar, not hidden size
])
def test_skip_layernorm_keeps_a_bias_add_it_cannot_take(text):
    model, out, _ = compile_for(text, SKIP, "graphopt")
    assert ops(out).count("Add") == ops(model).count("Add") - 1  # only the residual Add was fused
    assert len(skip_node(out).input) == 4
    check_target_numbers(model, out, "graphopt")


def test_skip_layernorm_takes_one_bias_when_both_sides_have_one():
    text = residual(residual="r2 = Add(r, bias)\n  s = Add(p, r2)")
    out = assert_target_fused(text, SKIP, "graphopt", "skip-layernorm", ["MatMul", "Add", "go:SkipLayerNormalization"])
    assert list(skip_node(out).input)[:2] == ["mm", "r2"]


@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_other_targets_are_unchanged(target):
    _model, out, _ = compile_for(residual(), SKIP, target)
    want = {"ort": ["MatMul", "ms:SkipLayerNormalization"],  # ORT's own spelling takes the bias too
            "onnx": ["MatMul", "Add", "Add", "LayerNormalization"]}[target]
    assert ops(out) == want


# ---------------------------------------------------------------- the kernels vs ORT's SkipLayerNormalization

R = np.random.default_rng(7)
X, RES = R.standard_normal((2, 5, 16)).astype(np.float32), R.standard_normal((2, 5, 16)).astype(np.float32)
GAMMA, BETA, BIAS = (R.standard_normal(16).astype(np.float32) for _ in range(3))


def _skip_model(domain, with_sum, bias_const, beta=True):
    """SkipLayerNormalization(x, r, gamma, beta?, bias) in `domain`; gamma/beta constants, the bias a
    constant (the prepared kernel) or a feed (the generic one)."""
    inits = [numpy_helper.from_array(GAMMA, "gamma")] + ([numpy_helper.from_array(BETA, "beta")] if beta else [])
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, 16]) for n in ("x", "r")]
    if bias_const:
        inits.append(numpy_helper.from_array(BIAS, "bias"))
    else:
        vi.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [16]))
    outs = ["y", "", "", "sum"] if with_sum else ["y"]
    node = helper.make_node("SkipLayerNormalization", ["x", "r", "gamma", "beta" if beta else "", "bias"], outs,
                            domain=domain, epsilon=1e-5)
    g = helper.make_graph([node], "skip", vi, [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, 16])
                                               for n in outs if n], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("with_sum", [False, True])
@pytest.mark.parametrize("bias_const", [True, False])
@pytest.mark.parametrize("beta", [True, False])
def test_kernel_with_bias_matches_ort(with_sum, bias_const, beta):
    feed = {"x": X, "r": RES} | ({} if bias_const else {"bias": BIAS})
    want = run_ort(_skip_model("com.microsoft", with_sum, bias_const, beta), feed)
    sess = graphopt.Session(_skip_model("ai.graphopt", with_sum, bias_const, beta))
    for _ in range(2):  # the second run goes through the plan's cached per-shape path
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    assert not np.shares_memory(X, got["y"]) and np.array_equal(feed["x"], X)  # the feed is not written


# ---------------------------------------------------------------- Q/K/V packing

def attention_model(opset=17, shared="", bias_k=None, bias_in=False, kv="x", mask=True):
    """x (N,5,8) projected to Q/K/V (2 heads of 4), scaled scores, additive mask; `shared` lines may
    read a weight elsewhere."""
    w = [tensor(f"w{n}", rand(8, 8, seed=i) * 0.5) for i, n in enumerate("qkv")]
    b = [tensor("bq", rand(8, seed=10) * 0.1), tensor("bv", rand(8, seed=12) * 0.1)]
    if not bias_in:
        b.append(tensor("bk", rand(8, seed=11) * 0.1 if bias_k is None else bias_k))
    inits = w + b + [tensor("hs", np.array([0, 0, 2, 4]), "int64"), tensor("ms", np.array([0, 0, 8]), "int64"),
                     "float sc = {2.0}"]
    ins = "float[N,5,8] x" + (", float[N,5,8] z" if kv == "z" else "") + (", float[N,1,1,5] mask" if mask else "") \
        + (", float[8] bk" if bias_in else "")
    outs = "float[N,5,8] y" + (", float[N,5,8] o" if shared else "")
    return f"""<ir_version: 8, opset_import: ["" : {opset}]>
g ({ins}) => ({outs})
<{", ".join(inits)}>
{{
  qm = MatMul(x, wq)
  q = Add(qm, bq)
  km = MatMul({kv}, wk)
  k = Add(bk, km)
  vm = MatMul({kv}, wv)
  v = Add(vm, bv)
  qr = Reshape(q, hs)
  qt = Transpose<perm=[0, 2, 1, 3]>(qr)
  kr = Reshape(k, hs)
  kt = Transpose<perm=[0, 2, 3, 1]>(kr)
  vr = Reshape(v, hs)
  vt = Transpose<perm=[0, 2, 1, 3]>(vr)
  qk = MatMul(qt, kt)
  s = Div(qk, sc)
  {"sm = Add(s, mask)" if mask else ""}
  p = Softmax<axis=-1>({"sm" if mask else "s"})
  c = MatMul(p, vt)
  ct = Transpose<perm=[0, 2, 1, 3]>(c)
  y = Reshape(ct, ms)
  {shared}
}}"""


ATT = ["fuse-attention"]


@pytest.mark.parametrize("opset", [11, 17, 18])  # Split's sizes: an attribute below 13, an input from 13
@pytest.mark.parametrize("mask", [True, False])
def test_qkv_projections_are_packed(opset, mask):
    model, out, _ = compile_for(attention_model(opset, mask=mask), ATT, "graphopt")
    assert sorted(ops(out)) == sorted(["MatMul", "Add", "Split", "go:Attention"]), ops(out)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    att = next(n for n in out.graph.node if n.op_type == "Attention")
    assert list(att.input[:3]) == list(split.output) == ["q", "k", "v"]  # the Attention reads the Split's parts
    weight = next(i for i in out.graph.initializer if i.name == next(
        n for n in out.graph.node if n.op_type == "MatMul").input[1])
    assert list(weight.dims) == [8, 24]
    check_target_numbers(model, out, "graphopt")


def test_packing_holds_at_other_shapes():
    """One compiled model, two batch sizes through one Session: the Split's remembered slices per shape."""
    model, out, _ = compile_for(attention_model(), ATT, "graphopt")
    sess = graphopt.Session(out)
    for n, seed in ((3, 0), (1, 1), (3, 2)):
        rng = np.random.default_rng(seed)
        feed = {"x": rng.standard_normal((n, 5, 8)).astype(np.float32),
                "mask": np.where(rng.random((n, 1, 1, 5)) < 0.3, -1e4, 0).astype(np.float32)}
        np.testing.assert_allclose(sess.run(None, feed)[0], run_ort(model, feed)["y"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {"shared": "o = MatMul(x, wq)"},              # a weight read by another node: packing would copy it
    {"bias_in": True},                            # a bias that is a feed, not a constant
    {"bias_k": rand(5, 8, seed=11) * 0.1},        # a bias that is not a vector of the hidden size
    {"kv": "z"},                                  # K/V projected from another value (cross-attention)
])
def test_qkv_packing_refuses(kwargs):
    model, out, _ = compile_for(attention_model(**kwargs), ATT, "graphopt")
    assert "go:Attention" in ops(out) and "Split" not in ops(out)
    assert ops(out).count("MatMul") == 3 + ("shared" in kwargs), ops(out)
    fixed = {"bk": (rand(8, seed=11) * 0.1)} if kwargs.get("bias_in") else None
    check_target_numbers(model, out, "graphopt", fixed=fixed)


@pytest.mark.parametrize("target,want", [("ort", "ms:Attention"), ("onnx", "Softmax")])
def test_packing_is_graphopt_only(target, want):
    """ORT packs into its own Attention; target onnx (opset 17) keeps the decomposed attention."""
    _, out, _ = compile_for(attention_model(), ATT, target)
    assert want in ops(out) and "Split" not in ops(out)


def test_whole_pipeline_on_a_layer_is_idempotent():
    """The graphopt spellings run after every later fusion pass: a second compile changes nothing."""
    text = attention_model()
    once = graphopt.compile(onnx.parser.parse_model(text), level=2, target="graphopt")
    twice = graphopt.compile(once, level=2, target="graphopt")
    assert ops(twice) == ops(once) and ops(once).count("Split") == 1
