"""The rule engine: patterns, bindings, predicates, checks, trace, the driver's cap, register_rules."""
import numpy as np
import onnx
import pytest

import graphopt
from graphopt import ir
from graphopt.errors import LimitExceeded
from graphopt.compiler.pass_manager import REGISTRY
from graphopt.compiler.rewrite import Const, Op, Rule, Var, all_equal, apply_rules, match, _Fail
from passcheck import assert_same_outputs, check, ops, optimize, parse

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def rewrite(text, rules, trace=(), max_rewrites=None, opset=17):
    """Parse, apply `rules` to the main graph; returns (original, rewritten model, stats)."""
    model = parse(text)
    graph = ir.load(model)
    stats = apply_rules(graph, rules, opset, trace=trace, max_rewrites=max_rewrites)
    out = ir.export(graph, model)
    check(out)
    return model, out, stats


def double(m):  # x + x -> x * 2
    x = m["x"]
    return m.op("Mul", [x, m.constant(np.array(2, dtype=np.float32))])


ADD_SELF = Rule("add-self", Op("Add", Var("x"), Var("x")), double)


# ---------------------------------------------------------------- Var / Const

def test_var_bound_twice_must_be_the_same_value():
    model, out, stats = rewrite(H17 + """
        g (float[3] x, float[3] z) => (float[3] y, float[3] w) {
            y = Add(x, x)
            w = Add(x, z)
        }""", [ADD_SELF], trace=["add-self"])
    assert ops(out) == ["Add", "Mul"]
    assert stats.hits["add-self"] == 1
    assert stats.near_miss["add-self"][2] == "'x' bound to two different values"
    assert_same_outputs(model, out)


def test_var_twice_across_levels():
    # Mul(Neg(x), x): the x under Neg and the direct x must be one value
    rule = Rule("mul-neg-self", Op("Mul", Op("Neg", Var("x")), Var("x")),
                lambda m: m.op("Neg", [m.op("Mul", [m["x"], m["x"]])]))
    model, out, stats = rewrite(H17 + """
        g (float[3] x, float[3] z) => (float[3] y, float[3] w) {
            n = Neg(x)
            y = Mul(n, x)
            n2 = Neg(z)
            w = Mul(n2, x)
        }""", [rule])
    assert stats.hits["mul-neg-self"] == 1
    # y = Neg(Mul(x, x)); w = Mul(Neg(z), x) untouched
    assert ops(out) == ["Mul", "Mul", "Neg", "Neg"]
    assert_same_outputs(model, out)


def test_const_predicate():
    rule = Rule("mul-two", Op("Mul", Var("x"), Const("c", all_equal(2))), lambda m: m.op("Add", [m["x"], m["x"]]))
    model, out, stats = rewrite(H17 + """
        g (float[3] x, float[3] z) => (float[3] a, float[3] b, float[3] c)
          <float two = {2.0}, float three = {3.0}> {
            a = Mul(x, two)
            b = Mul(x, three)
            c = Mul(x, z)
        }""", [rule], trace=["mul-two"])
    assert stats.hits["mul-two"] == 1
    assert ops(out) == ["Add", "Mul", "Mul"]
    reason = stats.near_miss["mul-two"][2]
    assert "does not fit" in reason or "is not a constant" in reason
    assert_same_outputs(model, out)


def test_const_matches_constant_node_and_captures_its_value():
    seen = []

    def grab(m):
        seen.append(m.const("c").tolist())
        return m["x"]

    rule = Rule("add-c", Op("Add", Var("x"), Const("c")), grab)
    rewrite(H17 + """
        g (float[2] x) => (float[2] y) {
            c = Constant<value = float[2] {0.0, 0.0}>()
            a = Add(x, c)
            y = Neg(a)
        }""", [rule])
    assert seen == [[0.0, 0.0]]


