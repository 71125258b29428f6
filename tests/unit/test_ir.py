"""ir: load/save (external data and its safety), structure checks, toposort, replace_all_uses."""
import os

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
import pytest

from graphopt import ir
from graphopt.errors import GraphoptError, InvalidModel, UnsafePath
from passcheck import assert_same_outputs, check, ops, parse, run

H17 = '<ir_version: 8, opset_import: ["" : 17]>'
W = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def weight_model():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = onnx.helper.make_graph([node], "g", [x], [y], [onnx.numpy_helper.from_array(W, "w")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def external_model(folder, location, offset=None, length=None, data=W.tobytes()):
    """Write model.onnx whose weight 'w' lives at `location` (written here unless it exists)."""
    model = weight_model()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    target = folder / location
    if not os.path.isabs(location) and ".." not in location and not target.exists():
        target.write_bytes(data)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def weight_of(model):
    return onnx.numpy_helper.to_array(model.graph.initializer[0])


# ---------------------------------------------------------------- load

def test_load_from_path_and_from_modelproto(tmp_path):
    model = weight_model()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    for source in (path, str(path), model):
        graph = ir.load(source)
        assert isinstance(graph, gs.Graph)
        assert [n.op for n in graph.nodes] == ["MatMul"]
        np.testing.assert_array_equal(graph.nodes[0].inputs[1].values, W)


def test_external_data_resolved_relative_to_the_model_folder(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    path = external_model(folder, "weights.bin")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = ir.load_model(os.path.relpath(path, elsewhere))
    np.testing.assert_array_equal(weight_of(model), W)
    assert model.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT


def test_external_data_in_a_subfolder_with_offset_and_length(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "all.bin").write_bytes(b"\0" * 16 + W.tobytes() + b"\0" * 8)
    path = external_model(tmp_path, "data/all.bin", offset=16, length=W.nbytes)
    np.testing.assert_array_equal(weight_of(ir.load_model(path)), W)


def test_symlink_inside_the_folder_is_fine(tmp_path):
    (tmp_path / "real.bin").write_bytes(W.tobytes())
    os.symlink(tmp_path / "real.bin", tmp_path / "link.bin")
    path = external_model(tmp_path, "link.bin")
    np.testing.assert_array_equal(weight_of(ir.load_model(path)), W)


def test_external_data_absolute_path_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    (tmp_path / "m").mkdir()
    path = external_model(tmp_path / "m", str(secret))
    with pytest.raises(UnsafePath, match="'w'"):
        ir.load_model(path)


def test_external_data_dotdot_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "m").mkdir()
    path = external_model(tmp_path / "m", "../secret.bin")
    with pytest.raises(UnsafePath):
        ir.load_model(path)


def test_external_data_symlink_escaping_the_folder_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "m").mkdir()
    os.symlink(tmp_path / "secret.bin", tmp_path / "m" / "w.bin")
    path = external_model(tmp_path / "m", "w.bin")
    with pytest.raises(UnsafePath, match="outside"):
        ir.load_model(path)


def test_external_data_symlinked_folder_escaping_refused(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(W.tobytes())
    (tmp_path / "m").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "m" / "sub")
    path = external_model(tmp_path / "m", "sub/w.bin")
    with pytest.raises(UnsafePath):
        ir.load_model(path)


@pytest.mark.parametrize("offset,length", [(0, 10_000), (40, 48), (10_000, None), (-4, 16)])
def test_external_data_range_outside_the_file(tmp_path, offset, length):
    path = external_model(tmp_path, "w.bin", offset=offset, length=length)
    with pytest.raises(InvalidModel, match="outside|range|does not match"):
        ir.load_model(path)


def test_external_data_file_missing(tmp_path):
    path = external_model(tmp_path, "w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(InvalidModel, match="not found"):
        ir.load_model(path)


def test_external_data_in_a_subgraph_is_checked_too(tmp_path):
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "m").mkdir()
    inner = onnx.numpy_helper.from_array(W, "w")
    inner.ClearField("raw_data")
    inner.data_location = onnx.TensorProto.EXTERNAL
    inner.external_data.add(key="location", value="../secret.bin")
    then_g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["w"], ["t"])], "then_g", [],
                                    [onnx.helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [3, 4])], [inner])
    else_g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["e"])], "else_g", [],
                                    [onnx.helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [3, 4])])
    node = onnx.helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                      onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 4])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsafePath):
        ir.load_model(path)


