"""Writing is safe: the input model and its external data are never replaced without --force,
whatever name leads to them (symlink, the output's .data file); output data stays beside the output."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt import cli, ir

W = np.arange(32 * 64, dtype=np.float32).reshape(32, 64) / 100  # 8 KiB: above save()'s external-data threshold


def write_model(folder, data_name):
    """model.onnx whose weight lives in `data_name` beside it."""
    (folder / data_name).write_bytes(W.tobytes())
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[32, 64], data_location=TensorProto.EXTERNAL)
    w.external_data.add(key="location", value=data_name)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], [w])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    return path


def test_output_data_file_that_is_the_inputs_weights_needs_force(tmp_path, capsys):
    src = write_model(tmp_path, "out.onnx.data")
    out = tmp_path / "out.onnx"
    code = cli.main(["compile", str(src), "-o", str(out), "--external-data", "always", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--force" in err[0]
    assert (tmp_path / "out.onnx.data").read_bytes() == W.tobytes() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx.data"]
    assert cli.main(["compile", str(src), "-o", str(out), "--external-data", "always", "-q", "--force"]) == 0
    weights = {t.name: numpy_helper.to_array(t) for t in ir.load_model(out).graph.initializer}
    np.testing.assert_array_equal(weights["w"], W)


def test_output_symlinked_to_the_input_needs_force(tmp_path, capsys):
    src = write_model(tmp_path, "w.bin")
    before = src.read_bytes()
    os.symlink(src, tmp_path / "alias.onnx")
    code = cli.main(["compile", str(src), "-o", str(tmp_path / "alias.onnx"), "-q"])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_external_data_is_written_beside_the_output_only(tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = write_model(src_dir, "w.bin")
    assert cli.main(["compile", str(src), "-o", str(out_dir / "m.onnx"), "--external-data", "always", "-q"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert sorted(p.name for p in src_dir.iterdir()) == ["model.onnx", "w.bin"]
    model = onnx.load_model(str(out_dir / "m.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}