def test_const_refuses_a_graph_input():
    rule = Rule("mul-c", Op("Mul", Var("x"), Const("c")), lambda m: m["x"])
    _, out, stats = rewrite(H17 + """
        g (float[3] x, float[3] z) => (float[3] y) { y = Mul(x, z) }""", [rule], trace=["mul-c"])
    assert stats.total == 0 and ops(out) == ["Mul"]
    assert "'z' is not a constant" == stats.near_miss["mul-c"][2]


# ---------------------------------------------------------------- commutative

def test_commutative_matches_both_orders():
    rule = Rule("add-zero", Op("Add", Var("x"), Const("c", all_equal(0)), commutative=True), lambda m: m["x"])
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) <float zero = {0.0}> {
            a = Add(x, zero)
            b = Add(zero, a)
            y = Neg(b)
        }""", [rule])
    assert stats.hits["add-zero"] == 2 and ops(out) == ["Neg"]
    assert_same_outputs(model, out)


def test_non_commutative_matches_one_order_only():
    rule = Rule("sub-zero", Op("Sub", Var("x"), Const("c", all_equal(0))), lambda m: m["x"])
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) <float zero = {0.0}> {
            a = Sub(zero, x)
            y = Neg(a)
        }""", [rule])
    assert stats.total == 0 and ops(out) == ["Neg", "Sub"]


def test_commutative_second_order_does_not_keep_bindings_of_the_failed_first():
    # first order binds x to Neg's input and fails on the Const; the second must start clean
    rule = Rule("r", Op("Mul", Op("Neg", Var("x")), Const("c", all_equal(1)), commutative=True),
                lambda m: m.op("Neg", [m["x"]]))
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) <float one = {1.0}> {
            n = Neg(x)
            y = Mul(one, n)
        }""", [rule])
    assert stats.hits["r"] == 1 and ops(out) == ["Neg"]
    assert_same_outputs(model, out)


# ---------------------------------------------------------------- attributes

def test_attribute_predicate_uses_schema_default():
    # Softmax's axis defaults to -1 (opset 13+): the plain node matches axis=-1, axis=0 does not
    rule = Rule("softmax-last", Op("Softmax", Var("x"), attrs={"axis": -1}), lambda m: m.op("LogSoftmax", [m["x"]]))
    model, out, stats = rewrite(H17 + """
        g (float[2,3] x) => (float[2,3] a, float[2,3] b, float[2,3] c) {
            a = Softmax(x)
            b = Softmax<axis = -1>(x)
            c = Softmax<axis = 0>(x)
        }""", [rule], trace=["softmax-last"])
    assert stats.hits["softmax-last"] == 2
    assert ops(out) == ["LogSoftmax", "LogSoftmax", "Softmax"]
    assert "axis=0" in stats.near_miss["softmax-last"][2]


def test_attribute_callable_predicate_with_default():
    # Gemm transB defaults to 0
    rule = Rule("gemm-no-transb", Op("Gemm", Var("a"), Var("b"), attrs={"transB": lambda v: not v}),
                lambda m: m.op("MatMul", [m["a"], m["b"]]))
    model, out, stats = rewrite(H17 + """
        g (float[2,3] x, float[3,4] w, float[4,3] wt) => (float[2,4] y, float[2,4] z) {
            y = Gemm(x, w)
            z = Gemm<transB = 1>(x, wt)
        }""", [rule])
    assert stats.hits["gemm-no-transb"] == 1
    assert ops(out) == ["Gemm", "MatMul"]
    assert_same_outputs(model, out)


def test_default_differs_between_opsets():
    # Softmax axis default is 1 before opset 13
    rule = Rule("softmax-axis1", Op("Softmax", Var("x"), attrs={"axis": 1}), lambda m: m.op("Neg", [m["x"]]))
    model = parse('<ir_version: 7, opset_import: ["" : 11]>' + """
        g (float[2,3] x) => (float[2,3] a) { a = Softmax(x) }""")
    graph = ir.load(model)
    assert apply_rules(graph, [rule], 11).hits["softmax-axis1"] == 1
    graph = ir.load(parse(H17 + "g (float[2,3] x) => (float[2,3] a) { a = Softmax(x) }"))
    assert apply_rules(graph, [rule], 17).total == 0


# ---------------------------------------------------------------- single_use / graph outputs

NEG_NEG = Rule("neg-neg", Op("Neg", Op("Neg", Var("x"))), lambda m: m["x"])


def test_single_use_refuses_inner_node_with_other_consumers():
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y, float[3] z) {
            n = Neg(x)
            r = Relu(x)
            nn = Neg(n)
            y = Add(nn, r)
            z = Abs(n)
        }""", [NEG_NEG], trace=["neg-neg"])
    assert stats.total == 0
    assert stats.near_miss["neg-neg"][2] == "'n' has other consumers"
    assert ops(out) == ["Abs", "Add", "Neg", "Neg", "Relu"]


