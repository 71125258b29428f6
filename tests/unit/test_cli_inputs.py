"""Inputs for run / verify / bench / compile: files, feeds, dims, and random data shaped after the model
(graphopt/ir/sample_inputs.py, graphopt/cli/feeds.py), and compile's default verification.

The models carry the traits that broke random inputs: a token-type embedding of 2 rows, a detector
whose symbolic image dims cannot be 1, unnamed dims. Expected outputs come from ONNX Runtime."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli.main import main
from graphopt.ir.sample_inputs import plan_inputs
from graphopt.verify import random_feed

RNG = np.random.default_rng(0)


def _weights(seed, *shapes):
    """Seeded: a builder called twice gives the same model."""
    r = np.random.default_rng(seed)
    return [r.standard_normal(shape).astype(np.float32) for shape in shapes]


def _model(nodes, inputs, outputs, inits, opset=17, metadata=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def token_type_model():
    """BERT-style embeddings: word (50 rows) + token-type (2 rows) tables, a mask multiplied in."""
    ints = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])  # noqa: E731
    nodes = [helper.make_node("Gather", ["word", "input_ids"], ["w"]),
             helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
             helper.make_node("Add", ["w", "t"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "last"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])]
    return _model(nodes, [ints("input_ids"), ints("token_type_ids"), ints("attention_mask")],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                  {**dict(zip(("word", "types"), _weights(1, (50, 8), (2, 8)))), "last": np.array([-1], np.int64)})


def detector_model(metadata=None):
    """Two stride-2 convs, a x2 Resize and a Concat with the first conv: at 1x1 the maps no longer match."""
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c2", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["c1", "up"], ["y"], axis=1)]
    return _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                  {**dict(zip(("w1", "w2"), _weights(2, (4, 3, 3, 3), (4, 4, 3, 3)))),
                   "scales": np.array([1, 1, 2, 2], np.float32)}, metadata=metadata)


def unnamed_dims_model():
    """x: [?, ?] with neither a value nor a name (as some exporters write); its last dim must be 16."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                  {"w": _weights(3, (16, 8))[0]})


@pytest.fixture
def saved(tmp_path):
    def save(model, name="model.onnx"):
        onnx.save(model, tmp_path / name)
        return tmp_path / name
    return save


def test_old_random_data_breaks_these_models():
    """The friction the issue reports, reproduced with the old feed (ints in [0, 3), dims 1) in ORT."""
    sess = ort.InferenceSession(token_type_model().SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="idx=2 must be within the inclusive range"):
        sess.run(None, random_feed(token_type_model(), seed=0, dims={"batch": 1, "seq": 64}))
    sess = ort.InferenceSession(detector_model().SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):
        sess.run(None, random_feed(detector_model(), seed=0, default_dim=1))


def test_plan_follows_the_model():
    plan = plan_inputs(token_type_model())
    specs = {s.name: s for s in plan.specs}
    assert specs["input_ids"].high == 50 and specs["token_type_ids"].high == 2
    assert specs["attention_mask"].fill == "ones" and specs["input_ids"].shape == [1, 128]
    assert "batch=1" in plan.note() and "seq=128" in plan.note() and "'types', 2 rows" in plan.note()
    assert plan_inputs(detector_model()).specs[0].shape == [1, 3, 224, 224]  # 224: a multiple of stride 4
    assert plan_inputs(detector_model({"imgsz": "[64, 96]"})).specs[0].shape == [1, 3, 64, 96]
    assert plan_inputs(unnamed_dims_model()).specs[0].shape == [1, 16]  # K of the MatMul weight
    nhwc = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "h", "w", 3])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert plan_inputs(helper.make_model(nhwc)).specs[0].shape == [1, 224, 224, 3]
    assert plan_inputs(unnamed_dims_model(), shapes={"x": [3, 16]}).specs[0].shape == [3, 16]


@pytest.mark.parametrize("build", [token_type_model, detector_model, unnamed_dims_model])
def test_run_verify_bench_compile_work_with_no_flags(build, saved, capsys):
    path = saved(build())
    assert main(["run", str(path)]) == 0
    assert main(["verify", str(path), "--runs", "1"]) == 0
    assert main(["bench", str(path), "--runs", "1", "--warmup", "0"]) == 0
    assert main(["compile", str(path), "-o", str(path.with_suffix(".opt.onnx")), "--verify-each"]) == 0
    out, err = capsys.readouterr()
    assert "verified: max abs err" in out and "on 2 inputs" in out
    assert "random inputs:" in err


