"""Shared helpers for the unit tests: parse ONNX text, run passes, compare with ONNX Runtime.

Expected values always come from ONNX Runtime on the *original* model (or from the ONNX spec),
never from graphopt's own output.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

import graphopt
from graphopt.compiler.report import walk_nodes


def parse(text: str, check: bool = True) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def optimize(model, passes, **options) -> graphopt.CompileResult:
    """Run exactly `passes` (level 0 selects nothing else)."""
    return graphopt.compile_model(model, level=0, passes=list(passes), **options)


def ops(model_or_graph, nested: bool = False) -> list[str]:
    """Op types of the main graph (or of every graph when nested), sorted."""
    graph = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    nodes = walk_nodes(graph) if nested else graph.node
    return sorted(n.op_type for n in nodes)


def subgraph(model: onnx.ModelProto, node_op: str, attr: str) -> onnx.GraphProto:
    node = next(n for n in model.graph.node if n.op_type == node_op)
    return next(a.g for a in node.attribute if a.name == attr)


def check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feed: dict) -> dict:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def make_feed(model: onnx.ModelProto, seed: int = 0, dims: dict | None = None) -> dict:
    """Random values for the real graph inputs; symbolic dims from `dims` (default 2)."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 2) for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype == np.bool_:
            feed[vi.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.floating):
            feed[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[vi.name] = rng.integers(-3, 4, shape).astype(dtype)
    return feed


def assert_same_outputs(original: onnx.ModelProto, optimized: onnx.ModelProto, feeds=None, dims=None,
                        seeds=(0, 1), rtol=1e-5, atol=1e-6) -> None:
    """Same output names in the same order, and the values ORT computes on the original."""
    assert [o.name for o in optimized.graph.output] == [o.name for o in original.graph.output]
    if feeds is None:
        feeds = [make_feed(original, seed, dims) for seed in seeds]
    ref, cand = session(original), session(optimized)
    names = [o.name for o in ref.get_outputs()]
    cand_inputs = {i.name for i in cand.get_inputs()}
    for feed in feeds:
        want = ref.run(names, feed)
        got = cand.run(names, {k: v for k, v in feed.items() if k in cand_inputs})
        for name, w, g in zip(names, want, got):
            assert g.dtype == w.dtype, name
            assert g.shape == w.shape, name
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def check_pass(text: str, passes, expect_ops, nested_ops=None, dims=None, feeds=None, **options
               ) -> graphopt.CompileResult:
    """The standard pass test: parse -> run passes -> op types, onnx.checker, numeric equality."""
    model = parse(text)
    result = optimize(model, passes, **options)
    assert ops(result.model) == sorted(expect_ops), onnx.printer.to_text(result.model.graph)
    if nested_ops is not None:
        assert ops(result.model, nested=True) == sorted(nested_ops), onnx.printer.to_text(result.model.graph)
    check(result.model)
    assert_same_outputs(model, result.model, feeds=feeds, dims=dims)
    return result


def hits(result: graphopt.CompileResult, pass_name: str) -> Counter:
    totals = result.report.pass_totals()
    return Counter(totals[pass_name]["stats"]) if pass_name in totals else Counter()
