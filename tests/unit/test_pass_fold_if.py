"""fold-if: an If with a constant condition becomes its taken branch, inlined (expected values: ORT
on the original model)."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt
from tests.unit.passcheck import assert_same_outputs, check, ops, parse

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _feeds(model, n=3):
    """Random float inputs, a bool input alternating True / False."""
    feeds = []
    for s in range(n):
        rng = np.random.default_rng(s)
        feeds.append({i.name: np.array(s % 2 == 0) if i.type.tensor_type.elem_type == 9
                      else rng.standard_normal((2, 3)).astype(np.float32) for i in model.graph.input})
    return feeds


def _o1(model):
    result = graphopt.compile_model(model, level=1)
    check(result.model)
    assert_same_outputs(model, result.model, feeds=_feeds(model))
    return result.model


@pytest.mark.parametrize("cond,expect", [(1, ["Add"]), (0, ["Mul"])])
def test_constant_condition_takes_one_branch(cond, expect):
    model = parse(HEAD + f"""
agraph (float[2,3] x) => (float[2,3] y) {{
  t = Constant<value = bool {{{cond}}}>()
  y = If(t) <then_branch = g1 () => (float[2,3] a) {{ a = Add(x, x) }},
             else_branch = g2 () => (float[2,3] b) {{ b = Mul(x, x) }}>
}}""")
    out = _o1(model)
    assert ops(out) == expect
    assert [o.name for o in out.graph.output] == ["y"]


def test_if_output_read_later_and_graph_output_keep_names():
    model = parse(HEAD + """
agraph (float[2,3] x) => (float[2,3] y, float[2,3] z) <bool t = {1}> {
  y = If(t) <then_branch = g1 () => (float[2,3] a) { a = Sigmoid(x) },
             else_branch = g2 () => (float[2,3] b) { b = Neg(x) }>
  z = Relu(y)
}""")
    out = _o1(model)
    assert ops(out) == ["Relu", "Sigmoid"]
    assert [o.name for o in out.graph.output] == ["y", "z"]


def test_branch_initializers_with_clashing_names():
    """Two branches' local initializers share a name (each in its own scope); inlined, one is renamed."""
    model = parse(HEAD + """
agraph (float[2,3] x) => (float[2,3] y, float[2,3] z) {
  t = Constant<value = bool {1}>()
  y = If(t) <then_branch = g1 () => (float[2,3] a) <float[3] w = {10,20,30}> { a = Add(x, w) },
             else_branch = g2 () => (float[2,3] b) { b = Mul(x, x) }>
  z = If(t) <then_branch = h1 () => (float[2,3] c) <float[3] w = {1,2,3}> { c = Mul(y, w) },
             else_branch = h2 () => (float[2,3] d) { d = Mul(x, x) }>
}""")
    out = _o1(model)
    assert ops(out) == ["Add", "Mul"]
    assert len({i.name for i in out.graph.initializer}) == 2


def test_branch_reads_outer_values_and_local_intermediates():
    model = parse(HEAD + """
agraph (float[2,3] x, float[2,3] u) => (float[2,3] y) {
  h = Relu(x)
  t = Constant<value = bool {0}>()
  y = If(t) <then_branch = g1 () => (float[2,3] a) { a = Add(h, u) },
             else_branch = g2 () => (float[2,3] b) { m = Mul(h, u)
                                                     b = Sub(m, x) }>
}""")
    assert ops(_o1(model)) == ["Mul", "Relu", "Sub"]


