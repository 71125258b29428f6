"""Builds the hostile corpus: crafted bad models, each with the error class graphopt must raise.

    python tests/hostile/build_corpus.py FOLDER      # writes FOLDER/<case>/model.onnx (+ data files)

Each case lives in its own folder so external-data cases can point outside it (`../outside/...`).
Nothing is committed: tests build the corpus into their temp folder.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InvalidModel, LimitExceeded, UnsafePath
from graphopt.ir.limits import Limits

BIG = 10**12  # elements: 4 TB of float32
OPSET = [helper.make_opsetid("", 18)]


@dataclass
class Case:
    name: str
    path: Path
    error: type
    limits: Limits = field(default_factory=Limits)
    cli_args: tuple = ()
    session: bool = True  # graphopt.Session must refuse it too (False: only compile can tell)


def _model(nodes, inputs, outputs, inits=(), functions=(), opsets=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=list(opsets), functions=list(functions), ir_version=8)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _relu_model():
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [2, 3])], [_vi("y", [2, 3])])


def _weight_model(dims=(3, 4)):
    """y = x @ w with w as an external-data initializer (its entries are filled in per case)."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims), data_location=TensorProto.EXTERNAL)
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  [_vi("x", [2, dims[0]])], [_vi("y", [2, dims[1]])], [w])


def _external(model, **entries):
    t = model.graph.initializer[0]
    for k, v in entries.items():
        t.external_data.add(key=k, value=str(v))
    return model


def _nested_if(depth: int) -> onnx.ModelProto:
    """If inside If inside If ... `depth` levels (then-branches nest, else-branches are a leaf)."""
    def leaf(out):
        return helper.make_graph([helper.make_node("Identity", ["x"], [out])], f"leaf_{out}", [], [_vi(out, [2])])
    branch = leaf("y0")
    for level in range(1, depth + 1):
        out = f"y{level}"
        node = helper.make_node("If", ["c"], [out], then_branch=branch, else_branch=leaf(f"e{level}"), name=f"if{level}")
        branch = helper.make_graph([node], f"level{level}", [], [_vi(out, [2])])
    top = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=leaf("e_top"), name="if_top")
    return _model([top], [_vi("c", [], TensorProto.BOOL), _vi("x", [2])], [_vi("y", [2])])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2), written by hand."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _nested_if_bytes(depth: int) -> bytes:
    """A serialized ModelProto nesting If `depth` deep: too deep for the protobuf library to build,
    so the bytes are written field by field (GraphProto.node=1, NodeProto.attribute=5, ...)."""
    def body(node: bytes, out: str, inputs=b"") -> bytes:
        return _field(1, node) + inputs + _field(12, _vi(out, [2]).SerializeToString())

    graph = body(_field(1, b"x") + _field(2, b"y0") + _field(4, b"Identity"), "y0")
    for level in range(1, depth + 1):
        attr = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)  # type=GRAPH, g=graph
        node = _field(1, b"c") + _field(2, f"y{level}".encode()) + _field(4, b"If") + _field(5, attr)
        inputs = b"" if level < depth else b"".join(
            _field(11, v.SerializeToString()) for v in (_vi("c", [], TensorProto.BOOL), _vi("x", [2])))
        graph = body(node, f"y{level}", inputs)
    header = _model([], [], []).SerializeToString()  # ir_version and opset_import
    return header + _field(7, graph)  # ModelProto.graph = 7 (the last one parsed wins)


def _function(name, calls, domain="local"):
    node = helper.make_node(calls, ["a"], ["b"], domain=domain)
    return helper.make_function(domain, name, ["a"], ["b"], [node], [helper.make_opsetid("", 18)])


def _size_model(op, inits, inputs=(), out_rank=1, attrs=None):
    node = helper.make_node(op, list(inputs), ["y"], name=op.lower(), **(attrs or {}))
    graph_inputs = [_vi("x", [1, 1, 1, 1])] if "x" in inputs else []
    return _model([node], graph_inputs, [_vi("y", None)], inits)


