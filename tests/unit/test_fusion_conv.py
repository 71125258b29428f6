"""fuse-conv: BatchNormalization / per-channel Mul, Add / zero Pad folded into Conv, ConvTranspose, Gemm, pools."""
import numpy as np
import pytest
from fusion_check import assert_fused, assert_refused, ops, rand, run, tensor

P = ["fuse-conv"]
HEAD = '<ir_version: 8, opset_import: ["" : {opset}]>\n'


def bn_stats(c, seed=1):
    return [tensor("s", rand(c, seed=seed)), tensor("b", rand(c, seed=seed + 1)),
            tensor("mu", rand(c, seed=seed + 2)), tensor("var", rand(c, seed=seed + 3, low=0.1))]


def conv_bn(opset=13, bias=True, extra="", mean="mu", outputs="float[1,4,6,6] y", body_extra=""):
    inits = [tensor("W", rand(4, 3, 3, 3))] + ([tensor("B", rand(4, seed=9))] if bias else []) + bn_stats(4)
    conv_in = "x, W, B" if bias else "x, W"
    return HEAD.format(opset=opset) + f"""g (float[1,3,8,8] x{extra}) => ({outputs})
<{", ".join(inits)}>
{{
  c = Conv({conv_in})
  y = BatchNormalization(c, s, b, {mean}, var)
  {body_extra}
}}"""


@pytest.mark.parametrize("opset,bias", [(13, True), (13, False), (9, True), (15, False)])
def test_bn_into_conv(opset, bias):
    assert_fused(conv_bn(opset, bias), P, "bn-into-conv", ["Conv"])


def test_bn_into_grouped_conv_transpose():
    inits = [tensor("W", rand(4, 3, 3, 3))] + bn_stats(6)  # in 4, groups 2, out 3*2
    text = HEAD.format(opset=13) + f"""g (float[1,4,5,5] x) => (float[1,6,7,7] y)
<{", ".join(inits)}>
{{
  c = ConvTranspose<group=2>(x, W)
  y = BatchNormalization(c, s, b, mu, var)
}}"""
    assert_fused(text, P, "bn-into-conv", ["ConvTranspose"])


def test_bn_into_conv_refuses_runtime_statistics():
    assert_refused(conv_bn(extra=", float[4] m_in", mean="m_in"), P, "bn-into-conv", "not a constant")


def test_bn_into_conv_refuses_shared_conv_output():
    text = conv_bn(outputs="float[1,4,6,6] y, float[1,4,6,6] c")
    assert_refused(text, P, "bn-into-conv", "graph output")


def test_bn_into_conv_refuses_training_mode():
    text = conv_bn(opset=15).replace("BatchNormalization(", "BatchNormalization<training_mode=1>(")
    text = text.replace("y = BatchNormalization", "y, rm, rv = BatchNormalization")
    assert_refused(text, P, "bn-into-conv", "training mode")


@pytest.mark.parametrize("op,attrs,w_shape", [
    ("MatMul", "", (8, 5)),
    ("Gemm", "<alpha=0.5, beta=2.0>", (8, 5)),
    ("Gemm", "<transB=1>", (5, 8)),
])
def test_bn_into_gemm(op, attrs, w_shape):
    inits = [tensor("W", rand(*w_shape)), tensor("C", rand(5, seed=4))] + bn_stats(5)
    args = "x, W, C" if op == "Gemm" else "x, W"
    text = HEAD.format(opset=13) + f"""g (float[3,8] x) => (float[3,5] y)
<{", ".join(inits)}>
{{
  c = {op}{attrs}({args})
  y = BatchNormalization(c, s, b, mu, var)
}}"""
    assert_fused(text, P, "bn-into-gemm", ["Gemm"])


def test_bn_into_gemm_refuses_rank3_matmul():
    inits = [tensor("W", rand(8, 5))] + bn_stats(2)
    text = HEAD.format(opset=13) + f"""g (float[3,2,8] x) => (float[3,2,5] y)
<{", ".join(inits)}>
{{
  c = MatMul(x, W)
  y = BatchNormalization(c, s, b, mu, var)
}}"""
    assert_refused(text, P, "bn-into-gemm", "rank is not known to be 2")


def conv_then(op, c_array, opset=13):
    inits = [tensor("W", rand(4, 3, 3, 3)), tensor("B", rand(4, seed=9)), tensor("k", c_array)]
    return HEAD.format(opset=opset) + f"""g (float[1,3,8,8] x) => (float[1,4,6,6] y)
<{", ".join(inits)}>
{{
  c = Conv(x, W, B)
  y = {op}(k, c)
}}"""


