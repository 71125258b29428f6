"""Split's build-time specialization (kernels/cpu/prepared_split.py) against ONNX Runtime: every way
the sizes come (input, attribute, equal parts, num_outputs), any axis, several input shapes through
one Session (the remembered slices are per shape), and sizes computed at run time (generic kernel)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.errors import KernelFailed
from graphopt.runtime.session import Session
from graphopt.verify import run_ort


def split_model(opset, axis, n_out, sizes=None, as_input=True, num_outputs=False, dynamic_sizes=False):
    inits, ins = [], ["x"]
    attrs = {"axis": axis}
    if sizes is not None and as_input:
        ins.append("sizes")
        if not dynamic_sizes:
            inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
    elif sizes is not None:
        attrs["split"] = sizes
    if num_outputs:
        attrs["num_outputs"] = n_out
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])]
    if dynamic_sizes:
        vi.append(helper.make_tensor_value_info("sizes", TensorProto.INT64, [len(sizes)]))
    outs = [f"y{i}" for i in range(n_out)]
    # each part goes through a Neg: the parts are views of x, the graph outputs are fresh arrays
    nodes = [helper.make_node("Split", ins, outs, **attrs)] + [helper.make_node("Neg", [o], [o + "n"]) for o in outs]
    g = helper.make_graph(nodes, "split", vi, [helper.make_tensor_value_info(o + "n", TensorProto.FLOAT, None)
                                               for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


CASES = {
    "sizes input": {"opset": 13, "axis": -1, "n_out": 3, "sizes": [2, 3, 3]},
    "sizes attribute": {"opset": 11, "axis": 2, "n_out": 2, "sizes": [5, 3], "as_input": False},
    "equal parts": {"opset": 13, "axis": 1, "n_out": 2},
    "num_outputs uneven": {"opset": 18, "axis": -1, "n_out": 3, "num_outputs": True},  # 8 -> 3, 3, 2
    "batch axis": {"opset": 13, "axis": 0, "n_out": 1},
    "sizes at run time": {"opset": 13, "axis": -1, "n_out": 2, "sizes": [6, 2], "dynamic_sizes": True},
}


@pytest.mark.parametrize("case", CASES)
def test_split_matches_ort_over_several_shapes(case):
    model = split_model(**CASES[case])
    sess = graphopt.Session(model)
    for n, seed in ((2, 0), (3, 1), (2, 2), (1, 3)):  # back to a shape seen before: its remembered slices
        feed = {"x": np.random.default_rng(seed).standard_normal((n, 4, 8)).astype(np.float32)}
        if CASES[case].get("dynamic_sizes"):
            feed["sizes"] = np.array(CASES[case]["sizes"], np.int64)
        want = run_ort(model, feed)
        got = sess.run(None, feed)
        assert len(got) == len(want)
        for g, w in zip(got, want.values()):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g, w)



def test_sizes_that_do_not_add_up_are_an_error():
    """ORT rejects Split sizes whose sum is not the axis length; np.split would cut a wrong last part."""
    graph = helper.make_graph([helper.make_node("Split", ["x", "s"], ["a", "b"], axis=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"],
                              [helper.make_tensor("s", TensorProto.INT64, [2], [3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(KernelFailed, match="Split.*do not add up"):
        Session(model).run(None, {"x": np.arange(8, dtype=np.float32)})
