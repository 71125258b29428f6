"""graphopt.Session: the onnxruntime.InferenceSession surface, feed checking, build-time errors, and
outputs on handmade models compared with ONNX Runtime (the oracle; never graphopt itself)."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InvalidModel, Unsupported, UsageError
from graphopt.errors import KernelFailed
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

RNG = np.random.default_rng(0)


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def ort_run(model, feed, names=None):
    return ort_session(model).run(names, feed)  # optimizations off: the unoptimized model


def assert_matches_ort(model, feed, rtol=1e-4, atol=1e-5):
    got = Session(model).run(None, feed)
    want = ort_run(model, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


SMALL = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x, int64[2] s) => (float[N, 3] y, float[3, N] t) {
    y = Relu(x)
    t = Transpose(y)
}""")


# --- API surface ---------------------------------------------------------------------------------
def test_inputs_and_outputs_look_like_ort():
    sess, ref = Session(SMALL), ort.InferenceSession(SMALL.SerializeToString(), providers=["CPUExecutionProvider"])
    for mine, theirs in [(sess.get_inputs(), ref.get_inputs()), (sess.get_outputs(), ref.get_outputs())]:
        assert [(a.name, a.shape, a.type) for a in mine] == [(a.name, a.shape, a.type) for a in theirs]


def test_run_selects_outputs_by_name():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    s = np.zeros(2, np.int64)
    (t,) = Session(SMALL).run(["t"], {"x": x, "s": s})
    np.testing.assert_array_equal(t, np.maximum(x, 0).T)


def test_unknown_output_name():
    with pytest.raises(UsageError, match="nope"):
        Session(SMALL).run(["nope"], {"x": np.zeros((1, 3), np.float32), "s": np.zeros(2, np.int64)})


@pytest.mark.parametrize("feed, words", [
    ({"x": np.zeros((1, 3), np.float32)}, ["missing", "'s'"]),
    ({"x": np.zeros((1, 3), np.float32), "s": np.zeros(2, np.int64), "z": np.zeros(1)}, ["unknown", "'z'"]),
    ({"x": np.zeros((1, 3), np.float64), "s": np.zeros(2, np.int64)}, ["'x'", "tensor(float)", "tensor(double)"]),
    ({"x": np.zeros((3,), np.float32), "s": np.zeros(2, np.int64)}, ["'x'", "rank 2", "rank 1"]),
    ({"x": np.zeros((2, 4), np.float32), "s": np.zeros(2, np.int64)}, ["'x'", "dimension 1 must be 3"]),
    ({"x": np.zeros((2, 3), np.float32), "s": np.zeros(3, np.int64)}, ["'s'", "[2]", "[3]"]),
])
def test_bad_feeds_raise_usage_error_naming_the_input(feed, words):
    with pytest.raises(UsageError) as info:
        Session(SMALL).run(None, feed)
    for w in words:
        assert w in str(info.value)


def test_symbolic_dims_accept_any_size():
    sess = Session(SMALL)
    for n in (1, 5, 2):
        x = RNG.standard_normal((n, 3)).astype(np.float32)
        y, t = sess.run(None, {"x": x, "s": np.zeros(2, np.int64)})
        want = ort_run(SMALL, {"x": x, "s": np.zeros(2, np.int64)})
        np.testing.assert_array_equal(y, want[0])
        np.testing.assert_array_equal(t, want[1])