def build(folder: Path) -> list[Case]:
    folder = Path(folder)
    outside = folder / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.bin"
    secret.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    cases: list[Case] = []

    def add(name, model_or_bytes, error, data: dict | None = None, **kw) -> Case:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "model.onnx"
        payload = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
        path.write_bytes(payload)
        for fname, content in (data or {}).items():
            (d / fname).write_bytes(content)
        case = Case(name, path, error, **kw)
        cases.append(case)
        return case

    good = _relu_model().SerializeToString()
    weights = np.arange(12, dtype=np.float32).tobytes()
    # --- not a model
    add("not_protobuf", b"\x89PNG\r\n\x1a\n this is an image, not a model" * 4, InvalidModel)
    add("truncated_protobuf", good[: len(good) // 2], InvalidModel)
    add("empty_file", b"", InvalidModel)
    sparse = add("model_file_over_2gb", good, InvalidModel, session=False)  # Session would read all 3 GiB
    with open(sparse.path, "r+b") as f:
        f.truncate(3 << 30)  # a sparse file: no disk used, but reading it whole would take 3 GiB
    # --- structure
    add("cycle", _model([helper.make_node("Relu", ["b"], ["a"], name="r1"), helper.make_node("Neg", ["a"], ["b"], name="r2")],
                        [], [_vi("a", [2])]), InvalidModel)
    add("duplicate_output", _model([helper.make_node("Relu", ["x"], ["y"], name="r1"), helper.make_node("Neg", ["x"], ["y"], name="r2")],
                                   [_vi("x", [2])], [_vi("y", [2])]), InvalidModel)
    add("duplicate_graph_output", _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2]), _vi("y", [2])]),
        InvalidModel)
    add("undefined_input", _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [_vi("x", [2])], [_vi("y", [2])]),
        InvalidModel)
    add("output_never_produced", _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("z", [2])]), InvalidModel)
    # --- tensors that lie about themselves
    bad_raw = numpy_helper.from_array(np.zeros((3, 4), np.float32), "w")
    bad_raw.raw_data = bad_raw.raw_data[:20]
    add("raw_data_size_mismatch", _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 4])], [bad_raw]),
        InvalidModel)
    short = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 4], float_data=[1.0] * 5)
    add("typed_data_count_mismatch", _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 4])], [short]),
        InvalidModel)
    odd = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    odd.data_type = 99
    add("unknown_dtype_initializer", _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], [odd]),
        InvalidModel)
    add("unknown_dtype_input", _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4], 77)], [_vi("y", [4])]), InvalidModel)
    neg = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    neg.dims[:] = [-4]
    add("negative_dim_initializer", _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [4])], [_vi("y", [4])], [neg]),
        InvalidModel)
    add("negative_dim_input", _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2, -3])], [_vi("y", [2, 3])]), InvalidModel)
    # --- sizes: declared, stored, and what ops would create
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[BIG])
    add("huge_declared_initializer", _model([helper.make_node("Relu", ["w"], ["y"])], [], [_vi("y", [BIG])], [huge]), LimitExceeded)
    add("huge_declared_input", _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [10**6, 10**6])], [_vi("y", None)]), LimitExceeded)
    add("rank_100", _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1] * 100)], [_vi("y", None)]), LimitExceeded)
    add("constantofshape_1e12", _size_model("ConstantOfShape", [_i64("s", [10**6, 10**6])], ["s"]), LimitExceeded)
    add("expand_1e12", _size_model("Expand", [_i64("s", [1, 1, 10**6, 10**6])], ["x", "s"]), LimitExceeded)
    add("tile_1e12", _size_model("Tile", [_i64("r", [1, 1, 10**6, 10**6])], ["x", "r"]), LimitExceeded)
    add("range_1e12", _size_model("Range", [numpy_helper.from_array(np.array(0, np.int64), "a"),
                                            numpy_helper.from_array(np.array(BIG, np.int64), "b"),
                                            numpy_helper.from_array(np.array(1, np.int64), "d")], ["a", "b", "d"]), LimitExceeded)
    add("resize_huge_scales", _size_model("Resize", [numpy_helper.from_array(np.array([1, 1, 1e6, 1e6], np.float32), "sc")],
                                          ["x", "", "sc"]), LimitExceeded)
    add("resize_huge_sizes", _size_model("Resize", [_i64("sz", [1, 1, 10**6, 10**6])], ["x", "", "", "sz"]), LimitExceeded)
    shape_chain = _model([helper.make_node("Concat", ["a", "b"], ["s"], axis=0, name="cat"),
                          helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")],
                         [], [_vi("y", None)], [_i64("a", [10**6]), _i64("b", [10**6])])
    add("constantofshape_computed_1e12", shape_chain, LimitExceeded, session=False)  # known only after shape inference
    add("nested_if_over_max_depth", _nested_if(12), LimitExceeded, limits=Limits(max_depth=8),
        cli_args=("--max-depth", "8"), session=False)
    add("nested_if_60_levels", _nested_if_bytes(60), InvalidModel)  # protobuf refuses past ~31 levels
    add("nested_if_5000_levels", _nested_if_bytes(5000), InvalidModel)  # deeper than protobuf itself parses
    add("too_many_nodes", _model([helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(200)],
                                 [_vi("t0", [2])], [_vi("t200", [2])]), LimitExceeded, limits=Limits(max_nodes=100),
        cli_args=("--max-nodes", "100"), session=False)
    add("time_limit", _relu_model(), LimitExceeded, limits=Limits(time_limit=1e-9), cli_args=("--time-limit", "1e-9"),
        session=False)
    # --- local functions that call themselves
    call = [helper.make_node("F", ["x"], ["y"], domain="local")]
    local = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
    add("recursive_function", _model(call, [_vi("x", [2])], [_vi("y", [2])], functions=[_function("F", "F")], opsets=local),
        InvalidModel)
    add("mutually_recursive_functions", _model(call, [_vi("x", [2])], [_vi("y", [2])],
                                               functions=[_function("F", "G"), _function("G", "F")], opsets=local), InvalidModel)
    broken = helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("Add", ["a", "ghost"], ["b"])],
                                  [helper.make_opsetid("", 18)])
    add("function_undefined_input", _model(call, [_vi("x", [2])], [_vi("y", [2])], functions=[broken], opsets=local),
        InvalidModel)
    # --- external data
    add("external_absolute_path", _external(_weight_model(), location=str(secret)), UnsafePath)
    add("external_path_traversal", _external(_weight_model(), location="../outside/secret.bin"), UnsafePath)
    link_case = add("external_symlink_escape", _external(_weight_model(), location="w.bin"), UnsafePath)
    os.symlink(secret, link_case.path.parent / "w.bin")
    hard_case = add("external_hardlink", _external(_weight_model(), location="w.bin"), UnsafePath)
    os.link(secret, hard_case.path.parent / "w.bin")
    fifo_case = add("external_fifo", _external(_weight_model(), location="w.bin"), UnsafePath)
    os.mkfifo(fifo_case.path.parent / "w.bin")
    add("external_offset_past_end", _external(_weight_model(), location="w.bin", offset=1 << 40, length=48), InvalidModel,
        data={"w.bin": weights})
    add("external_length_mismatch", _external(_weight_model(), location="w.bin", length=1 << 40), InvalidModel,
        data={"w.bin": weights})
    add("external_huge_dims", _external(_weight_model((10**6, 10**6)), location="w.bin"), LimitExceeded, data={"w.bin": weights})
    add("external_missing_file", _external(_weight_model(), location="nowhere.bin"), InvalidModel)
    return cases


if __name__ == "__main__":
    for c in build(Path(sys.argv[1])):
        print(f"{c.name:34} {c.error.__name__:14} {c.path}")