def test_single_use_refuses_inner_node_that_is_a_graph_output():
    _, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] n, float[3] y) {
            n = Neg(x)
            y = Neg(n)
        }""", [NEG_NEG], trace=["neg-neg"])
    assert stats.total == 0 and stats.near_miss["neg-neg"][2] == "'n' is a graph output"


def test_single_use_false_allows_shared_inner_node():
    rule = Rule("neg-neg-shared", Op("Neg", Op("Neg", Var("x"), single_use=False)), lambda m: m["x"])
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y, float[3] z) {
            n = Neg(x)
            nn = Neg(n)
            y = Relu(nn)
            z = Abs(n)
        }""", [rule])
    assert stats.hits["neg-neg-shared"] == 1
    assert ops(out) == ["Abs", "Neg", "Relu"]  # the shared Neg stays for Abs
    assert_same_outputs(model, out)


def test_replacing_a_graph_output_keeps_its_name():
    # y = Neg(Neg(x)) with x an input: y must still be an output called y
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) {
            n = Neg(x)
            y = Neg(n)
        }""", [NEG_NEG])
    assert stats.hits["neg-neg"] == 1
    assert [o.name for o in out.graph.output] == ["y"] and ops(out) == ["Identity"]
    assert_same_outputs(model, out)


def test_chain_collapses_through_the_worklist():
    model, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Neg(a)
            c = Neg(b)
            d = Neg(c)
            y = Relu(d)
        }""", [NEG_NEG])
    assert stats.hits["neg-neg"] == 2 and ops(out) == ["Relu"]
    assert_same_outputs(model, out)


# ---------------------------------------------------------------- check / decline / trace

