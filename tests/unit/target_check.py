"""Shared by test_fusion_transformer.py and test_targets.py: compile ONNX text for an output target
and check the result against ONNX Runtime on the original (graphopt's runtime runs the graphopt
target, which ORT cannot load; ORT runs onnx and ort targets)."""
from __future__ import annotations

import numpy as np
import onnx

import graphopt
from fusion_check import hits, parse
from graphopt.verify import compare_arrays, random_feed, run_ort

RTOL, ATOL = 1e-4, 1e-5
SHORT = {"com.microsoft": "ms:", "ai.graphopt": "go:", "": ""}


def ops(model: onnx.ModelProto) -> list[str]:
    """Op types in graph order, contrib ops prefixed ms:, graphopt's go:."""
    return [SHORT.get(n.domain, n.domain + ":") + n.op_type for n in model.graph.node]


def compile_for(text_or_model, passes, target: str, opset: int | None = None, trace=(), level: int = 0):
    model = parse(text_or_model) if isinstance(text_or_model, str) else text_or_model
    chosen = ["infer-shapes", *passes] if level == 0 else []
    result = graphopt.compile_model(model, level=level, passes=chosen, trace=trace, target=target, opset=opset)
    return model, result.model, result.report


def run_target(model: onnx.ModelProto, feed: dict, target: str) -> dict:
    if target == "graphopt":
        names = [o.name for o in model.graph.output]
        return dict(zip(names, graphopt.Session(model).run(None, feed)))
    return run_ort(model, feed)


def check_target_numbers(model, out, target, rtol=RTOL, atol=ATOL, fixed=None, seeds=(0, 1)) -> None:
    onnx.checker.check_model(out, full_check=True)
    for seed in seeds:
        feed = {**random_feed(model, seed, {"N": 3}), **(fixed or {})}
        want, got = run_ort(model, feed), run_target(out, feed, target)
        assert list(got) == list(want)
        for name in want:
            err = compare_arrays(name, want[name], got[name], rtol, atol)
            assert err.ok, f"{name}: max abs {err.max_abs:.3g} ({target})"


def assert_target_fused(text, passes, target, rule, expect_ops, opset=None, rtol=RTOL, atol=ATOL, fixed=None):
    model, out, report = compile_for(text, passes, target, opset)
    assert ops(out) == list(expect_ops), ops(out)
    assert hits(report, rule) >= 1, f"{rule} did not fire"
    check_target_numbers(model, out, target, rtol, atol, fixed)
    return out


def assert_target_refused(text, passes, target, rule, reason, opset=None, fixed=None):
    """Nothing of the rule's changes, and the trace of `rule` says why with `reason`."""
    model, out, report = compile_for(text, passes, target, opset, trace=[rule])
    assert hits(report, rule) == 0
    got = report.near_misses.get(rule, (0, "", "no near-miss recorded"))[2]
    assert reason in got, f"reason {got!r} does not mention {reason!r}"
    check_target_numbers(model, out, target, fixed=fixed)
    return out


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
