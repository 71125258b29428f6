"""PassManager: selection by level, fixed point and its cap, timing, verify-each, bisect, print-after."""
import time

import numpy as np
import pytest

import graphopt
from graphopt import ir
from graphopt.pipeline import load_builtin_passes
from graphopt.errors import LimitExceeded, UsageError, VerificationFailed
from graphopt.compiler.pass_manager import REGISTRY, PassManager, PassResult, register_pass
from passcheck import assert_same_outputs, check, ops, optimize, parse, run

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
ADD_MODEL = H17 + """
    g (float[2,3] x, float[2,3] z) => (float[2,3] y) {
        i = Identity(x)
        a = Add(i, z)
        y = Relu(a)
    }"""


@pytest.fixture
def temp_passes():
    """Register test-only passes through this fixture; they leave the registry afterwards."""
    load_builtin_passes()
    before = set(REGISTRY)

    def register(name, fn=None, **kw):
        register_pass(name, **kw)(fn or (lambda g, ctx: PassResult(False, {})))
        return name

    yield register
    for name in set(REGISTRY) - before:
        del REGISTRY[name]


def add_to_sub(graph, ctx):
    """Deliberately wrong: turns every Add into a Sub."""
    hit = 0
    for node in graph.nodes:
        if node.op == "Add":
            node.op = "Sub"
            hit += 1
    return PassResult(hit > 0, {"adds_broken": hit})


def names(manager):
    return [p.name for p in manager.selected()]


# ---------------------------------------------------------------- selection

def test_level_selects_passes_at_or_below_it(temp_passes):
    for level in (1, 2, 3):
        temp_passes(f"t-level{level}", level=level)
    assert [n for n in names(PassManager(level=1)) if n.startswith("t-")] == ["t-level1"]
    assert [n for n in names(PassManager(level=2)) if n.startswith("t-")] == ["t-level1", "t-level2"]
    assert [n for n in names(PassManager(level=3)) if n.startswith("t-")] == ["t-level1", "t-level2", "t-level3"]


def test_level_zero_selects_nothing():
    load_builtin_passes()
    assert [p for p in PassManager(level=0).selected() if p.level > 0] == []
    assert "dce" in names(PassManager(level=1)) and "dce" not in names(PassManager(level=0))


def test_requested_runs_regardless_of_level(temp_passes):
    temp_passes("t-level3", level=3)
    assert "t-level3" in names(PassManager(level=0, passes=["t-level3"]))
    assert "t-level3" in names(PassManager(level=1, passes=["t-level3"]))


def test_disabled_wins_over_level_and_request(temp_passes):
    temp_passes("t-level1", level=1)
    assert "t-level1" not in names(PassManager(level=3, disable=["t-level1"]))
    assert "t-level1" not in names(PassManager(level=3, passes=["t-level1"], disable=["t-level1"]))
    assert "dce" not in names(PassManager(level=1, disable=["dce"]))


def test_opt_in_runs_only_on_request(temp_passes):
    temp_passes("t-lossy", level=1, opt_in=True)
    assert "t-lossy" not in names(PassManager(level=3))
    assert "t-lossy" in names(PassManager(level=0, passes=["t-lossy"]))


def test_pipeline_follows_registry_order_not_request_order(temp_passes):
    temp_passes("t-first")
    temp_passes("t-second")
    assert names(PassManager(level=0, passes=["t-second", "t-first"])) == ["t-first", "t-second"]


@pytest.mark.parametrize("kwargs", [{"passes": ["no-such-pass"]}, {"disable": ["no-such-pass"]}, {"level": 4},
                                    {"level": -1}])
def test_bad_selection_is_a_usage_error(kwargs):
    load_builtin_passes()
    with pytest.raises(UsageError):
        PassManager(**kwargs)


def test_unknown_pass_through_compile_names_it():
    with pytest.raises(UsageError, match="no-such-pass"):
        optimize(parse(ADD_MODEL), ["dce", "no-such-pass"])


# ---------------------------------------------------------------- running

def test_fixed_point_repeats_until_nothing_changes(temp_passes):
    state = {"left": 2}

    def shrinking(graph, ctx):
        if state["left"]:
            state["left"] -= 1
            return PassResult(True, {"did": 1})
        return PassResult(False, {})

    temp_passes("t-twice", shrinking, per_graph=False)
    result = optimize(parse(ADD_MODEL), ["t-twice"])
    recs = [r for r in result.report.passes if r["name"] == "t-twice"]
    assert [(r["iteration"], r["changed"]) for r in recs] == [(1, True), (2, True), (3, False)]


def test_fixed_point_cap_raises(temp_passes):
    temp_passes("t-always-changes", lambda g, ctx: PassResult(True, {}), per_graph=False)
    with pytest.raises(LimitExceeded, match="t-always-changes"):
        optimize(parse(ADD_MODEL), ["t-always-changes"], max_iterations=3)


def test_per_pass_timing_records(temp_passes):
    def slow(graph, ctx):
        time.sleep(0.05)
        return PassResult(False, {"looked": len(graph.nodes)})

    temp_passes("t-slow", slow, per_graph=False)
    result = optimize(parse(ADD_MODEL), ["dce", "t-slow"])
    recs = {r["name"]: r for r in result.report.passes}
    assert set(recs) == {"dce", "t-slow"}
    assert recs["t-slow"]["seconds"] >= 0.05 and recs["t-slow"]["stats"] == {"looked": 3}
    assert recs["dce"]["seconds"] >= 0
    totals = result.report.pass_totals()
    assert totals["t-slow"]["runs"] == 1 and totals["t-slow"]["seconds"] >= 0.05
    assert "t-slow" in result.report.to_text() and "looked=3" in result.report.to_text()