def test_check_reason_blocks_the_rewrite_and_is_traced():
    rule = Rule("neg-neg-never", NEG_NEG.pattern, NEG_NEG.rewrite, check=lambda m: "x is sacred")
    _, out, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) {
            n = Neg(x)
            nn = Neg(n)
            y = Relu(nn)
        }""", [rule], trace=["neg-neg-never"])
    assert stats.total == 0 and ops(out) == ["Neg", "Neg", "Relu"]
    depth, node, reason = stats.near_miss["neg-neg-never"]
    assert reason == "x is sacred"


def test_check_sees_the_match():
    seen = {}

    def check_fn(m):
        seen.update(root=m.root.op, inner=m.nodes["inner"].op, x=m["x"].name)
        return None

    rule = Rule("named", Op("Neg", Op("Neg", Var("x"), name="inner")), lambda m: m["x"], check=check_fn)
    rewrite(H17 + """
        g (float[3] x) => (float[3] y) {
            n = Neg(x)
            nn = Neg(n)
            y = Relu(nn)
        }""", [rule])
    assert seen == {"root": "Neg", "inner": "Neg", "x": "x"}


def test_rewrite_returning_none_declines():
    rule = Rule("decline", Op("Relu", Var("x")), lambda m: None)
    _, out, stats = rewrite(H17 + "g (float[3] x) => (float[3] y) { y = Relu(x) }", [rule], trace=["decline"])
    assert stats.total == 0 and stats.near_miss["decline"][2] == "rewrite declined"


def test_trace_reports_where_it_fired():
    model = parse(H17 + """
        g (float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
        }""")
    for node in model.graph.node:
        node.name = "node_" + node.output[0]
    graph = ir.load(model)
    stats = apply_rules(graph, [NEG_NEG], 17, trace=["neg-neg"])
    assert stats.trace == ["neg-neg: fired at 'node_b' (Neg)"]


def test_trace_names_an_unnamed_node_by_op_and_output():
    model = parse(H17 + """
        g (float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
        }""")
    for node in model.graph.node:
        node.name = ""  # exporters often leave node names empty
    stats = apply_rules(ir.load(model), [NEG_NEG], 17, trace=["neg-neg"])
    assert stats.trace == ["neg-neg: fired at 'Neg -> b' (Neg)"]


def test_trace_best_near_miss_is_the_deepest():
    # Neg(Neg(Neg(x))) on a two-Neg chain: at a it fails at once (x has no producer), at b one level
    # further down; b is the near-miss to report
    neg3 = Rule("neg3", Op("Neg", Op("Neg", Op("Neg", Var("x")))), lambda m: m.op("Neg", [m["x"]]))
    model = parse(H17 + """
        g (float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
        }""")
    for node in model.graph.node:
        node.name = "node_" + node.output[0]
    graph = ir.load(model)
    stats = apply_rules(graph, [neg3], 17, trace=["neg3"])
    assert stats.total == 0
    depth, node, reason = stats.near_miss["neg3"]
    assert node == "node_b" and reason == "'x' has no producer"


def test_near_miss_prefers_a_matched_op_over_a_wrong_op_at_the_same_depth():
    # at a: x has no producer (depth 1, no node); at b: the inner Neg matched but has another
    # consumer (depth 1, node found) -> b's reason is the one a user needs
    _, _, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y, float[3] z) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
            z = Abs(a)
        }""", [NEG_NEG], trace=["neg-neg"])
    assert stats.near_miss["neg-neg"][2] == "'a' has other consumers"


def test_untraced_rules_record_no_trace():
    _, _, stats = rewrite(H17 + """
        g (float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
        }""", [NEG_NEG])
    assert stats.hits["neg-neg"] == 1 and stats.trace == [] and stats.near_miss == {}


def test_trace_all():
    _, _, stats = rewrite(H17 + "g (float[3] x) => (float[3] y) { y = Neg(x) }", [NEG_NEG], trace=["all"])
    assert "neg-neg" in stats.near_miss


def test_match_never_mutates():
    model = parse(H17 + """
        g (float[3] x) => (float[3] y) {
            n = Neg(x)
            y = Neg(n)
        }""")
    graph = ir.load(model)
    root = graph.nodes[1]
    m = match(NEG_NEG.pattern, root, graph, 17)
    assert m["x"].name == "x" and [n.op for n in m.matched] == ["Neg", "Neg"]
    with pytest.raises(_Fail):
        match(Op("Relu", Var("x")), root, graph, 17)
    assert onnx.printer.to_text(ir.export(graph, model).graph) == onnx.printer.to_text(model.graph)


# ---------------------------------------------------------------- op alternatives, domains, extra inputs