def test_unsupported_ops_are_all_listed_at_build():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17, "my.domain" : 1]>
    g (float[2] x) => (float[2] y) {
        a = my.domain.Frobnicate(x)
        b = my.domain.Twiddle(a)
        y = Relu(b)
    }""")
    with pytest.raises(Unsupported) as info:
        Session(model)
    assert "my.domain::Frobnicate (opset 1)" in str(info.value)
    assert "my.domain::Twiddle (opset 1)" in str(info.value)


def test_undefined_value_is_invalid_model():
    graph = helper.make_graph([helper.make_node("Relu", ["ghost"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(InvalidModel, match="ghost"):
        Session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_missing_file_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        Session(tmp_path / "nope.onnx")


def test_load_from_path_with_external_data(tmp_path):
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((1, 64)).astype(np.float32)
    want = ort_run(model, {"x": x})[0]
    sub = tmp_path / "m"
    sub.mkdir()
    onnx.save(model, sub / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (sub / "weights.bin").exists()
    (y,) = Session(str(sub / "model.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_intermediates_are_freed_but_outputs_kept():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] a, float[4] c) {
        a = Relu(x)
        b = Neg(a)
        c = Exp(b)
    }""")
    sess = Session(model)
    frees = {sess._plan.steps[i][5].split()[-1]: sess._plan.steps[i][4] for i in range(3)}
    b_slot = sess._plan.slots["b"]
    assert b_slot in frees["(Exp)"]          # b dies at its last use
    assert sess._plan.slots["a"] not in sum(frees.values(), [])  # a is a graph output
    x = RNG.standard_normal(4).astype(np.float32)
    assert_matches_ort(model, {"x": x})