def test_input_files_dims_and_shapes(saved, tmp_path, capsys):
    path = saved(token_type_model())
    feed = {"input_ids": np.array([[3, 7, 49]], np.int64), "token_type_ids": np.array([[0, 1, 1]], np.int64),
            "attention_mask": np.array([[1, 1, 0]], np.int64)}
    for name, value in feed.items():
        np.save(tmp_path / f"{name}.npy", value)
    files = [a for name in feed for a in ("--input", f"{name}={tmp_path / name}.npy")]
    assert main(["run", str(path), *files, "--output-dir", str(tmp_path)]) == 0
    want = ort.InferenceSession(token_type_model().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want[0], rtol=1e-6)
    assert main(["run", str(path), files[0], files[1]]) == 0  # the random inputs follow the file's dims
    assert "y: shape [1, 3, 8]" in capsys.readouterr().out
    assert main(["run", str(path), "--dim", "seq=5", "--dim", "batch=2"]) == 0
    assert "y: shape [2, 5, 8]" in capsys.readouterr().out
    assert main(["run", str(saved(unnamed_dims_model(), "u.onnx")), "--input-shape", "x=4,16"]) == 0
    assert "y: shape [4, 8]" in capsys.readouterr().out


def test_inputs_npz_feeds_every_command(saved, tmp_path, capsys):
    path = saved(token_type_model())
    n, seq = 3, 4
    np.savez(tmp_path / "feeds.npz", input_ids=RNG.integers(0, 50, (n, 1, seq)), token_type_ids=np.ones((n, 1, seq), np.int64),
             attention_mask=np.ones((n, 1, seq), np.int64))
    assert main(["verify", str(path), "--inputs", str(tmp_path / "feeds.npz")]) == 0
    assert main(["compile", str(path), "-o", str(tmp_path / "o.onnx"), "--inputs", str(tmp_path / "feeds.npz")]) == 0
    out, err = capsys.readouterr()
    assert "on 3 inputs" in out and "random inputs" not in err


@pytest.mark.parametrize("argv, code, message", [
    (["run", "{m}", "--input", "wrong={d}/x.npy"], 2, "--input wrong: the model has no input 'wrong'"),
    (["verify", "{m}", "--dim", "nosuch=3"], 2, "--dim nosuch: the model has no symbolic dim 'nosuch'"),
    (["bench", "{m}", "--input-shape", "input_ids=1,2,3"], 2, "--input-shape input_ids: 3 dims given"),
    (["run", "{m}", "--input", "input_ids={d}/missing.npy"], 2, "file not found"),
    (["run", "{m}", "--input", "input_ids={d}/bad.npy"], 1, "bad.npy' is not a readable .npy file"),
    (["run", "{m}", "--input", "input_ids={d}/f64.npy"], 2, "--input input_ids: the file holds float64, the model expects int64"),
    (["run", "{m}", "--input", "input_ids={d}/rank3.npy"], 2, "the array has shape [1, 2, 3], the model expects ['?', '?']"),
    (["compile", "{m}", "--inputs", "{d}/bad.npz"], 1, "bad.npz"),
    (["compile", "{m}", "--int8", "static", "--calib", "{d}/cal"], 1, "cal/bad.npz: not a readable .npz file"),
    (["run", "{d}/absent.onnx"], 1, "model file not found"),
    (["compile", "{d}/absent.onnx"], 1, "absent.onnx"),
])
def test_input_mistakes_are_one_line(argv, code, message, saved, tmp_path, capsys):
    path = saved(token_type_model())
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "f64.npy", np.zeros((1, 4)))
    np.save(tmp_path / "rank3.npy", np.zeros((1, 2, 3), np.int64))
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    assert main([a.format(m=path, d=tmp_path) for a in argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphopt: error: ") and message in err[0], err
    assert not (tmp_path / "model.opt.onnx").exists()


PLUGIN = '''
from graphopt import PassResult, register_pass

@register_pass("test-add-to-sub", level=3)
def break_adds(graph, ctx):
    """Deliberately wrong: Add -> Sub."""
    hit = 0
    for node in graph.nodes:
        if node.op == "Add":
            node.op, hit = "Sub", hit + 1
    return PassResult(hit > 0, {})
'''


def test_compile_mismatch_fails_and_writes_nothing(saved, tmp_path):
    """In a child process: the plugin's broken pass must not stay registered in the test process."""
    path = saved(token_type_model())
    (tmp_path / "plugin.py").write_text(PLUGIN)
    out = tmp_path / "out.onnx"
    base = [sys.executable, "-m", "graphopt.cli", "compile", str(path), "-o", str(out), "--plugin",
            str(tmp_path / "plugin.py"), "--passes", "test-add-to-sub"]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "output 'y' changed: max abs err" in proc.stderr, proc.stderr
    assert not out.exists()
    proc = subprocess.run(base + ["--no-verify"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "not verified: --no-verify" in proc.stdout and out.exists()


def test_lossy_compile_is_not_failed_by_verification(saved, tmp_path, capsys):
    path = saved(detector_model())
    assert main(["compile", str(path), "-o", str(tmp_path / "h.onnx"), "--fp16"]) == 0
    assert "not verified: lossy output" in capsys.readouterr().out
    assert (tmp_path / "h.onnx").exists()


def test_graphopt_target_output_is_verified_in_graphopt_runtime(tmp_path, capsys):
    from pathlib import Path
    src = Path(__file__).resolve().parents[2] / "models" / "bert_encoder" / "model.onnx"
    assert main(["compile", str(src), "-o", str(tmp_path / "g.onnx"), "--target", "graphopt"]) == 0
    out = capsys.readouterr().out
    assert "verified: max abs err" in out and "graphopt runtime)" in out
