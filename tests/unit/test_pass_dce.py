"""dce: remove nodes whose results reach no graph output."""
import numpy as np
import onnx

from passcheck import check, check_pass, hits, ops, optimize, parse, run, subgraph

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def test_removes_dead_nodes_and_chains():
    # input: y = Relu(x); dead1 = Neg(x); dead2 = Abs(dead1)   expected: y = Relu(x)
    result = check_pass(HEADER + """
        g (float[2,3] x) => (float[2,3] y) {
            y = Relu(x)
            dead1 = Neg(x)
            dead2 = Abs(dead1)
        }""", ["dce"], expect_ops=["Relu"])
    assert hits(result, "dce")["nodes_removed"] == 2


def test_dead_initializer_user_removed_and_initializer_dropped():
    # input: y = Relu(x); dead = Add(x, w)   expected: y = Relu(x), no initializer left
    result = check_pass(HEADER + """
        g (float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> {
            y = Relu(x)
            dead = Add(x, w)
        }""", ["dce"], expect_ops=["Relu"])
    assert len(result.model.graph.initializer) == 0


def test_never_removes_graph_outputs():
    # every node feeds an output (one through nothing else): nothing to remove
    result = check_pass(HEADER + """
        g (float[2] x) => (float[2] a, float[2] b) {
            a = Relu(x)
            b = Neg(a)
        }""", ["dce"], expect_ops=["Neg", "Relu"])
    assert not result.report.pass_totals()["dce"]["stats"].get("nodes_removed")


def test_output_kept_while_its_dead_consumer_goes():
    # input: a = Relu(x) [output]; dead = Neg(a)   expected: a = Relu(x)
    check_pass(HEADER + """
        g (float[2] x) => (float[2] a) {
            a = Relu(x)
            dead = Neg(a)
        }""", ["dce"], expect_ops=["Relu"])


def test_multi_output_node_kept_when_one_output_is_used():
    # TopK's indices are unused but its values are an output: TopK stays
    check_pass(HEADER + """
        g (float[2,4] x) => (float[2,2] v) <int64[1] k = {2}> {
            v, i = TopK(x, k)
            dead = Cast<to = 1>(i)
        }""", ["dce"], expect_ops=["TopK"])


def test_removes_unused_custom_opset_import():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.custom" : 1]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    result = optimize(model, ["dce"])
    assert [o.domain for o in result.model.opset_import] == [""]
    check(result.model)


def test_removes_dead_custom_op_and_its_opset_import():
    # ORT cannot run com.custom::Foo, so the expected value comes from the spec: Relu(x) = max(x, 0)
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.custom" : 1]>
        g (float[3] x) => (float[3] y) {
            y = Relu(x)
            dead = com.custom.Foo(x)
        }""", check=False)
    result = optimize(model, ["dce"])
    assert ops(result.model) == ["Relu"]
    assert [o.domain for o in result.model.opset_import] == [""]
    check(result.model)
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    np.testing.assert_array_equal(run(result.model, {"x": x})["y"], np.maximum(x, 0))


def test_keeps_used_custom_opset_import():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.custom" : 1]>
        g (float[3] x) => (float[3] y) { y = com.custom.Foo(x) }""", check=False)
    result = optimize(model, ["dce"])
    assert {o.domain for o in result.model.opset_import} == {"", "com.custom"}


IF_MODEL = HEADER + """
    g (bool c, float[3] x) => (float[3] y) {
        a = Neg(x)
        b = Abs(x)
        unused = Sigmoid(x)
        y = If(c) <then_branch = then_g () => (float[3] t) {
                        inner_dead = Relu(x)
                        t = Identity(a)
                    }, else_branch = else_g () => (float[3] e) {
                        e = Mul(b, x)
                    }>
    }"""


def test_reaches_inside_if_and_keeps_outer_values_used_only_inside():
    # a and b are read only inside the branches: they must stay; Sigmoid and inner Relu are dead
    result = check_pass(IF_MODEL, ["dce"], expect_ops=["Abs", "If", "Neg"],
                        nested_ops=["Abs", "If", "Neg", "Identity", "Mul"],
                        feeds=[{"c": np.array(c), "x": np.array([-1.0, 2.0, -3.0], np.float32)}
                               for c in (True, False)])
    assert ops(subgraph(result.model, "If", "then_branch")) == ["Identity"]
    assert hits(result, "dce")["nodes_removed"] == 2


def test_dead_if_removed_with_everything_only_it_used():
    # the If result is unused: the If, and a/b that only its branches read, are all dead
    model = parse(HEADER + """
        g (bool c, float[3] x) => (float[3] z) {
            a = Neg(x)
            z = Relu(x)
            y = If(c) <then_branch = then_g () => (float[3] t) { t = Identity(a) },
                       else_branch = else_g () => (float[3] e) { e = Identity(x) }>
        }""")
    result = optimize(model, ["dce"])
    assert ops(result.model, nested=True) == ["Relu"]
    check(result.model)


def test_nested_if_outer_value_used_two_levels_down():
    model_text = HEADER + """
        g (bool c, float[3] x) => (float[3] y) {
            deep = Neg(x)
            y = If(c) <then_branch = t1 () => (float[3] t) {
                            t = If(c) <then_branch = t2 () => (float[3] u) { u = Identity(deep) },
                                       else_branch = e2 () => (float[3] v) { v = Identity(x) }>
                        }, else_branch = e1 () => (float[3] e) { e = Identity(x) }>
        }"""
    check_pass(model_text, ["dce"], expect_ops=["If", "Neg"],
               feeds=[{"c": np.array(c), "x": np.array([1.0, -2.0, 3.0], np.float32)} for c in (True, False)])


def test_opset_import_ai_onnx_kept_and_model_metadata_kept():
    model = parse(HEADER + """
        g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    model.producer_name = "unit-test"
    onnx.helper.set_model_props(model, {"author": "me"})
    result = optimize(model, ["dce"])
    assert result.model.producer_name == "unit-test"
    assert {p.key: p.value for p in result.model.metadata_props} == {"author": "me"}