@pytest.mark.parametrize("rule,op", [("mul-into-conv", "Mul"), ("add-into-conv", "Add")])
@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4, 1, 1), (1,)])
def test_affine_into_conv(rule, op, shape):
    assert_fused(conv_then(op, rand(*shape, seed=5)), P, rule, ["Conv"])


@pytest.mark.parametrize("rule,op", [("mul-into-conv", "Mul"), ("add-into-conv", "Add")])
def test_affine_into_conv_refuses_spatial_constant(rule, op):
    assert_refused(conv_then(op, rand(1, 1, 1, 6, seed=5)), P, rule, "not per-channel")


def test_mul_add_into_conv_transpose():
    inits = [tensor("W", rand(4, 3, 2, 2)), tensor("k", rand(1, 6, 1, 1, seed=2)), tensor("a", rand(6, 1, 1, seed=3))]
    text = HEAD.format(opset=13) + f"""g (float[1,4,5,5] x) => (float[1,6,6,6] y)
<{", ".join(inits)}>
{{
  c = ConvTranspose<group=2>(x, W)
  m = Mul(c, k)
  y = Add(m, a)
}}"""
    assert_fused(text, P, "add-into-conv", ["ConvTranspose"])


def bn_mul_add(scale_input=False):
    inits = bn_stats(4) + [tensor("k", rand(4, 1, 1, seed=7)), tensor("a", rand(4, 1, 1, seed=8))]
    if scale_input:
        inits = inits[1:]
    return HEAD.format(opset=9) + f"""g (float[1,4,5,5] x{", float[4] s" if scale_input else ""}) => (float[1,4,5,5] y)
<{", ".join(inits)}>
{{
  n = BatchNormalization(x, s, b, mu, var)
  m = Mul(n, k)
  y = Add(m, a)
}}"""


def test_mul_add_into_bn():
    out = assert_fused(bn_mul_add(), P, "add-into-bn", ["BatchNormalization"])
    assert len(out.graph.node) == 1


def test_mul_into_bn_refuses_runtime_scale():
    assert_refused(bn_mul_add(scale_input=True), P, "mul-into-bn", "not a constant")


def pad_then(consumer, pads, value=None, opset=13, mode="constant", src="x", pre="", out_shape="1,4,8,8",
             axes=None, weight=(4, 3, 3, 3)):
    inits = [tensor("W", rand(*weight)), tensor("p", np.array(pads, np.int64), "int64")]
    args = ["p", "v" if value is not None else ""]
    if value is not None:
        inits.append(tensor("v", np.array(value, np.float32)))
    if axes is not None:
        inits.append(tensor("ax", np.array(axes, np.int64), "int64"))
        args.append("ax")
    args = ", ".join(args).rstrip(", ")
    return HEAD.format(opset=opset) + f"""g (float[1,3,8,8] x) => (float[{out_shape}] y)
<{", ".join(inits)}>
{{
  {pre}
  q = Pad<mode="{mode}">({src}, {args})
  y = {consumer}
}}"""


def test_pad_into_conv():
    text = pad_then("Conv<pads=[0, 1, 0, 1]>(q, W)", [0, 0, 1, 0, 0, 0, 1, 0], value=0.0)
    out = assert_fused(text, P, "pad-into-conv", ["Conv"])
    assert list(out.graph.node[0].attribute[0].ints) == [1, 1, 1, 1]


def test_pad_into_conv_with_axes():
    assert_fused(pad_then("Conv(q, W)", [1, 1, 1, 1], opset=18, axes=[2, 3]), P, "pad-into-conv", ["Conv"])


@pytest.mark.parametrize("kwargs,reason", [
    ({"mode": "reflect"}, "mode"),
    ({"value": 1.0}, "value is not zero"),
    ({"pads": [0, 1, 1, 1, 0, 0, 1, 1], "weight": (4, 4, 3, 3)}, "batch or channel"),
])
def test_pad_into_conv_refuses(kwargs, reason):
    pads = kwargs.pop("pads", [0, 0, 1, 1, 0, 0, 1, 1])
    assert_refused(pad_then("Conv(q, W)", pads, **kwargs), P, "pad-into-conv", reason)


