"""Shared by the test_fusion_* files: run fusion passes on an ONNX-text model and check the outcome
(op types, onnx.checker, numeric equality with ONNX Runtime on the original, trace reasons)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

from graphopt import compile_model
from graphopt.verify import compare_models, random_feed

RTOL, ATOL = 1e-4, 1e-5


def tensor(name: str, array, dtype: str = "float") -> str:
    """An initializer in ONNX text syntax: float[2,3] name = {...}."""
    array = np.asarray(array)
    dims = ",".join(str(d) for d in array.shape)
    values = ", ".join(repr(float(v)) if dtype in ("float", "double", "float16") else str(int(v))
                       for v in array.reshape(-1))
    return f"{dtype}{f'[{dims}]' if array.ndim else ''} {name} = {{{values}}}"


def rand(*shape, seed=0, low=None):
    rng = np.random.default_rng(seed + sum(shape))
    a = rng.standard_normal(shape).astype(np.float32)
    return np.abs(a) + low if low is not None else a


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(text: str, passes, trace=(), level: int = 0):
    """(original, optimized, report) after infer-shapes + `passes` (or the whole pipeline at `level`)."""
    model = parse(text)
    chosen = ["infer-shapes", *passes] if level == 0 else []
    result = compile_model(model, level=level, passes=chosen, trace=trace)
    return model, result.model, result.report


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def hits(report, rule: str) -> int:
    return sum(p["stats"].get(rule, 0) for p in report.passes)


def check_numbers(model, out, rtol=RTOL, atol=ATOL, fixed=None) -> None:
    """fixed: inputs that must not be random (shape tensors)."""
    onnx.checker.check_model(out, full_check=True)
    dims = {"N": 4}  # symbolic N is 4 in every test
    feeds = [{**random_feed(model, seed, dims), **(fixed or {})} for seed in range(2)]
    report = compare_models(model, out, rtol=rtol, atol=atol, feeds=feeds)
    assert report.ok, report.summary()


def assert_fused(text: str, passes, rule: str, expect_ops, level: int = 0, rtol=RTOL, atol=ATOL, fixed=None):
    model, out, report = run(text, passes, level=level)
    assert ops(out) == list(expect_ops), ops(out)
    assert hits(report, rule) >= 1, f"{rule} did not fire"
    check_numbers(model, out, rtol, atol, fixed)
    return out


def assert_refused(text: str, passes, rule: str, reason: str, fixed=None):
    """Nothing changes, and the trace of `rule` explains why with `reason`."""
    model, out, report = run(text, passes, trace=[rule])
    assert ops(out) == ops(model), ops(out)
    assert hits(report, rule) == 0
    assert rule in report.near_misses, f"no near-miss recorded for {rule}"
    got = report.near_misses[rule][2]
    assert reason in got, f"reason {got!r} does not mention {reason!r}"
    check_numbers(model, out, fixed=fixed)
    return got


def run_target(text: str, passes, target: str, trace=()):
    """(original, optimized, stats, ctx) after infer-shapes + `passes` run with ctx.options["target"] set
    (the compile API may not take a target yet; the passes read it from the context either way)."""
    from graphopt import ir
    from graphopt.compiler.pass_manager import REGISTRY, PassContext, _default_opset

    model = parse(text)
    shaped = compile_model(model, level=0, passes=["infer-shapes"]).model
    graph = ir.load(shaped)
    ctx = PassContext(level=2, opset=_default_opset(shaped), trace=tuple(trace), model=shaped,
                      options={"target": target})
    stats: dict = {}
    for name in passes:
        for g in ir.all_graphs(graph):
            for rule, n in REGISTRY[name].run(g, ctx).stats.items():
                stats[rule] = stats.get(rule, 0) + n
        ir.toposort(graph)
    return model, ir.export(graph, shaped), stats, ctx


def assert_fused_target(text: str, passes, rule: str, expect_ops, target: str = "ort", fixed=None):
    """Like assert_fused, with ctx.options["target"] set; ORT runs the contrib ops of the output."""
    model, out, stats, _ = run_target(text, passes, target)
    assert ops(out) == list(expect_ops), ops(out)
    assert stats.get(rule, 0) >= 1, f"{rule} did not fire"
    check_numbers(model, out, fixed=fixed)
    return out


def assert_refused_target(text: str, passes, rule: str, reason: str, target: str = "ort", fixed=None):
    """Nothing changes for this target, and the trace of `rule` says why with `reason`."""
    model, out, stats, ctx = run_target(text, passes, target, trace=[rule])
    assert ops(out) == ops(model), ops(out)
    assert stats.get(rule, 0) == 0
    assert rule in ctx.near_misses, f"no near-miss recorded for {rule}"
    got = ctx.near_misses[rule][2]
    assert reason in got, f"reason {got!r} does not mention {reason!r}"
    check_numbers(model, out, fixed=fixed)
    return got