def test_not_a_model(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidModel):
        ir.load_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModel):
        ir.load_model(empty)
    with pytest.raises(InvalidModel, match="no such file"):
        ir.load_model(tmp_path / "missing.onnx")
    with pytest.raises(InvalidModel, match="not a file"):
        ir.load_model(tmp_path)


def test_truncated_model(tmp_path):
    data = weight_model().SerializeToString()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel):
        ir.load_model(path)


# ---------------------------------------------------------------- structure checks

def cyclic_model():
    nodes = [onnx.helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             onnx.helper.make_node("Relu", ["a"], ["b"], name="second")]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                   [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def test_cycle_refused_on_load():
    with pytest.raises(InvalidModel, match="cycle"):
        ir.load(cyclic_model())


@pytest.mark.parametrize("nodes,outputs,message", [
    ([("Relu", ["nowhere"], ["y"])], ["y"], "undefined tensor 'nowhere'"),
    ([("Relu", ["x"], ["y"])], ["z"], "graph output 'z' is never produced"),
    ([("Relu", ["x"], ["y"]), ("Neg", ["x"], ["y"])], ["y"], "produced twice"),
    ([("Relu", ["x"], ["x"])], ["x"], "produced twice"),
])
def test_structure_errors(nodes, outputs, message):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node(op, i, o) for op, i, o in nodes], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in outputs])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(InvalidModel, match=message):
        ir.load(model)


def test_undefined_name_inside_a_subgraph_refused():
    model = parse(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            y = If(c) <then_branch = then_g () => (float[3] t) { t = Neg(ghost) },
                       else_branch = else_g () => (float[3] e) { e = Abs(x) }>
        }""", check=False)
    with pytest.raises(InvalidModel, match="ghost"):
        ir.load(model)


def test_toposort_detects_a_cycle():
    graph = ir.load(parse(H17 + """
        g (float[2] x) => (float[2] y) {
            a = Relu(x)
            y = Neg(a)
        }"""))
    relu, neg = graph.nodes
    relu.inputs[0] = neg.outputs[0]  # a = Relu(y), y = Neg(a)
    with pytest.raises(InvalidModel, match="cycle"):
        ir.toposort(graph)


def test_toposort_orders_and_respects_outer_reads_of_subgraphs():
    model = parse(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            a = Neg(x)
            y = If(c) <then_branch = then_g () => (float[3] t) { t = Identity(a) },
                       else_branch = else_g () => (float[3] e) { e = Identity(x) }>
        }""")
    graph = ir.load(model)
    graph.nodes.reverse()  # If before the Neg it reads inside its branch
    ir.toposort(graph)
    assert [n.op for n in graph.nodes] == ["Neg", "If"]
    out = ir.export(graph, model)
    check(out)
    assert_same_outputs(model, out, feeds=[{"c": np.array(True), "x": np.ones(3, np.float32)}])


def test_toposort_keeps_a_valid_order():
    graph = ir.load(parse(H17 + """
        g (float[2] x) => (float[2] y) {
            b = Neg(x)
            a = Relu(x)
            y = Add(a, b)
        }"""))
    before = [n.outputs[0].name for n in graph.nodes]
    ir.toposort(graph)
    assert [n.outputs[0].name for n in graph.nodes] == before


# ---------------------------------------------------------------- save

