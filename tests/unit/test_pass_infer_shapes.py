"""infer-shapes: ONNX shape inference recorded on the IR; never a rewrite, symbolic dims kept."""
import numpy as np
import onnx
import onnx_graphsurgeon as gs

import graphopt
from graphopt import ir
from graphopt.pipeline import load_builtin_passes
from passcheck import assert_same_outputs, check, check_pass, hits, ops, optimize, parse, subgraph

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def value_infos(model_or_graph):
    graph = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    out = {}
    for vi in list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        out[vi.name] = (tt.elem_type, [d.dim_param or d.dim_value for d in tt.shape.dim]
                        if tt.HasField("shape") else None)
    return out


def run_on_ir(model, passes=("infer-shapes",)) -> gs.Graph:
    load_builtin_passes()
    graph = ir.load(model)
    graphopt.PassManager(level=0, passes=list(passes)).run(graph, model)
    return graph


def tensor(graph, name):
    return graph.tensors()[name]


def test_annotates_without_changing_the_graph():
    result = check_pass(H17 + """
        g (float[2,3] x) => (float[3,2] y) {
            r = Relu(x)
            t = Transpose(r)
            y = Neg(t)
        }""", ["infer-shapes"], expect_ops=["Neg", "Relu", "Transpose"])
    info = value_infos(result.model)
    assert info["r"] == (onnx.TensorProto.FLOAT, [2, 3])
    assert info["t"] == (onnx.TensorProto.FLOAT, [3, 2])
    recs = [r for r in result.report.passes if r["name"] == "infer-shapes"]
    assert recs and not any(r["changed"] for r in recs)  # shapes are facts, not rewrites
    assert hits(result, "infer-shapes")["values_annotated"] >= 2


def test_records_shape_and_dtype_on_the_ir():
    graph = run_on_ir(parse(H17 + """
        g (float[2,3] x) => (int64[2,3] y) {
            r = Relu(x)
            y = Cast<to = 7>(r)
        }"""))
    r = tensor(graph, "r")
    assert list(r.shape) == [2, 3] and np.dtype(r.dtype) == np.float32
    assert ir.static_shape(r) == (2, 3)


def test_symbolic_dims_stay_symbolic():
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,6] y) {
            r = Relu(x)
            y = Concat<axis = 1>(r, r)
        }""")
    graph = run_on_ir(model)
    r = tensor(graph, "r")
    assert list(r.shape) == ["N", 3]
    assert ir.static_shape(r) is None and ir.rank(r) == 2
    result = optimize(model, ["infer-shapes"])
    assert value_infos(result.model)["r"] == (onnx.TensorProto.FLOAT, ["N", 3])
    check(result.model)
    assert_same_outputs(model, result.model, feeds=[{"x": np.ones((n, 3), np.float32)} for n in (1, 3)])


def test_large_initializers_still_give_shapes():
    # a 64x64 float weight (16 KiB) is passed to inference as a typed input, not its bytes
    w = ", ".join(["0.5"] * 64 * 64)
    model = parse(H17 + f"""
        g (float[2,64] x) => (float[2,64] y) <float[64,64] w = {{{w}}}> {{
            m = MatMul(x, w)
            y = Relu(m)
        }}""")
    graph = run_on_ir(model)
    assert list(tensor(graph, "m").shape) == [2, 64]
    assert isinstance(tensor(graph, "w"), gs.Constant)


def test_data_propagation_through_shape_chain():
    # Reshape(x, Concat(Shape(x)[0], [-1])) on [2,3,4] gives [2,12]: needs data propagation
    graph = run_on_ir(parse(H17 + """
        g (float[2,3,4] x) => (float[2,12] y) <int64[1] zero = {0}, int64[1] m1 = {-1}> {
            s = Shape(x)
            d = Gather(s, zero)
            t = Concat<axis = 0>(d, m1)
            r = Reshape(x, t)
            y = Relu(r)
        }"""))
    assert list(tensor(graph, "r").shape) == [2, 12]


def test_inside_if_branches():
    model = parse(H17 + """
        g (bool c, float[2,3] x) => (float[2,3] y) {
            y = If(c) <then_branch = then_g () => (float[2,3] t) {
                            n = Neg(x)
                            t = Relu(n)
                        }, else_branch = else_g () => (float[2,3] e) { e = Abs(x) }>
        }""")
    graph = run_on_ir(model)
    then_g = next(n for n in graph.nodes if n.op == "If").attrs["then_branch"]
    n = next(t for t in then_g.tensors().values() if t.name == "n")
    assert list(n.shape) == [2, 3]
    result = optimize(model, ["infer-shapes"])
    assert ops(result.model, nested=True) == ["Abs", "If", "Neg", "Relu"]
    check(result.model)
    assert value_infos(subgraph(result.model, "If", "then_branch"))["n"] == (onnx.TensorProto.FLOAT, [2, 3])


def test_unknown_custom_op_is_tolerated():
    # inference cannot see through com.custom.Foo: no error, the values after it stay unknown
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.custom" : 1]>
        g (float[2,3] x) => (float[2,3] y) {
            r = Relu(x)
            f = com.custom.Foo(r)
            y = Neg(f)
        }""", check=False)
    graph = run_on_ir(model)
    assert list(tensor(graph, "r").shape) == [2, 3]
    assert tensor(graph, "f").shape is None
    assert ops(optimize(model, ["infer-shapes"]).model) == ["Foo", "Neg", "Relu"]