def test_nested_if_inside_the_taken_branch_keeps_working():
    model = parse(HEAD + """
agraph (float[2,3] x, bool c) => (float[2,3] y) {
  t = Constant<value = bool {1}>()
  y = If(t) <then_branch = g1 () => (float[2,3] a) {
                 h = Abs(x)
                 a = If(c) <then_branch = i1 () => (float[2,3] p) { p = Add(h, x) },
                            else_branch = i2 () => (float[2,3] q) { q = Sub(h, x) }>
             },
             else_branch = g2 () => (float[2,3] b) { b = Mul(x, x) }>
}""")
    feeds = [{"x": np.random.default_rng(s).standard_normal((2, 3)).astype(np.float32), "c": np.array(s % 2 == 0)}
             for s in range(4)]
    result = graphopt.compile_model(model, level=1)
    check(result.model)
    assert_same_outputs(model, result.model, feeds=feeds)
    assert ops(result.model) == ["Abs", "If"]
    assert ops(result.model, nested=True) == ["Abs", "Add", "If", "Sub"]


def test_nested_constant_if_folds_too():
    model = parse(HEAD + """
agraph (float[2,3] x) => (float[2,3] y) {
  t = Constant<value = bool {1}>()
  y = If(t) <then_branch = g1 () => (float[2,3] a) {
                 f = Constant<value = bool {0}>()
                 a = If(f) <then_branch = i1 () => (float[2,3] p) { p = Add(x, x) },
                            else_branch = i2 () => (float[2,3] q) <float[3] w = {4,5,6}> { q = Sub(x, w) }>
             },
             else_branch = g2 () => (float[2,3] b) { b = Mul(x, x) }>
}""")
    assert ops(_o1(model)) == ["Sub"]


def test_condition_not_constant_is_left_alone():
    model = parse(HEAD + """
agraph (float[2,3] x, bool c) => (float[2,3] y) {
  y = If(c) <then_branch = g1 () => (float[2,3] a) { a = Add(x, x) },
             else_branch = g2 () => (float[2,3] b) { b = Mul(x, x) }>
}""")
    result = graphopt.compile_model(model, passes=["fold-constants", "fold-if"], level=0)
    check(result.model)
    assert ops(result.model) == ["If"]
    feeds = [{"x": np.ones((2, 3), np.float32) * s, "c": np.array(bool(s % 2))} for s in range(2)]
    assert_same_outputs(model, result.model, feeds=feeds)


def test_static_shape_chain_folds_the_if_away():
    model = parse(HEAD + """
agraph (float[2,3] x) => (float[2,3] y) {
  s = Shape(x)
  i = Constant<value = int64 {0}>()
  d = Gather(s, i)
  two = Constant<value = int64 {2}>()
  e = Equal(d, two)
  y = If(e) <then_branch = g1 () => (float[2,3] a) { a = Tanh(x) },
             else_branch = g2 () => (float[2,3] b) { b = Neg(x) }>
}""")
    assert ops(_o1(model)) == ["Tanh"]


def test_branch_whose_output_is_its_own_initializer():
    model = parse(HEAD + """
agraph (float[2,3] x) => (float[2,3] y, float[2,3] z) {
  t = Constant<value = bool {0}>()
  y, z = If(t) <then_branch = g1 () => (float[2,3] a, float[2,3] b) { a = Neg(x)
                                                                       b = Abs(x) },
                else_branch = g2 () => (float[2,3] k, float[2,3] c) <float[2,3] k = {1,2,3,4,5,6}> { c = Sin(x) }>
}""")
    out = _o1(model)
    assert ops(out) == ["Sin"]
    assert [o.name for o in out.graph.output] == ["y", "z"]


def test_constant_if_inside_a_loop_body():
    model = parse(HEAD + """
agraph (float[2,3] x) => (float[2,3] y) {
  n = Constant<value = int64 {3}>()
  go = Constant<value = bool {1}>()
  y = Loop(n, go, x) <body = body (int64 i, bool c, float[2,3] acc) => (bool c2, float[2,3] out) {
      c2 = Identity(c)
      t = Constant<value = bool {1}>()
      out = If(t) <then_branch = g1 () => (float[2,3] a) { a = Add(acc, x) },
                   else_branch = g2 () => (float[2,3] b) { b = Sub(acc, x) }>
  }>
}""")
    out = _o1(model)
    assert "If" not in ops(out, nested=True)
    assert "Loop" in ops(out)

