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


def test_densenet_block_at_O2():
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
    assert_fused(text, [], "add-into-conv", ["Conv", "Relu"], level=2)
    _, out, _ = run(text, [], level=1)
    assert "BatchNormalization" in ops(out)  # O1 leaves it: fusion is O2