def test_pad_into_avgpool():
    text = pad_then('AveragePool<kernel_shape=[3, 3]>(q)', [0, 0, 1, 1, 0, 0, 1, 1], out_shape="1,3,8,8")
    out = assert_fused(text, P, "pad-into-avgpool", ["AveragePool"])
    attrs = {a.name: a for a in out.graph.node[0].attribute}
    assert attrs["count_include_pad"].i == 1


def test_pad_into_avgpool_refuses_excluded_own_padding():
    text = pad_then('AveragePool<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(q)', [0, 0, 1, 1, 0, 0, 1, 1],
                    out_shape="1,3,10,10")
    assert_refused(text, P, "pad-into-avgpool", "count_include_pad=0")


@pytest.mark.parametrize("pre,src,value", [("r = Relu(x)", "r", 0.0), ("", "x", float("-inf"))])
def test_pad_into_maxpool(pre, src, value):
    text = pad_then('MaxPool<kernel_shape=[3, 3]>(q)', [0, 0, 1, 1, 0, 0, 1, 1], value=value, pre=pre, src=src,
                    out_shape="1,3,8,8")
    assert_fused(text, P, "pad-into-maxpool", [*(["Relu"] if pre else []), "MaxPool"])


def test_pad_into_maxpool_refuses_signed_input():
    text = pad_then('MaxPool<kernel_shape=[3, 3]>(q)', [0, 0, 1, 1, 0, 0, 1, 1], out_shape="1,3,8,8")
    assert_refused(text, P, "pad-into-maxpool", "non-negative")


def test_densenet_block_at_O1():
    """Conv -> BN -> Mul -> Add -> Relu: the whole affine chain ends up in the Conv."""
    inits = [tensor("W", rand(4, 3, 3, 3))] + bn_stats(4) + [tensor("k", rand(4, 1, 1, seed=7)),
                                                            tensor("a", rand(4, 1, 1, seed=8))]
    text = HEAD.format(opset=9) + f"""g (float[1,3,8,8] x) => (float[1,4,6,6] y)
<{", ".join(inits)}>
{{
  c = Conv(x, W)
  n = BatchNormalization(c, s, b, mu, var)
  m = Mul(n, k)
  r = Add(m, a)
  y = Relu(r)
}}"""
    assert_fused(text, [], "add-into-conv", ["Conv", "Relu"], level=1)  # weight folding is O1
    _, out, _ = run(text, [], level=0)
    assert "BatchNormalization" in ops(out)  # O0 changes nothing


# ---------------------------------------------------------------- Conv/Gemm + activation (--target ort)

from fusion_check import assert_fused_target, assert_refused_target, run_target

A = ["fuse-activation"]


def conv_act(act_line, opset=13, inits_extra=(), outputs="float[1,4,6,6] y"):
    inits = [tensor("W", rand(4, 3, 3, 3)), tensor("B", rand(4, seed=9)), *inits_extra]
    return HEAD.format(opset=opset) + f"""g (float[1,3,8,8] x) => ({outputs})
<{", ".join(inits)}>
{{
  c = Conv(x, W, B)
  {act_line}
}}"""


@pytest.mark.parametrize("line,opset,inits", [
    ("y = Relu(c)", 13, ()),
    ("y = Tanh(c)", 13, ()),
    ("y = Sigmoid(c)", 13, ()),
    ("y = LeakyRelu<alpha=0.2>(c)", 13, ()),
    ("y = HardSigmoid<alpha=0.3, beta=0.4>(c)", 13, ()),
    ("y = HardSwish(c)", 14, ()),
    ("y = Clip(c, lo, hi)", 13, (tensor("lo", np.array(0.0, np.float32)), tensor("hi", np.array(6.0, np.float32)))),
    ("y = Clip(c, , hi)", 13, (tensor("hi", np.array(0.5, np.float32)),)),
    ("y = Clip<min=-0.5, max=0.5>(c)", 9, ()),
])
def test_conv_activation_ort(line, opset, inits):
    out = assert_fused_target(conv_act(line, opset, inits), A, "conv-activation", ["FusedConv"])
    assert out.graph.node[0].domain == "com.microsoft"


def test_conv_hardswish_spelled_with_hardsigmoid():
    text = conv_act("h = HardSigmoid<alpha=0.16666667, beta=0.5>(c)\n  y = Mul(h, c)")
    out = assert_fused_target(text, A, "conv-hardswish", ["FusedConv"])
    assert {a.name: a for a in out.graph.node[0].attribute}["activation"].s == b"HardSwish"