def test_per_graph_pass_sees_every_subgraph_innermost_first(temp_passes):
    seen = []

    def record(graph, ctx):
        seen.append(graph.name)
        return PassResult(False, {})

    temp_passes("t-per-graph", record)
    temp_passes("t-main-only", lambda g, ctx: seen.append("main-only:" + g.name) or PassResult(False, {}),
                per_graph=False)
    optimize(parse(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            y = If(c) <then_branch = then_g () => (float[3] t) { t = Neg(x) },
                       else_branch = else_g () => (float[3] e) { e = Abs(x) }>
        }"""), ["t-per-graph", "t-main-only"])
    assert sorted(seen[:2]) == ["else_g", "then_g"] and seen[2:] == ["g", "main-only:g"]


def test_class_based_pass(temp_passes):
    @register_pass("t-class-pass", level=2)
    class CountNodes:
        """Counts nodes."""

        def run(self, graph, ctx):
            return PassResult(False, {"nodes": len(graph.nodes)})

    assert REGISTRY["t-class-pass"].doc == "Counts nodes."
    result = optimize(parse(ADD_MODEL), ["t-class-pass"])
    assert result.report.pass_totals()["t-class-pass"]["stats"]["nodes"] == 3


def test_pass_returning_none_is_reported(temp_passes):
    temp_passes("t-returns-none", lambda g, ctx: None)
    with pytest.raises(TypeError, match="t-returns-none"):
        optimize(parse(ADD_MODEL), ["t-returns-none"])


def test_context_carries_options(temp_passes):
    seen = {}

    def look(graph, ctx):
        seen.update(level=ctx.level, opset=ctx.opset, fold_limit=ctx.fold_limit)
        return PassResult(False, {})

    temp_passes("t-look", look, per_graph=False)
    graphopt.compile_model(parse(ADD_MODEL), level=1, passes=["t-look"], fold_limit=1234)
    assert seen == {"level": 1, "opset": 17, "fold_limit": 1234}


# ---------------------------------------------------------------- the wrong pass, verify-each, bisect

def test_wrong_pass_really_breaks_the_model(temp_passes):
    temp_passes("t-add-to-sub", add_to_sub)
    model = parse(ADD_MODEL)
    result = optimize(model, ["t-add-to-sub"])
    feed = {"x": np.ones((2, 3), np.float32), "z": np.full((2, 3), 2.0, np.float32)}
    assert not np.allclose(run(result.model, feed)["y"], run(model, feed)["y"])


def test_verify_each_names_the_breaking_pass(temp_passes):
    temp_passes("t-add-to-sub", add_to_sub)
    with pytest.raises(VerificationFailed, match="t-add-to-sub"):
        optimize(parse(ADD_MODEL), ["eliminate-noops", "t-add-to-sub"], verify_each=True)


def test_verify_each_passes_correct_pipeline():
    model = parse(ADD_MODEL)
    result = optimize(model, ["eliminate-noops", "dce"], verify_each=True)
    assert ops(result.model) == ["Add", "Relu"]
    assert_same_outputs(model, result.model)


def test_verify_each_catches_an_invalid_graph(temp_passes):
    def rename_op(graph, ctx):
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "NoSuchOp"
                return PassResult(True, {})
        return PassResult(False, {})

    temp_passes("t-invalid", rename_op)
    with pytest.raises(VerificationFailed, match="t-invalid"):
        optimize(parse(ADD_MODEL), ["t-invalid"], verify_each=True)


def test_bisect_limit_stops_before_the_wrong_pass(temp_passes):
    temp_passes("t-add-to-sub", add_to_sub)
    model = parse(ADD_MODEL)
    # pipeline: eliminate-noops (run 1), t-add-to-sub (run 2), ...
    good = optimize(model, ["eliminate-noops", "t-add-to-sub"], bisect_limit=1)
    assert ops(good.model) == ["Add", "Relu"]  # Identity removed, Add intact
    assert_same_outputs(model, good.model)
    skipped = [r for r in good.report.passes if r["skipped"]]
    assert skipped and skipped[0]["name"] == "t-add-to-sub"
    assert "bisect: skipped" in good.report.to_text()
    bad = optimize(model, ["eliminate-noops", "t-add-to-sub"], bisect_limit=2)
    assert "Sub" in ops(bad.model)


def test_bisect_limit_zero_runs_nothing():
    model = parse(ADD_MODEL)
    result = optimize(model, ["eliminate-noops", "dce"], bisect_limit=0)
    assert ops(result.model) == ["Add", "Identity", "Relu"]
    assert all(r["skipped"] for r in result.report.passes)


def test_print_after():
    result = optimize(parse(ADD_MODEL), ["eliminate-noops", "dce"], print_after=["eliminate-noops"])
    # one block per run of the pass (the pipeline runs twice: the second finds nothing to change)
    assert [b.splitlines()[0] for b in result.report.printed] == [
        "--- after eliminate-noops (iteration 1) ---", "--- after eliminate-noops (iteration 2) ---"]
    text = result.report.printed[0]
    assert text.startswith("--- after eliminate-noops (iteration 1) ---")
    assert "Add" in text and "Identity" not in text


def test_manager_used_directly_on_a_graph():
    load_builtin_passes()
    model = parse(ADD_MODEL)
    graph = ir.load(model)
    manager = PassManager(level=1)
    manager.run(graph, model)
    out = ir.export(graph, model)
    check(out)
    assert ops(out) == ["Add", "Relu"]
    assert {r.name for r in manager.records} >= {"dce", "eliminate-noops", "fold-constants"}
    assert_same_outputs(model, out)