def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"old contents")
    ir.save(weight_model(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    np.testing.assert_array_equal(weight_of(ir.load_model(path)), W)


def test_save_graph_directly(tmp_path):
    graph = ir.load(weight_model())
    ir.save(graph, tmp_path / "g.onnx")
    check(onnx.load(str(tmp_path / "g.onnx")))


def test_save_to_missing_folder_is_refused(tmp_path):
    with pytest.raises(GraphoptError, match="does not exist"):
        ir.save(weight_model(), tmp_path / "nope" / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError):
        ir.save(weight_model(), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_with_external_data(tmp_path):
    big = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)  # 16 KiB, above the 1 KiB threshold
    model = weight_model()
    model.graph.initializer.append(onnx.numpy_helper.from_array(big, "big"))
    model.graph.node.append(onnx.helper.make_node("MatMul", ["big", "big"], ["z"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [64, 64]))
    path = tmp_path / "out.onnx"
    ir.save(model, path, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert path.stat().st_size < big.nbytes < (tmp_path / "out.onnx.data").stat().st_size + 1
    raw = onnx.load(str(path), load_external_data=False)
    big_proto = next(t for t in raw.graph.initializer if t.name == "big")
    assert big_proto.data_location == onnx.TensorProto.EXTERNAL
    assert {e.key: e.value for e in big_proto.external_data}["location"] == "out.onnx.data"
    loaded = ir.load_model(path)
    got = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    np.testing.assert_array_equal(got["big"], big)
    np.testing.assert_array_equal(got["w"], W)


def test_save_without_external_data_by_default_for_small_models(tmp_path):
    ir.save(weight_model(), tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


# ---------------------------------------------------------------- export

def test_export_prunes_unused_opsets_and_keeps_metadata():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.unused" : 1]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    model.producer_name = "me"
    out = ir.export(ir.load(model), model)
    assert [o.domain for o in out.opset_import] == [""]
    assert out.producer_name == "me" and out.ir_version == 8


def test_export_of_ir3_model_lists_initializers_as_inputs():
    model = weight_model()
    model.ir_version = 3
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", 8))
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3, 4]))
    out = ir.export(ir.load(model), model)
    assert out.ir_version == 3
    assert "w" in [i.name for i in out.graph.input]
    check(out)


# ---------------------------------------------------------------- replace_all_uses and helpers

def test_replace_all_uses_keeps_graph_output_name():
    # r = Relu(x); y = Neg(r): pointing the users of y at r makes r the output called y
    model = parse(H17 + """
        g (float[3] x) => (float[3] y) {
            r = Relu(x)
            y = Neg(r)
        }""")
    graph = ir.load(model)
    relu, neg = graph.nodes
    ir.replace_all_uses(graph, neg.outputs[0], relu.outputs[0])
    graph.nodes.remove(neg)
    ir.detach(neg)
    out = ir.export(graph, model)
    check(out)
    assert [o.name for o in out.graph.output] == ["y"] and ops(out) == ["Relu"]
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(run(out, {"x": x})["y"], np.maximum(x, 0))  # spec: Relu


def test_replace_all_uses_with_a_graph_input_adds_identity():
    model = parse(H17 + """
        g (float[3] x) => (float[3] y, float[3] z) {
            y = Neg(x)
            z = Abs(y)
        }""")
    graph = ir.load(model)
    neg = graph.nodes[0]
    ir.replace_all_uses(graph, neg.outputs[0], graph.inputs[0])
    graph.nodes.remove(neg)
    ir.detach(neg)
    out = ir.export(graph, model)
    check(out)
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert [i.name for i in out.graph.input] == ["x"]
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    got = run(out, {"x": x})
    np.testing.assert_array_equal(got["y"], x)
    np.testing.assert_array_equal(got["z"], np.abs(x))


def test_replace_all_uses_with_another_graph_output_keeps_both_names():
    model = parse(H17 + """
        g (float[3] x) => (float[3] a, float[3] b) {
            a = Relu(x)
            b = Neg(x)
        }""")
    graph = ir.load(model)
    relu, neg = graph.nodes
    ir.replace_all_uses(graph, neg.outputs[0], relu.outputs[0])
    graph.nodes.remove(neg)
    ir.detach(neg)
    out = ir.export(graph, model)
    check(out)
    assert [o.name for o in out.graph.output] == ["a", "b"]
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    got = run(out, {"x": x})
    np.testing.assert_array_equal(got["a"], np.maximum(x, 0))
    np.testing.assert_array_equal(got["b"], np.maximum(x, 0))


def test_replace_all_uses_reaches_subgraph_consumers():
    model = parse(H17 + """
        g (bool c, float[3] x) => (float[3] y) {
            a = Neg(x)
            b = Abs(x)
            y = If(c) <then_branch = then_g () => (float[3] t) { t = Mul(a, x) },
                       else_branch = else_g () => (float[3] e) { e = Identity(x) }>
        }""")
    graph = ir.load(model)
    neg, ab = graph.nodes[0], graph.nodes[1]
    ir.replace_all_uses(graph, neg.outputs[0], ab.outputs[0])
    out = ir.export(graph, model)
    then_g = next(a.g for a in out.graph.node[-1].attribute if a.name == "then_branch")
    assert then_g.node[0].input[0] == "b"


def test_const_value_and_shape_helpers():
    model = parse(H17 + """
        g (float[N,3] x) => (float[N,3] y) {
            c = Constant<value_float = 2.0>()
            i = Constant<value_ints = [1, 2]>()
            y = Mul(x, c)
        }""")
    graph = ir.load(model)
    tensors = graph.tensors()
    assert ir.const_value(tensors["c"]).dtype == np.float32 and float(ir.const_value(tensors["c"])) == 2.0
    assert ir.const_value(tensors["i"]).tolist() == [1, 2]
    assert ir.const_value(tensors["x"]) is None
    assert ir.static_shape(tensors["x"]) is None and ir.rank(tensors["x"]) == 2
    assert ir.producer(tensors["y"]).op == "Mul" and ir.consumers(tensors["x"])[0].op == "Mul"
    assert ir.is_graph_output(graph, tensors["y"]) and ir.is_graph_input(graph, tensors["x"])
    assert ir.numel((2, 3)) == 6 and ir.numel(()) == 1


def test_export_does_not_duplicate_weights_read_by_several_branches():
    model = parse(H17 + """
        g (bool c, float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> {
            y = If(c) <then_branch = then_g () => (float[2] t) { t = Mul(x, w) },
                       else_branch = else_g () => (float[2] e) { e = Sub(x, w) }>
        }""")
    out = ir.export(ir.load(model), model)
    count = len(out.graph.initializer) + sum(len(a.g.initializer) for a in out.graph.node[0].attribute)
    assert count == 1
    check(out)
    assert_same_outputs(model, out, feeds=[{"c": np.array(c), "x": np.array([3.0, 4.0], np.float32)}
                                           for c in (True, False)])


# ---------------------------------------------------------------- hardening: hard links, limits, protecting the input

def test_hard_linked_external_data_needs_allow_hardlinks(tmp_path):
    from graphopt.ir.limits import Limits
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "w.bin").write_bytes(W.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    os.link(outside / "w.bin", folder / "w.bin")
    path = external_model(folder, "w.bin")
    with pytest.raises(UnsafePath, match="hard link"):
        ir.load_model(path)
    np.testing.assert_array_equal(weight_of(ir.load_model(path, limits=Limits(allow_hardlinks=True))), W)


def test_model_bytes_load_and_refuse_external_data(tmp_path):
    assert ir.load_model(weight_model().SerializeToString()).graph.node[0].op_type == "MatMul"
    path = external_model(tmp_path, "w.bin")
    with pytest.raises(UnsafePath, match="bytes"):
        ir.load_model(path.read_bytes())


def test_save_refuses_to_replace_protected_files(tmp_path):
    from graphopt.errors import UsageError
    path = external_model(tmp_path, "out.onnx.data")  # the input's weights sit where out.onnx's data would go
    model = ir.load_model(path)
    protect = ir.input_files(path)
    assert protect == {path.resolve(), (tmp_path / "out.onnx.data").resolve()}
    with pytest.raises(UsageError, match="overwrite"):
        ir.save(model, tmp_path / "out.onnx", external_data=True, protect=protect)
    with pytest.raises(UsageError, match="overwrite"):
        ir.save(model, path, protect=protect)
    assert (tmp_path / "out.onnx.data").read_bytes() == W.tobytes()
    assert not (tmp_path / "out.onnx").exists()
    ir.save(model, tmp_path / "out.onnx", external_data=False, protect=protect)  # no data file: fine
    np.testing.assert_array_equal(weight_of(ir.load_model(tmp_path / "out.onnx")), W)


def test_limits_are_configurable():
    from graphopt.errors import LimitExceeded
    from graphopt.ir.limits import Limits
    model = weight_model()
    with pytest.raises(LimitExceeded, match="elements"):
        ir.load_model(model, limits=Limits(max_elements=10))
    with pytest.raises(LimitExceeded, match="rank"):
        ir.load_model(model, limits=Limits(max_rank=1))
    with pytest.raises(LimitExceeded, match="nodes"):
        ir.load_model(model, limits=Limits(max_nodes=0))
    ir.load_model(model, limits=Limits(max_elements=12, max_rank=2, max_nodes=1))


def test_fold_total_bytes_stops_folding_but_not_the_compile():
    import graphopt
    from graphopt.ir.limits import Limits
    model = parse(H17 + """
        g (float[4] x) => (float[4] y) <float[4] a = {1.0, 2.0, 3.0, 4.0}> {
            b = Neg(a)
            c = Abs(b)
            y = Add(x, c)
        }""")
    everything = graphopt.compile(model, level=1)
    assert ops(everything) == ["Add"]
    capped = graphopt.compile(model, level=1, limits=Limits(fold_total_bytes=16))  # room for one 16-byte result
    assert ops(capped) == ["Abs", "Add"]
    for out in (everything, capped):
        check(out)
        assert_same_outputs(model, out)


@pytest.mark.slow
def test_model_over_2gb_compiles_and_round_trips(tmp_path):
    """9 weights of 256 MiB in one external file (2.25 GiB): compile, save (external data beside the
    output), run the result in ONNX Runtime and compare with NumPy on the same weights."""
    import onnxruntime as ort

    import graphopt
    k, m, count = 4096, 16384, 9
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, k)).astype(np.float32)
    expected = np.zeros((1, m), np.float64)
    inits, nodes, total = [], [], None
    with open(tmp_path / "weights.bin", "wb") as f:
        for i in range(count):
            w = (rng.standard_normal((k, m), np.float32) * np.float32(0.01))
            expected += (x.astype(np.float64) @ w.astype(np.float64))
            t = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=[k, m],
                                 data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", "weights.bin"), ("offset", str(f.tell())), ("length", str(w.nbytes))):
                t.external_data.add(key=key, value=value)
            f.write(w.tobytes())
            inits.append(t)
            nodes.append(onnx.helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"]))
            total = f"p{i}" if total is None else (nodes.append(onnx.helper.make_node("Add", [total, f"p{i}"], [f"s{i}"])) or f"s{i}")
            del w
    nodes[-1].output[0] = "y"
    graph = onnx.helper.make_graph(nodes, "big", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, k])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, m])], inits)
    src = tmp_path / "big.onnx"
    src.write_bytes(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
                    .SerializeToString())
    assert (tmp_path / "weights.bin").stat().st_size > 2**31
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = graphopt.compile(src, level=2)
    ir.save(result, out_dir / "big.opt.onnx")
    del result
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.opt.onnx", "big.opt.onnx.data"]
    assert (out_dir / "big.opt.onnx").stat().st_size < 1 << 20
    sess = ort.InferenceSession(str(out_dir / "big.opt.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    reloaded = ir.load_model(out_dir / "big.opt.onnx")
    assert sum(len(t.raw_data) for t in reloaded.graph.initializer) == count * k * m * 4


def test_minus_one_dims_mean_unknown_as_exporters_write_them(tmp_path):
    """paddle2onnx and tf2onnx write -1 for an unknown dim and ONNX Runtime runs such models: graphopt
    must accept them (as unknown dims, never as a size), in compile and in Session, without touching
    the caller's proto. Other negative dims stay invalid (tests/hostile)."""
    import graphopt
    import onnxruntime as ort
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("Identity", ["r"], ["y"])]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    out = graphopt.compile(model, level=2)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1  # caller's proto unchanged
    dim0 = out.graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim0.HasField("dim_value")
    feed = {"x": np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(graphopt.Session(model).run(None, feed)[0], want)
