"""Differential fuzzing in CI: a seeded sample of random graphs through every level and target
(ONNX Runtime on the original is the reference), plus proof that the oracle, the minimizer and the
regression files catch a planted miscompile."""
import numpy as np
import onnx
import pytest

from graphopt.compiler.pass_manager import REGISTRY, PassResult, register_pass
from graphopt.pipeline import load_builtin_passes

from bench import fuzz
from bench.fuzz_graphs import random_model

CHUNKS, PER_CHUNK, SEED = 10, 30, 20240  # 300 graphs; chunks let pytest-xdist spread them


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_ci_sample_has_no_mismatch(chunk):
    stats = fuzz.run(PER_CHUNK, SEED + chunk * PER_CHUNK, save=None, max_ops=6, log=lambda m: None)
    assert stats["graphs"] + stats["invalid_originals"] == PER_CHUNK
    assert stats["graphs"] >= PER_CHUNK - 3  # the generator makes valid models (ORT's If bug aside)
    assert stats["failing_graphs"] == 0, stats["failures"]


def test_generated_models_are_valid_and_varied():
    wanted = {"Conv", "MatMul", "Gemm", "Softmax", "If", "Resize", "Where", "Cast", "Concat", "Split",
              "BatchNormalization", "ReduceMean", "Erf", "Transpose", "Gather", "Slice", "MaxPool"}
    ops = set()
    for seed in range(400):
        model = random_model(seed)
        onnx.checker.check_model(model, full_check=True)
        outs = fuzz.reference(model, fuzz.feeds_for(model, seed))
        assert all(np.isfinite(o).all() for r in outs for o in r)
        ops |= {n.op_type for n in model.graph.node}
        if wanted <= ops:
            break
    assert wanted <= ops, wanted - ops
    symbolic = [any(d.dim_param for i in random_model(s).graph.input for d in i.type.tensor_type.shape.dim)
                for s in range(20)]
    assert any(symbolic) and not all(symbolic)


@pytest.fixture
def planted_bug():
    """A deliberately wrong O1 pass (Add -> Sub), removed from the registry afterwards."""
    load_builtin_passes()

    def add_to_sub(graph, ctx):
        hit = [n for n in graph.nodes if n.op == "Add"]
        for n in hit:
            n.op = "Sub"
        return PassResult(bool(hit), {"broken": len(hit)})

    register_pass("t-fuzz-add-to-sub", level=1)(add_to_sub)
    yield
    del REGISTRY["t-fuzz-add-to-sub"]


def _model_with_add(seed=3):
    """A model in which an Add is still there after the real O1 passes (for the planted pass to break)."""
    import graphopt
    for s in range(seed, seed + 200):
        m = random_model(s, max_ops=10)
        if len(m.graph.node) >= 8 and any(n.op_type == "Add" for n in graphopt.compile(m, level=1,
                                                                                      disable=["t-fuzz-add-to-sub"]).graph.node):
            return m, s
    raise AssertionError("no model with an Add")


def test_oracle_minimizer_and_replay_catch_a_planted_miscompile(planted_bug, tmp_path):
    model, seed = _model_with_add()
    feeds = fuzz.feeds_for(model, seed)
    failures, _ = fuzz.check(model, feeds)
    keys = {f.key for f in failures}
    assert "O1:ort-mismatch" in keys or "O1/onnx:ort-mismatch" in keys, keys
    key = sorted(k for k in keys if k.startswith("O1") and k.endswith("ort-mismatch"))[0]
    small, small_feeds = fuzz.minimize(model, seed, key)
    assert 1 <= len(small.graph.node) < len(model.graph.node)
    assert any(n.op_type == "Add" for n in small.graph.node)  # the op the bug breaks survives
    folder = fuzz.save_case(tmp_path / "case", small, small_feeds, {"seed": seed, "key": key, "xfail": None})
    again, again_feeds, meta = fuzz.load_case(folder)
    assert meta["key"] == key
    assert any(f.key == key for f in fuzz.check(again, again_feeds)[0])


def test_run_saves_minimized_cases(planted_bug, tmp_path):
    _, seed = _model_with_add()
    stats = fuzz.run(1, seed, save=tmp_path, max_ops=10, log=lambda m: None, minimize_budget=40)
    assert stats["failing_graphs"] == 1
    (case,) = tmp_path.iterdir()
    assert sorted(p.name for p in case.iterdir()) == ["inputs.npz", "meta.json", "model.onnx"]


def test_session_mismatch_is_caught(monkeypatch):
    """(b): a runtime that computes something else is reported, not only compile bugs."""
    import graphopt
    seed = 4
    model = random_model(seed)
    real = graphopt.Session

    class Wrong(real):
        def run(self, names, feed, run_options=None):
            return [o + 1 for o in super().run(names, feed)]

    monkeypatch.setattr(graphopt, "Session", Wrong)
    failures, _ = fuzz.check(model, fuzz.feeds_for(model, seed))
    assert "session:original-mismatch" in {f.key for f in failures}