def test_known_shapes_are_not_made_less_known():
    # the model declares r as [2,3]; inference from a symbolic input would only know [N,3]
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,3] y) {
            r = Relu(x)
            y = Neg(r)
        }""")
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [2, 3]))
    graph = run_on_ir(model)
    assert list(tensor(graph, "r").shape) == [2, 3]


def test_second_run_learns_nothing_new():
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,3] y) {
            r = Relu(x)
            y = Neg(r)
        }""")
    result = optimize(model, ["infer-shapes", "eliminate-noops"], max_iterations=3)
    recs = [r for r in result.report.passes if r["name"] == "infer-shapes"]
    assert len(recs) == 1  # nothing changed, so the pipeline ran once


SLICED_TO_SEQUENCE = H17 + """
    g (float[B,S,4] x) => (float[B,S,4] y) <int64[1,16] buf = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                            int64 one = {1}, int64[1] zero1 = {0}, int64[1] axes = {AXIS}> {
        shp = Shape(x)
        seq = Gather<axis = 0>(shp, one)
        seq_end = Unsqueeze(seq, zero1)
        ids = Slice(buf, zero1, seq_end, axes)
        f = Cast<to = 1>(ids)
        u = Unsqueeze(f, axes2)
        s = Add(x, u)
        y = Relu(s)
    }"""


def sliced_to_sequence(axis: int):
    return parse(SLICED_TO_SEQUENCE.replace("{AXIS}", f"{{{axis}}}").replace(
        "axes2)", "last)").replace("int64 one = {1},", "int64 one = {1}, int64[1] last = {2},"))


def test_slice_with_computed_end_keeps_the_axes_it_does_not_cut():
    # buf[:, :seq] is [1, ?]: ONNX alone infers [unk, unk], and x + u then gets an unk batch dim too
    model = sliced_to_sequence(axis=1)
    graph = run_on_ir(model)
    ids, s = tensor(graph, "ids"), tensor(graph, "s")
    assert ids.shape[0] == 1 and not isinstance(ids.shape[1], int)  # the cut axis stays unknown
    assert s.shape[0] == "B" and s.shape[2] == 4
    result = optimize(model, ["infer-shapes"])
    check(result.model)
    assert_same_outputs(model, result.model, feeds=[{"x": np.ones((2, n, 4), np.float32)} for n in (1, 5)])


def test_slice_refinement_never_names_the_cut_axis():
    # slicing axis 0 of [1, 16] to seq: the length is min(seq, 1), not knowable; axis 1 keeps 16
    model = sliced_to_sequence(axis=0)
    graph = run_on_ir(model)
    ids = tensor(graph, "ids")
    assert not isinstance(ids.shape[0], int) and ids.shape[0] not in ("B", "S") and ids.shape[1] == 16


def test_a_named_dim_replaces_an_invented_unk_dim():
    # r was recorded as [unk__9, 3] (an earlier run's invention); inference from x: [N, 3] names it
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,3] y) {
            r = Relu(x)
            y = Neg(r)
        }""")
    graph = ir.load(model)
    tensor(graph, "r").shape = ["unk__9", 3]
    load_builtin_passes()
    graphopt.PassManager(level=0, passes=["infer-shapes"]).run(graph, model)
    assert list(tensor(graph, "r").shape) == ["N", 3]


def test_values_become_inferable_after_folding():
    # the Slice end is ReduceMax of a constant: no data propagation, so s is [?] until fold-constants
    # turns the end into an initializer; the next infer-shapes run (no new node) must learn s = [2]
    model = parse(H17 + """
        g (float[4] x) => (float[2] y) <int64[2] ends = {2, 1}, int64[1] zero = {0}> {
            e = ReduceMax<keepdims = 1>(ends)
            s = Slice(x, zero, e)
            y = Relu(s)
        }""")
    graph = ir.load(model)
    load_builtin_passes()
    graphopt.PassManager(level=0, passes=["infer-shapes", "fold-constants"]).run(graph, model)
    assert list(tensor(graph, "s").shape) == [2]
    result = optimize(model, ["infer-shapes", "fold-constants"])
    check(result.model)
    assert_same_outputs(model, result.model)