def test_conv_activation_off_for_target_onnx():
    """Standard ONNX has no fused conv+activation: the onnx target keeps Conv + Relu."""
    _, out, stats, _ = run_target(conv_act("y = Relu(c)"), A, "onnx")
    assert ops(out) == ["Conv", "Relu"] and not stats


@pytest.mark.parametrize("text,rule,reason", [
    (conv_act("y = Relu(c)", outputs="float[1,4,6,6] y, float[1,4,6,6] c"), "conv-activation", "graph output"),
    (conv_act("h = HardSigmoid<alpha=0.2, beta=0.5>(c)\n  y = Mul(c, h)"), "conv-hardswish", "not HardSwish"),
    (conv_act("h = HardSigmoid<alpha=0.16666667, beta=0.5>(c)\n  m = Mul(c, h)\n  y = Add(m, c)"),
     "conv-hardswish", "other consumers"),
])
def test_conv_activation_refuses(text, rule, reason):
    assert_refused_target(text, A, rule, reason)


def test_conv_activation_refuses_runtime_clip_bound():
    text = conv_act("y = Clip(c, lo)").replace("float[1,3,8,8] x)", "float[1,3,8,8] x, float lo)")
    assert_refused_target(text, A, "conv-activation", "not constant")


def gemm_act(line):
    inits = [tensor("W", rand(8, 5)), tensor("C", rand(5, seed=4))]
    return HEAD.format(opset=13) + f"""g (float[3,8] x) => (float[3,5] y)
<{", ".join(inits)}>
{{
  g = Gemm(x, W, C)
  {line}
}}"""


@pytest.mark.parametrize("line", ["y = Relu(g)", "y = LeakyRelu<alpha=0.1>(g)", "y = Tanh(g)",
                                  "y = HardSigmoid<alpha=0.25, beta=0.5>(g)"])
def test_gemm_activation_ort(line):
    assert_fused_target(gemm_act(line), A, "gemm-activation", ["FusedGemm"])


def gemm_act_with_bounds():
    inits = [tensor("W", rand(8, 5)), tensor("C", rand(5, seed=4)), tensor("lo", np.array(0.0, np.float32)),
             tensor("hi", np.array(6.0, np.float32))]
    return HEAD.format(opset=13) + f"""g (float[3,8] x) => (float[3,5] y)
<{", ".join(inits)}>
{{
  g = Gemm(x, W, C)
  y = Clip(g, lo, hi)
}}"""


def test_gemm_activation_refuses_clip():
    assert_refused_target(gemm_act_with_bounds(), A, "gemm-activation", "does not execute Clip")


def conv_add_relu(z_shape="1,4,6,6", bias=True, add="Add"):
    inits = [tensor("W", rand(4, 3, 3, 3))] + ([tensor("B", rand(4, seed=9))] if bias else [])
    return HEAD.format(opset=13) + f"""g (float[1,3,8,8] x, float[{z_shape}] z) => (float[1,4,6,6] y)
<{", ".join(inits)}>
{{
  c = Conv(x, W{", B" if bias else ""})
  s = {add}(z, c)
  y = Relu(s)
}}"""


@pytest.mark.parametrize("bias,add", [(True, "Add"), (False, "Add"), (True, "Sum")])
def test_conv_add_activation_ort(bias, add):
    out = assert_fused_target(conv_add_relu(bias=bias, add=add), A, "conv-add-activation", ["FusedConv"])
    assert len(out.graph.node[0].input) == 4


def test_conv_add_activation_refuses_broadcast():
    assert_refused_target(conv_add_relu(z_shape="1,4,1,1"), A, "conv-add-activation", "does not broadcast")


def silu(dtype="float"):
    return HEAD.format(opset=13) + f"""g ({dtype}[2,5,7] x) => ({dtype}[2,5,7] y)
{{
  s = Sigmoid(x)
  y = Mul(s, x)
}}"""


def test_silu_to_quickgelu_ort():
    out = assert_fused_target(silu(), A, "silu", ["QuickGelu"])
    assert out.graph.node[0].domain == "com.microsoft"


def test_silu_stays_for_target_onnx():
    _, out, stats, _ = run_target(silu(), A, "onnx")
    assert ops(out) == ["Sigmoid", "Mul"] and not stats


def test_silu_refuses_double():
    assert_refused_target(silu("double"), A, "silu", "not float32")
