"""compile --input-shape / --dim pin symbolic input dims before the passes, so a
Shape -> Gather -> Equal -> If chain folds completely (expected values: ORT on the original model)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from tests.unit.passcheck import check, ops, session

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float["N",3] x) => (float["N",3] y) {
  s = Shape(x)
  i = Constant<value = int64 {0}>()
  d = Gather(s, i)
  two = Constant<value = int64 {2}>()
  e = Equal(d, two)
  y = If(e) <then_branch = g1 () => (float["N",3] a) { a = Tanh(x) },
             else_branch = g2 () => (float["N",3] b) { b = Neg(x) }>
}"""


@pytest.fixture
def saved(tmp_path):
    model = onnx.parser.parse_model(MODEL)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return model, path


def _compile(path, out, *extra):
    cmd = [sys.executable, "-m", "graphopt.cli", "compile", str(path), "-o", str(out), "-O1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("option,n", [(["--input-shape", "x=2,3"], 2), (["--dim", "N=5"], 5)])
def test_pinned_dim_folds_the_if_away(saved, tmp_path, option, n):
    model, path = saved
    out = tmp_path / "m.opt.onnx"
    proc = _compile(path, out, *option)
    assert proc.returncode == 0, proc.stderr
    compiled = onnx.load(out)
    check(compiled)
    assert "If" not in ops(compiled, nested=True), onnx.printer.to_text(compiled.graph)
    dims = [d.dim_value for d in compiled.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [n, 3]
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)
        want = session(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(session(compiled).run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-6)


def test_without_pinning_the_if_stays(saved, tmp_path):
    _, path = saved
    out = tmp_path / "m.opt.onnx"
    assert _compile(path, out).returncode == 0
    assert "If" in ops(onnx.load(out))


@pytest.mark.parametrize("option,message", [
    (["--dim", "M=2"], "no symbolic dim 'M'"),
    (["--input-shape", "z=2,3"], "no input 'z'"),
    (["--input-shape", "x=2"], "1 dims given, the input has rank 2"),
    (["--input-shape", "x=2,4"], "axis 1 is fixed at 3"),
])
def test_bad_pins_are_usage_errors_and_write_nothing(saved, tmp_path, option, message):
    _, path = saved
    out = tmp_path / "m.opt.onnx"
    for extra in ([], ["--no-verify"]):
        proc = _compile(path, out, *option, *extra)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert not out.exists()


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name,dims", [("shape_chain", {"batch": 2}), ("bert_dynamic", {"batch": 1, "seq": 8})])
def test_pinned_models_lose_their_shape_chains(tmp_path, name, dims):
    from graphopt.ir.sample_inputs import plan_inputs
    src = MODELS / name / "model.onnx"
    out = tmp_path / "o.onnx"
    pins = [a for k, v in dims.items() for a in ("--dim", f"{k}={v}")]
    proc = _compile(src, out, *pins)
    assert proc.returncode == 0, proc.stderr
    original, compiled = onnx.load(src), onnx.load(out)
    check(compiled)
    assert "Shape" not in ops(compiled, nested=True)
    plan = plan_inputs(original, dims)
    for i in compiled.graph.input:
        spec = next(s for s in plan.specs if s.name == i.name)
        assert [d.dim_value for d in i.type.tensor_type.shape.dim] == list(spec.shape)
    for seed in range(2):
        feed = plan.feed(seed)
        want, got = session(original).run(None, feed), session(compiled).run(None, feed)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
