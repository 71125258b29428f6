"""Small CLI behaviours a new user trips on: version, --debug placement, closed pipes, exit codes,
--report -, --trace by pass name, inspect's parameter count, the Session signature."""
import inspect
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli.main import main

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"graphopt {graphopt.__version__}"
    assert graphopt.__version__ == metadata.version("graphopt")


def test_debug_is_accepted_after_the_subcommand(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "absent.onnx"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compile", "inspect", "run", "bench", "verify"])
def test_missing_model_exits_1_everywhere(command, tmp_path, capsys):
    assert main([command, str(tmp_path / "absent.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.onnx" in err[0] and "internal error" not in err[0]


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status: 0 ok; 1 a problem with the model or data" in out and "2 a usage error" in out


def test_closed_pipe_exits_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "graphopt.cli", "inspect", str(MODELS / "bert_encoder" / "model.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before graphopt writes (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_report_dash_writes_json_to_stdout(tmp_path, capsys):
    assert main(["compile", str(MODELS / "convnet" / "model.onnx"), "-o", str(tmp_path / "o.onnx"), "-q",
                 "--report", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["after"]["nodes"] < report["before"]["nodes"]
    assert not (Path.cwd() / "-").exists()


def test_trace_takes_pass_names_and_refuses_unknown_names(tmp_path, capsys):
    src, out = str(MODELS / "bert_encoder" / "model.onnx"), str(tmp_path / "o.onnx")
    assert main(["compile", src, "-o", out, "--trace", "fuse-attention"]) == 0
    assert "trace: attention: best near-miss" in capsys.readouterr().out  # opset 17: Attention needs 23
    assert main(["compile", src, "-o", out, "--trace", "fuse-atention"]) == 2
    assert "'fuse-atention' is neither a rule nor a pass" in capsys.readouterr().err
    assert main(["passes", "--rules"]) == 0
    assert "rules: attention" in capsys.readouterr().out


def test_inspect_counts_weights_in_constant_nodes(tmp_path, capsys):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    assert "initializers: 1   parameters: 20 " in capsys.readouterr().out  # 16 in the Constant + 4


def test_session_has_a_real_signature():
    params = inspect.signature(graphopt.Session).parameters
    assert list(params)[:3] == ["model_or_path", "device", "threads"]
    assert "output_names" in graphopt.Session.run.__doc__


# --- graphopt bench A.onnx B.onnx ----------------------------------------------------------------
def test_bench_models_side_by_side(tmp_path, capsys):
    """The original and its compiled forms: interleaved, ratios against the first; ORT cannot load the
    ai.graphopt one and the table says so instead of failing."""
    src = str(MODELS / "transformer_block" / "model.onnx")
    onnx.save(graphopt.compile(src), tmp_path / "o.onnx")
    onnx.save(graphopt.compile(src, target="graphopt"), tmp_path / "g.onnx")
    argv = ["bench", src, str(tmp_path / "o.onnx"), str(tmp_path / "g.onnx"), "--runs", "2", "--warmup", "0",
            "--dim", "seq=8"]
    assert main(argv + ["--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "g.onnx [onnxruntime, 1 thread]: n/a: ai.graphopt ops run only in graphopt's runtime" in out
    assert "o.onnx [onnxruntime, 1 thread]: median" in out and "x the first model" in out
    assert main(argv + ["--json", "--runtime", "graphopt"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(Path(r["model"]).name, r["runtime"]) for r in rows] == [
        ("model.onnx", "graphopt"), ("o.onnx", "graphopt"), ("g.onnx", "graphopt")]
    assert rows[0]["ratio_vs_first"] == 1.0 and all(r["runs"] == 2 for r in rows)


def test_bench_refuses_models_with_other_inputs(tmp_path, capsys):
    a, b = str(MODELS / "convnet" / "model.onnx"), str(MODELS / "bert_encoder" / "model.onnx")
    assert main(["bench", a, b, "--runs", "1"]) == 2
    assert "input 'input_ids' is not an input of" in capsys.readouterr().err


def test_bench_says_which_runtime_cannot_load_a_model(tmp_path, capsys):
    """An op no runtime has: each row says why, and with nothing timed the command fails in one line."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="custom.ops")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    assert main(["bench", str(tmp_path / "custom.onnx"), "--runtime", "both", "--runs", "1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("graphopt: ")]  # after the inputs note
    assert len(err) == 1 and "nothing to time" in err[0]
    assert "[graphopt] n/a: graphopt cannot load it" in err[0] and "[onnxruntime] n/a: onnxruntime cannot load it" in err[0]