# --- numerics against ONNX Runtime ------------------------------------------------------------------
def _conv_net(seed=None):
    """A small CNN with random weights: from the module's generator, or from `seed` alone (the
    weights then do not depend on which tests ran before)."""
    rng = RNG if seed is None else np.random.default_rng(seed)
    c_in, c_mid = 3, 8
    inits = [
        numpy_helper.from_array(rng.standard_normal((c_mid, c_in, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(c_mid).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((c_mid, 1, 3, 3)).astype(np.float32), "wd"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c_mid).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(c_mid).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(c_mid).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c_mid).astype(np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal((4, c_mid)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((c_mid, 10)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd"], ["dw"], group=c_mid, pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("MaxPool", ["dw"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("ConvTranspose", ["mp", "w2t"], ["up"], strides=[2, 2], output_padding=[1, 1]),
        helper.make_node("AveragePool", ["up"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("Gemm", ["fl", "fc2"], ["logits"], transB=1, alpha=0.5),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    inits.append(numpy_helper.from_array(rng.standard_normal((c_mid, 4, 3, 3)).astype(np.float32), "w2t"))
    inits.append(numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc2"))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 17, 19])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_cnn_matches_ort():
    model = _conv_net()
    for n in (1, 3):  # a symbolic batch: the same plan serves both
        assert_matches_ort(model, {"x": RNG.standard_normal((n, 3, 17, 19)).astype(np.float32)})


def test_attention_block_matches_ort():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[B, S, 16] x, float[16, 48] wqkv, float[16] gamma, float[16] beta) => (float[B, S, 16] y) {
        ln = LayerNormalization <axis = -1, epsilon = 1e-5> (x, gamma, beta)
        qkv = MatMul(ln, wqkv)
        q, k, v = Split <axis = -1, num_outputs = 3> (qkv)
        kt = Transpose <perm = [0, 2, 1]> (k)
        s = MatMul(q, kt)
        scale = Constant <value = float {0.25}> ()
        ss = Mul(s, scale)
        p = Softmax <axis = -1> (ss)
        o = MatMul(p, v)
        h = Div(o, scale)
        half = Constant <value = float {0.5}> ()
        r2 = Constant <value = float {0.70710677}> ()
        hs = Mul(h, r2)
        e = Erf(hs)
        one = Constant <value = float {1.0}> ()
        e1 = Add(e, one)
        g1 = Mul(h, e1)
        y = Mul(g1, half)
    }""")
    feed = {"x": RNG.standard_normal((2, 5, 16)).astype(np.float32),
            "wqkv": RNG.standard_normal((16, 48)).astype(np.float32) * 0.2,
            "gamma": RNG.standard_normal(16).astype(np.float32), "beta": RNG.standard_normal(16).astype(np.float32)}
    assert_matches_ort(model, feed)


def test_shape_ops_match_ort():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 3, 4] x, int64[3] idx) => (float[?] y, int64[?] sh, float[?, ?] z, float[?, ?, ?] p) {
        sh = Shape(x)
        r = Reshape(x, sh)
        g = Gather <axis = 2> (r, idx)
        starts = Constant <value = int64[2] {0, 1}> ()
        ends = Constant <value = int64[2] {2, 100}> ()
        axes = Constant <value = int64[2] {0, 2}> ()
        sl = Slice(g, starts, ends, axes)
        y = Flatten <axis = 0> (sl)
        cat = Concat <axis = 1> (x, x)
        t = Transpose <perm = [2, 0, 1]> (cat)
        rs = ReduceSum <keepdims = 0> (t, axes)
        z = Expand(rs, sh2)
        sh2 = Constant <value = int64[2] {3, 2}> ()
        pads = Constant <value = int64[6] {0, 1, 0, 0, 2, 1}> ()
        cv = Constant <value = float {1.5}> ()
        p = Pad <mode = "reflect"> (x, pads)
    }""".replace("z = Expand(rs, sh2)\n        sh2 = Constant <value = int64[2] {3, 2}> ()",
                 "sh2 = Constant <value = int64[2] {3, 2}> ()\n        z = Expand(rs, sh2)"))
    feed = {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32), "idx": np.array([3, -1, 0], np.int64)}
    assert_matches_ort(model, feed)


def test_control_flow_and_local_function_match_ort():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[3] x, bool c, int64 n) => (float[3] y, float[?, 3] scan) {
        z = local.Scaled <alpha = 2.0> (x)
        y, scan = Loop(n, c, z) <body = loop_body (int64 i, bool cin, float[3] acc) => (bool cout, float[3] next, float[3] out) {
            cout = Identity(cin)
            big = ReduceSum(acc)
            zero = Constant <value = float {0.0}> ()
            pos = Greater(big, zero)
            next = If(pos) <then_branch = t () => (float[3] r) { r = Sub(acc, x) },
                            else_branch = e () => (float[3] r) { r = Add(acc, z) }>
            out = Identity(next)
        }>
    }
    <domain: "local", opset_import: ["" : 17]>
    Scaled <alpha> (a) => (b) {
        s = Constant <value_float: float = @alpha> ()
        b = Mul(a, s)
    }""")
    feed = {"x": np.array([1.0, -2.0, 0.5], np.float32), "c": np.array(True), "n": np.array(5, np.int64)}
    assert_matches_ort(model, feed)


def test_quantize_roundtrip_matches_ort():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 19]>
    g (float[2, 8] x) => (uint8[2, 8] q, float[2, 8] d, int8[2, 8] q2) {
        s = Constant <value = float {0.05}> ()
        zp = Constant <value = uint8 {128}> ()
        q = QuantizeLinear(x, s, zp)
        d = DequantizeLinear(q, s, zp)
        zp2 = Constant <value = int8 {-3}> ()
        q2 = QuantizeLinear(x, s, zp2)
    }""")
    # halves (0.025 = 0.5 * scale) exercise round-half-to-even; large values exercise saturation
    x = np.array([[0.025, 0.075, -0.025, -0.075, 100.0, -100.0, 1.23, 0.0],
                  [0.125, -0.125, 6.4, -6.4, 3.3, 2.2, -1.1, 0.05]], np.float32)
    assert_matches_ort(model, {"x": x}, rtol=0, atol=1e-6)


def test_resize_and_reductions_match_ort():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[1, 2, 5, 6] x) => (float[1, 2, 9, 11] a, float[1, 2, 3, 4] b, float[?, ?] m, int64[?, ?, ?] am) {
        sizes = Constant <value = int64[4] {1, 2, 9, 11}> ()
        a = Resize <mode = "linear", coordinate_transformation_mode = "half_pixel"> (x, , , sizes)
        sizes2 = Constant <value = int64[4] {1, 2, 3, 4}> ()
        b = Resize <mode = "cubic", coordinate_transformation_mode = "pytorch_half_pixel"> (x, , , sizes2)
        axes = Constant <value = int64[2] {0, 3}> ()
        m = ReduceMax <keepdims = 0> (x, axes)
        am = ArgMin <axis = 2, keepdims = 0> (x)
    }""")
    assert_matches_ort(model, {"x": RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)})


def test_lstm_matches_ort():
    hidden, inp = 4, 3
    w = RNG.standard_normal((1, 4 * hidden, inp)).astype(np.float32)
    r = RNG.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)
    b = RNG.standard_normal((1, 8 * hidden)).astype(np.float32)
    node = helper.make_node("LSTM", ["x", "w", "r", "b"], ["y", "yh", "yc"], hidden_size=hidden)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, inp])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "yh", "yc")],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r"),
                               numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    assert_matches_ort(model, {"x": RNG.standard_normal((5, 2, inp)).astype(np.float32)})


# --- graphopt run | bench | verify ----------------------------------------------------------------
def _cli(argv):
    from graphopt.cli.runtime import add_runtime_commands
    import argparse
    ap = argparse.ArgumentParser()
    add_runtime_commands(ap.add_subparsers(dest="command"))
    args = ap.parse_args(argv)
    return args.handler(args)


def test_cli_run_random_and_from_files(tmp_path, capsys):
    path = tmp_path / "small.onnx"
    onnx.save(SMALL, path)
    assert _cli(["run", str(path), "--random", "--dim", "N=4", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "y: shape [4, 3] float32" in out and "t: shape [3, 4] float32" in out
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "s.npy", np.zeros(2, np.int64))
    assert _cli(["run", str(path), "--input", f"x={tmp_path / 'x.npy'}", "--input", f"s={tmp_path / 's.npy'}",
                 "--output-dir", str(tmp_path / "out2")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out2" / "t.npy"), ort_run(SMALL, {"x": x, "s": np.zeros(2, np.int64)})[1])
    assert _cli(["run", str(path)]) == 0  # inputs not given are random data (the note on stderr says so)
    assert "y: shape [1, 3] float32" in capsys.readouterr().out


def test_cli_run_failure_on_random_inputs_says_how_to_give_real_ones(tmp_path, capsys):
    """A model that needs a real size (here: a width divisible by 5) can fail on made-up inputs; the
    error says the inputs were random with the noted dims, and how to set them."""
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([-1, 5], np.int64), "shape")])
    path = tmp_path / "fives.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(KernelFailed, match=r"on random inputs with the dims noted above.*--dim NAME=V"):
        _cli(["run", str(path)])
    assert "width=64 (no better guess)" in capsys.readouterr().err
    with pytest.raises(KernelFailed, match=r"on random inputs"):  # the width is still a guess
        _cli(["bench", str(path), "--dim", "batch=3", "--runs", "1"])
    assert _cli(["run", str(path), "--dim", "width=10"]) == 0


def test_cli_bench_and_verify(tmp_path, capsys):
    path = tmp_path / "cnn.onnx"
    onnx.save(_conv_net(seed=1), path)
    assert _cli(["bench", str(path), "--runs", "2", "--warmup", "1", "--compare", "ort", "--threads", "1",
                 "--profile"]) == 0
    out = capsys.readouterr().out
    assert "graphopt: median" in out and "onnxruntime: median" in out and "ratio" in out
    assert "peak activation memory" in out and "Conv" in out  # --profile: time per op type
    assert _cli(["verify", str(path), "--runs", "1"]) == 0
    assert "PASS" in capsys.readouterr().out
    other = _conv_net(seed=2)  # same structure, other weights: must FAIL with exit status 1
    onnx.save(other, tmp_path / "other.onnx")
    assert _cli(["verify", str(path), str(tmp_path / "other.onnx"), "--runs", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_verify_runs_a_graphopt_target_output_in_the_graphopt_runtime(tmp_path, capsys):
    """ORT cannot load ai.graphopt ops: verify must run such a model in graphopt's runtime, against ORT
    on the original."""
    import graphopt
    src = Path(__file__).resolve().parents[2] / "models" / "transformer_block" / "model.onnx"
    fused = graphopt.compile(src, level=2, target="graphopt")
    assert any(n.domain == "ai.graphopt" for n in fused.graph.node)
    onnx.save(fused, tmp_path / "fused.onnx")
    assert _cli(["verify", str(src), str(tmp_path / "fused.onnx"), "--runs", "2", "--dim", "batch=2",
                 "--dim", "seq=5"]) == 0
    out = capsys.readouterr().out
    assert "graphopt runtime" in out and out.strip().endswith("PASS")


# --- single ops with awkward attributes, against ONNX Runtime ---------------------------------------
OP_CASES = {
    # name: (onnx text body, {input: shape}, opset)
    "conv_same_lower_stride": ("y = Conv <auto_pad = \"SAME_LOWER\", strides = [2, 3]> (x, w)",
                               {"x": (2, 4, 9, 10), "w": (6, 4, 3, 2)}, 17),
    "conv_group_dilation": ("y = Conv <group = 2, dilations = [2, 1], pads = [2, 0, 1, 1]> (x, w, b)",
                            {"x": (1, 4, 8, 7), "w": (6, 2, 3, 3), "b": (6,)}, 17),
    "conv1d": ("y = Conv <pads = [1, 2]> (x, w)", {"x": (2, 3, 11), "w": (5, 3, 4)}, 17),
    "conv3d": ("y = Conv <strides = [1, 2, 1]> (x, w)", {"x": (1, 2, 5, 6, 4), "w": (3, 2, 2, 3, 2)}, 17),
    "convtranspose_group": ("y = ConvTranspose <group = 2, strides = [2, 2], pads = [1, 0, 0, 1], "
                            "output_padding = [1, 1]> (x, w, b)", {"x": (1, 4, 5, 4), "w": (4, 3, 3, 3), "b": (6,)}, 17),
    "maxpool_ceil_dilated": ("y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1, dilations = [1, 2]> (x)",
                             {"x": (1, 3, 10, 11)}, 12),
    "maxpool_indices": ("y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2], pads = [1, 1, 1, 1]> (x)",
                        {"x": (2, 3, 6, 7)}, 12),
    "avgpool_ceil_include_pad": ("y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], "
                                 "ceil_mode = 1, count_include_pad = 1> (x)", {"x": (1, 2, 8, 9)}, 19),
    "avgpool_exclude_pad": ("y = AveragePool <kernel_shape = [3, 2], pads = [1, 0, 1, 1]> (x)", {"x": (1, 2, 5, 6)}, 19),
    "softmax_v11_coerced": ("y = Softmax <axis = 1> (x)", {"x": (2, 3, 4)}, 11),
    "logsoftmax_axis0": ("y = LogSoftmax <axis = 0> (x)", {"x": (3, 4)}, 13),
    "instance_norm": ("y = InstanceNormalization <epsilon = 0.01> (x, s, b)", {"x": (2, 3, 4, 5), "s": (3,), "b": (3,)}, 17),
    "group_norm": ("y = GroupNormalization <num_groups = 2> (x, s, b)", {"x": (2, 4, 3, 3), "s": (4,), "b": (4,)}, 21),
    "lrn": ("y = LRN <size = 3, alpha = 0.001, beta = 0.75, bias = 1.0> (x)", {"x": (1, 5, 3, 3)}, 13),
    "gemm_broadcast_c": ("y = Gemm <transA = 1, alpha = 2.0, beta = 0.5> (a, b, c)", {"a": (4, 3), "b": (4, 5), "c": (5,)}, 13),
    "einsum_attention": ("y = Einsum <equation = \"bhqd,bhkd->bhqk\"> (a, b)", {"a": (2, 3, 4, 5), "b": (2, 3, 6, 5)}, 12),
    "gru_bidirectional": ("y, h = GRU <hidden_size = 3, direction = \"bidirectional\", linear_before_reset = 1> (x, w, r, b)",
                          {"x": (4, 2, 5), "w": (2, 9, 5), "r": (2, 9, 3), "b": (2, 18)}, 14),
    "reduce_l2_noop": ("y = ReduceL2 <keepdims = 1> (x)", {"x": (2, 3, 4)}, 18),
    "cumsum_exclusive_reverse": ("ax = Constant <value = int64 {1}> ()\n y = CumSum <exclusive = 1, reverse = 1> (x, ax)",
                                 {"x": (3, 5)}, 14),
    "lp_pool": ("y = LpPool <kernel_shape = [2, 2], p = 3> (x)", {"x": (1, 2, 4, 5)}, 18),
    "depth_to_space_crd": ("y = DepthToSpace <blocksize = 2, mode = \"CRD\"> (x)", {"x": (1, 8, 2, 3)}, 13),
    "resize_nearest_floor_asym": ("sc = Constant <value = float[4] {1.0, 1.0, 2.5, 1.5}> ()\n"
                                  " y = Resize <mode = \"nearest\", nearest_mode = \"floor\", "
                                  "coordinate_transformation_mode = \"asymmetric\"> (x, , sc)", {"x": (1, 2, 3, 4)}, 13),
    "resize_cubic_align": ("sz = Constant <value = int64[4] {1, 2, 7, 3}> ()\n"
                           " y = Resize <mode = \"cubic\", coordinate_transformation_mode = \"align_corners\"> (x, , , sz)",
                           {"x": (1, 2, 4, 5)}, 13),
    "pad_edge": ("p = Constant <value = int64[8] {0, 0, 2, 1, 0, 1, 0, 3}> ()\n y = Pad <mode = \"edge\"> (x, p)",
                 {"x": (1, 2, 3, 4)}, 13),
    "pad_negative": ("p = Constant <value = int64[4] {-1, 2, 1, -2}> ()\n y = Pad (x, p)", {"x": (4, 5)}, 13),
    "slice_negative_step": ("s = Constant <value = int64[2] {-1, 4}> ()\n e = Constant <value = int64[2] {-1000, 0}> ()\n"
                            " a = Constant <value = int64[2] {0, 1}> ()\n st = Constant <value = int64[2] {-1, -2}> ()\n"
                            " y = Slice (x, s, e, a, st)", {"x": (5, 6)}, 13),
    "topk_smallest": ("k = Constant <value = int64[1] {3}> ()\n y, i = TopK <axis = 1, largest = 0> (x, k)", {"x": (3, 6)}, 11),
    "hardmax": ("y = Hardmax <axis = -1> (x)", {"x": (2, 3, 5)}, 13),
    "prelu_broadcast": ("y = PRelu (x, s)", {"x": (2, 3, 4), "s": (3, 1)}, 16),
}


def _op_model(body, shapes, opset):
    ins = ", ".join(f"float[{','.join(map(str, s))}] {n}" for n, s in shapes.items())
    outs = [t.strip() for t in body.splitlines()[-1].split("=")[0].split(",")]
    header = f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
    text = header + f"g ({ins}) => ({', '.join(outs)}) {{\n {body}\n}}"
    model = onnx.parser.parse_model(text)
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_single_op_matches_ort(name):
    body, shapes, opset = OP_CASES[name]
    model = _op_model(body, shapes, opset)
    feed = {n: RNG.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    got = Session(model).run(None, feed)
    want = ort_run(model, feed)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("trips", [0, 3])
def test_loop_scan_outputs_match_ort_even_with_zero_iterations(trips):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64 n, float[3] x) => (float[3] y, float[?, 2, 3] s) {
        c = Constant <value = bool {1}> ()
        y, s = Loop(n, c, x) <body = b (int64 i, bool ci, float[3] a) => (bool co, float[3] an, float[2, 3] so) {
            co = Identity(ci)
            an = Add(a, a)
            zero = Constant <value = int64[1] {0}> ()
            u = Unsqueeze(a, zero)
            so = Concat <axis = 0> (u, u)
        }>
    }""")
    assert_matches_ort(model, {"n": np.array(trips, np.int64), "x": np.ones(3, np.float32)})
