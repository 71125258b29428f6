"""The command line, run as a user would: a separate process, exit codes, stdout/stderr, files."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from passcheck import assert_same_outputs, check, ops, parse

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
MODEL = H17 + """
    g (float[2,3] x, float[2,3] z) => (float[2,3] y) <float zero = {0.0}, float[3] bias = {1.0, 2.0, 3.0}> {
        i = Identity(x)
        a = Add(i, zero)
        dead = Neg(x)
        s = Add(a, z)
        b = Add(s, bias)
        y = Relu(b)
    }"""
# x:[3] + zeros:[2,3] broadcasts, so add-zero must refuse it: a near-miss for --trace
BROADCAST = H17 + """
    g (float[3] x) => (float[2,3] y) <float[2,3] zeros = {0, 0, 0, 0, 0, 0}> {
        i = Identity(x)
        a = Add(i, zeros)
        y = Relu(a)
    }"""

PLUGIN = '''
import graphopt
from graphopt import PassResult, register_pass


@register_pass("test-double-neg", level=3)
def remove_double_neg(graph, ctx):
    """Neg(Neg(x)) -> x (test plugin)."""
    rules = [graphopt.Rule("double-neg", graphopt.Op("Neg", graphopt.Op("Neg", graphopt.Var("x"))),
                           lambda m: m["x"])]
    stats = graphopt.apply_rules(graph, rules, ctx.opset)
    return PassResult(stats.total > 0, {"negs_removed": 2 * stats.total})


@register_pass("test-add-to-sub", level=3)
def break_adds(graph, ctx):
    """Deliberately wrong: Add -> Sub."""
    hit = 0
    for node in graph.nodes:
        if node.op == "Add":
            node.op = "Sub"
            hit += 1
    return PassResult(hit > 0, {"broken": hit})
'''
NEG_MODEL = H17 + """
    g (float[2,3] x, float[2,3] z) => (float[2,3] y) {
        n = Neg(x)
        nn = Neg(n)
        i = Identity(nn)
        y = Add(i, z)
    }"""


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphopt.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def write(tmp_path, text, name="model.onnx"):
    model = parse(text)
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return model, path


def assert_one_line_error(proc, code=1, contains=""):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("graphopt: error: "), lines[0]
    assert contains in lines[0], lines[0]


# ---------------------------------------------------------------- compile

def test_compile_prints_summary_and_writes_output(tmp_path):
    model, src = write(tmp_path, MODEL)
    out = tmp_path / "out.onnx"
    proc = cli("compile", src, "-o", out, "-O1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    nodes_row = next(line for line in lines if line.startswith("nodes"))
    assert nodes_row.split()[1:] == ["6", "3"]
    assert any(line.startswith("dce") and "nodes_removed=1" in line for line in lines)
    assert any(line.startswith("eliminate-noops") and "identity=1" in line and "add-zero=1" in line
               for line in lines)
    assert f"wrote {out}" in proc.stdout
    result = onnx.load(str(out))
    check(result)
    assert ops(result) == ["Add", "Add", "Relu"]
    assert_same_outputs(model, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]


def test_compile_default_output_name(tmp_path):
    _, src = write(tmp_path, MODEL)
    proc = cli("compile", src, "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    check(onnx.load(str(tmp_path / "model.opt.onnx")))


def test_compile_report_json(tmp_path):
    _, src = write(tmp_path, MODEL)
    report = tmp_path / "r.json"
    proc = cli("compile", src, "-o", tmp_path / "out.onnx", "-O1", "--report", report, "-q")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["before"]["nodes"] == 6 and data["after"]["nodes"] == 3
    assert data["pass_totals"]["dce"]["stats"]["nodes_removed"] == 1
    assert all({"name", "iteration", "seconds", "changed", "stats"} <= set(r) for r in data["passes"])
    assert data["after"]["ops"] == {"Add": 2, "Relu": 1}


def test_fold_limit_option(tmp_path):
    text = H17 + """
        g (float[64,64] x) => (float[64,64] y) <int64[2] shape = {64, 64}> {
            z = ConstantOfShape<value = float[1] {0.5}>(shape)
            y = Add(x, z)
        }"""
    model, src = write(tmp_path, text)
    for limit, expected in (("4k", ["Add", "ConstantOfShape"]), ("1M", ["Add"])):
        out = tmp_path / f"out_{limit}.onnx"
        proc = cli("compile", src, "-o", out, "-O0", "--passes", "fold-constants", "--fold-limit", limit, "-q")
        assert proc.returncode == 0, proc.stderr
        assert ops(onnx.load(str(out))) == expected
        assert_same_outputs(model, onnx.load(str(out)))


def test_external_data_always(tmp_path):
    w = ", ".join(["0.25"] * 64 * 64)
    model, src = write(tmp_path, H17 + f"""
        g (float[2,64] x) => (float[2,64] y) <float[64,64] w = {{{w}}}> {{ y = MatMul(x, w) }}""")
    out = tmp_path / "out.onnx"
    proc = cli("compile", src, "-o", out, "--external-data", "always", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.onnx.data").exists()
    assert_same_outputs(model, onnx.load(str(out)))


# ---------------------------------------------------------------- passes / plugin / inspect

def test_passes_lists_builtin_passes_with_levels():
    proc = cli("passes")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in proc.stdout.splitlines()[1:] if line.strip()}
    for name in ("infer-shapes", "fold-shapes", "fold-constants", "dce", "eliminate-noops", "cse",
                 "dedup-initializers"):
        assert rows[name] == ["O1", "built-in"], (name, rows.get(name))


def test_plugin_shows_in_passes_and_runs(tmp_path):
    plugin = tmp_path / "myplugin.py"
    plugin.write_text(PLUGIN)
    proc = cli("passes", "--plugin", plugin)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("test-double-neg"))
    assert row.split()[1:3] == ["O3", "myplugin"] and "Neg(Neg(x)) -> x" in row

    model, src = write(tmp_path, NEG_MODEL)
    out = tmp_path / "out.onnx"
    proc = cli("compile", src, "-o", out, "-O0", "--plugin", plugin, "--passes", "test-double-neg")
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("test-double-neg") and "negs_removed=2" in line for line in proc.stdout.splitlines())
    result = onnx.load(str(out))
    assert ops(result) == ["Add", "Identity"]
    assert_same_outputs(model, result)


def test_plugin_pass_not_run_without_request_at_lower_level(tmp_path):
    plugin = tmp_path / "myplugin.py"
    plugin.write_text(PLUGIN)
    model, src = write(tmp_path, NEG_MODEL)
    out = tmp_path / "out.onnx"
    proc = cli("compile", src, "-o", out, "-O1", "--plugin", plugin, "-q")
    assert proc.returncode == 0, proc.stderr
    assert ops(onnx.load(str(out))).count("Neg") == 2


def test_bad_plugin_is_a_usage_error(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('nope')\n")
    _, src = write(tmp_path, MODEL)
    assert_one_line_error(cli("passes", "--plugin", plugin), 2, "broken.py")
    assert_one_line_error(cli("compile", src, "--plugin", tmp_path / "missing.py"), 2, "missing.py")


def test_inspect(tmp_path):
    _, src = write(tmp_path, MODEL)
    proc = cli("inspect", src)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "opsets: ai.onnx 17" in text
    assert "x: float [2, 3]" in text and "z: float [2, 3]" in text and "y: float [2, 3]" in text
    assert "nodes: 6" in text and "parameters: 4" in text
    hist = {line.split()[0]: int(line.split()[1]) for line in text.splitlines() if line.startswith("  ")}
    assert hist == {"Add": 3, "Identity": 1, "Neg": 1, "Relu": 1}
    data = json.loads(cli("inspect", src, "--json").stdout)
    assert data["ops"] == {"Add": 3, "Identity": 1, "Neg": 1, "Relu": 1} and data["parameters"] == 4
    assert [i["name"] for i in data["inputs"]] == ["x", "z"]


# ---------------------------------------------------------------- trace / verify-each / bisect / print-after

def test_trace_fired_and_near_miss(tmp_path):
    _, src = write(tmp_path, BROADCAST)
    proc = cli("compile", src, "-o", tmp_path / "out.onnx", "-O1", "--trace", "identity,add-zero")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("trace: identity: fired at") for line in lines), proc.stdout
    near = [line for line in lines if line.startswith("trace: add-zero: best near-miss")]
    assert len(near) == 1 and "broadcasting" in near[0], proc.stdout


def test_verify_each_passes_a_correct_pipeline(tmp_path):
    model, src = write(tmp_path, MODEL)
    out = tmp_path / "out.onnx"
    proc = cli("compile", src, "-o", out, "-O1", "--verify-each")
    assert proc.returncode == 0, proc.stderr
    assert_same_outputs(model, onnx.load(str(out)))


def test_verify_each_stops_at_the_wrong_pass(tmp_path):
    plugin = tmp_path / "myplugin.py"
    plugin.write_text(PLUGIN)
    _, src = write(tmp_path, MODEL)
    out = tmp_path / "out.onnx"
    proc = cli("compile", src, "-o", out, "-O1", "--plugin", plugin, "--passes", "test-add-to-sub", "--verify-each")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("graphopt: error:")]
    assert len(errors) == 1 and "test-add-to-sub" in errors[0]
    assert not out.exists()


def test_bisect_limit_stops_before_the_wrong_pass(tmp_path):
    plugin = tmp_path / "myplugin.py"
    plugin.write_text(PLUGIN)
    model, src = write(tmp_path, NEG_MODEL)
    out = tmp_path / "out.onnx"
    base = ["compile", src, "-o", out, "-O0", "--plugin", plugin, "--passes", "eliminate-noops,test-add-to-sub"]
    proc = cli(*base, "--bisect-limit", "1")
    assert proc.returncode == 0, proc.stderr
    assert "bisect: skipped" in proc.stdout and "test-add-to-sub" in proc.stdout
    good = onnx.load(str(out))
    assert "Sub" not in ops(good) and "Identity" not in ops(good)
    assert_same_outputs(model, good)
    proc = cli(*base, "--bisect-limit", "2")  # the wrong pass runs: compile's check refuses the output
    assert proc.returncode == 1 and "output 'y' changed" in proc.stderr, proc.stderr
    proc = cli(*base, "--bisect-limit", "2", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert "Sub" in ops(onnx.load(str(out)))


def test_print_after(tmp_path):
    _, src = write(tmp_path, MODEL)
    proc = cli("compile", src, "-o", tmp_path / "out.onnx", "-O1", "--print-after", "dce")
    assert proc.returncode == 0, proc.stderr
    assert "--- after dce (iteration 1) ---" in proc.stdout
    block = proc.stdout.split("--- after dce (iteration 1) ---", 1)[1]
    assert "Relu" in block and "Neg" not in block.split("---")[0]


# ---------------------------------------------------------------- bad input: one line, exit code, no output

def external_model(folder, location):
    model = parse(H17 + """
        g (float[2,3] x) => (float[2,4] y) <float[3,4] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> {
            y = MatMul(x, w)
        }""")
    t = model.graph.initializer[0]
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def bad_inputs(tmp_path):
    """name -> (path of a bad model, expected text in the message)."""
    cases = {}
    cases["missing"] = (tmp_path / "missing.onnx", "no such file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(2048))
    cases["random-bytes"] = (junk, "not an ONNX model")
    w = ", ".join(["0.5"] * 256)
    good = parse(H17 + f"""
        g (float[2,256] x) => (float[2,256] y) <float[256] w = {{{w}}}> {{ y = Add(x, w) }}""").SerializeToString()
    half = tmp_path / "half.onnx"
    half.write_bytes(good[: len(good) // 2])
    cases["truncated"] = (half, "not an ONNX model")
    nodes = [onnx.helper.make_node("Add", ["x", "b"], ["a"]), onnx.helper.make_node("Relu", ["a"], ["b"])]
    vi = onnx.helper.make_tensor_value_info
    cyc = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [vi("x", 1, [2])], [vi("b", 1, [2])]),
                                 opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    (tmp_path / "cycle.onnx").write_bytes(cyc.SerializeToString())
    cases["cycle"] = (tmp_path / "cycle.onnx", "cycle")
    undef = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["ghost"], ["y"])], "g",
                                                          [vi("x", 1, [2])], [vi("y", 1, [2])]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    (tmp_path / "undef.onnx").write_bytes(undef.SerializeToString())
    cases["undefined-input"] = (tmp_path / "undef.onnx", "ghost")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    for name, location in (("absolute", str(secret)), ("dotdot", "../secret.bin"), ("symlink", "link.bin")):
        folder = tmp_path / name
        folder.mkdir()
        if name == "symlink":
            os.symlink(secret, folder / "link.bin")
        cases[f"external-{name}"] = (external_model(folder, location), "external data")
    return cases


CASES = ["missing", "random-bytes", "truncated", "cycle", "undefined-input", "external-absolute",
         "external-dotdot", "external-symlink"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, case):
    path, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out" / "result.onnx"
    out.parent.mkdir()
    proc = cli("compile", path, "-o", out)
    assert_one_line_error(proc, 1, message)
    assert list(out.parent.iterdir()) == []  # no output, no temp files
    proc = cli("inspect", path)
    assert_one_line_error(proc, 1, message)


def test_output_folder_missing(tmp_path):
    # README: a missing output folder is bad input (exit 1), not a usage error
    _, src = write(tmp_path, MODEL)
    proc = cli("compile", src, "-o", tmp_path / "nope" / "out.onnx")
    assert_one_line_error(proc, 1, "does not exist")
    assert not (tmp_path / "nope").exists()


def test_refuses_to_overwrite_input_without_force(tmp_path):
    model, src = write(tmp_path, MODEL)
    before = src.read_bytes()
    proc = cli("compile", src, "-o", src)
    assert_one_line_error(proc, 2, "--force")
    assert src.read_bytes() == before
    proc = cli("compile", src, "-o", src, "--force", "-q")
    assert proc.returncode == 0, proc.stderr
    assert src.read_bytes() != before
    assert_same_outputs(model, onnx.load(str(src)))


def test_unknown_pass_is_a_usage_error(tmp_path):
    _, src = write(tmp_path, MODEL)
    out = tmp_path / "out.onnx"
    assert_one_line_error(cli("compile", src, "-o", out, "--passes", "no-such-pass"), 2, "no-such-pass")
    assert_one_line_error(cli("compile", src, "-o", out, "--disable", "no-such-pass"), 2, "no-such-pass")
    assert not out.exists()


def test_bad_arguments_exit_2():
    proc = cli("compile")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = cli("compile", "m.onnx", "-O", "7")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    proc = cli("--debug", "compile", tmp_path / "missing.onnx", "-o", tmp_path / "out.onnx")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("graphopt: error: ")
    assert not (tmp_path / "out.onnx").exists()