def test_op_alternatives_and_domain():
    rule = Rule("act", Op(("Relu", "Sigmoid"), Var("x")), lambda m: m.op("Neg", [m["x"]]))
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.custom" : 1]>
        g (float[3] x) => (float[3] a, float[3] b, float[3] c) {
            a = Relu(x)
            b = Sigmoid(x)
            c = com.custom.Relu(x)
        }""", check=False)
    graph = ir.load(model)
    stats = apply_rules(graph, [rule], 17)
    assert stats.hits["act"] == 2
    assert sorted((n.op, n.domain or "") for n in graph.nodes) == [("Neg", ""), ("Neg", ""), ("Relu", "com.custom")]


def test_input_count_must_match_unless_extra_allowed():
    strict = Rule("clip1", Op("Clip", Var("x")), lambda m: m["x"])
    loose = Rule("clip-any", Op("Clip", Var("x"), allow_extra_inputs=True), lambda m: m.op("Relu", [m["x"]]))
    text = H17 + """
        g (float[3] x) => (float[3] y) <float lo = {0.0}> {
            c = Clip(x, lo)
            y = Neg(c)
        }"""
    _, _, stats = rewrite(text, [strict])
    assert stats.total == 0
    model, out, stats = rewrite(text, [loose])
    assert stats.hits["clip-any"] == 1 and ops(out) == ["Neg", "Relu"]
    assert_same_outputs(model, out)  # Clip(x, 0) == Relu(x)


# ---------------------------------------------------------------- the iteration cap

SIG_TO_TANH = Rule("sig-to-tanh", Op("Sigmoid", Var("x")), lambda m: m.op("Tanh", [m["x"]]))
TANH_TO_SIG = Rule("tanh-to-sig", Op("Tanh", Var("x")), lambda m: m.op("Sigmoid", [m["x"]]))
PING_PONG = H17 + """
    g (float[3] x) => (float[3] y) {
        s = Sigmoid(x)
        y = Relu(s)
    }"""


def test_ping_pong_rules_hit_the_cap():
    graph = ir.load(parse(PING_PONG))
    with pytest.raises(LimitExceeded, match="did not converge"):
        apply_rules(graph, [SIG_TO_TANH, TANH_TO_SIG], 17, max_rewrites=50)


def test_ping_pong_default_cap():
    graph = ir.load(parse(PING_PONG))
    with pytest.raises(LimitExceeded):
        apply_rules(graph, [SIG_TO_TANH, TANH_TO_SIG], 17)


# ---------------------------------------------------------------- register_rules

@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        REGISTRY.pop(name, None)


def test_register_rules_makes_a_pass(registered):
    registered.append("test-neg-neg")
    graphopt.register_rules("test-neg-neg", [NEG_NEG], level=2, doc="Neg(Neg(x)) -> x")
    info = REGISTRY["test-neg-neg"]
    assert info.level == 2 and info.doc == "Neg(Neg(x)) -> x"
    model = parse(H17 + """
        g (float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
        }""")
    result = optimize(model, ["test-neg-neg"], trace=["neg-neg"])
    assert ops(result.model) == ["Relu"]
    assert result.report.pass_totals()["test-neg-neg"]["stats"]["neg-neg"] == 1
    assert any("neg-neg: fired at" in line for line in result.report.trace)
    assert_same_outputs(model, result.model)


def test_registered_rules_reach_subgraphs(registered):
    registered.append("test-neg-neg")
    graphopt.register_rules("test-neg-neg", [NEG_NEG])
    model = parse(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            y = If(c) <then_branch = then_g () => (float[3] t) {
                            a = Neg(x)
                            b = Neg(a)
                            t = Relu(b)
                        }, else_branch = else_g () => (float[3] e) { e = Abs(x) }>
        }""")
    result = optimize(model, ["test-neg-neg"])
    assert ops(result.model, nested=True) == ["Abs", "If", "Relu"]
    assert_same_outputs(model, result.model,
                        feeds=[{"c": np.array(c), "x": np.array([1.0, -2.0, 3.0], np.float32)} for c in (True, False)])


def test_registered_near_miss_reaches_the_report(registered):
    registered.append("test-neg-neg")
    graphopt.register_rules("test-neg-neg", [NEG_NEG])
    result = optimize(parse(H17 + """
        g (float[3] x) => (float[3] y, float[3] n) {
            n = Neg(x)
            y = Neg(n)
        }"""), ["test-neg-neg"], trace=["neg-neg"])
    assert result.report.near_misses["neg-neg"][2] == "'n' is a graph output"


def test_registered_ping_pong_raises_through_compile(registered):
    registered.append("test-ping-pong")
    graphopt.register_rules("test-ping-pong", [SIG_TO_TANH, TANH_TO_SIG])
    with pytest.raises(LimitExceeded):
        optimize(parse(PING_PONG), ["test-ping-pong"])
