"""LSTM and GRU with constant weights (kernels/cpu/rnn.py) against ONNX Runtime on one-node
models: directions, layouts, biases and initial states or none, GRU's linear_before_reset 0/1,
sequence_lens all full (prepared) or ragged (the generic kernel), float32 and float64; and the
options the prepared kernel leaves to the generic one (peepholes, clip, input_forget) still give
ORT's results."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from graphopt.kernels.cpu.rnn import prepare_gru, prepare_lstm
from graphopt.runtime.session import Session
from graphopt.verify import ort_session

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 6, 4


def lstm_model(direction="forward", layout=0, bias=True, states=True, lens=False, peephole=False,
               dtype=np.float32, op="LSTM", **attrs):
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if op == "LSTM" else 3
    rng = np.random.default_rng(dirs * 10 + layout)
    w = rng.standard_normal((dirs, gates * HIDDEN, INPUT)).astype(dtype)
    r = rng.standard_normal((dirs, gates * HIDDEN, HIDDEN)).astype(dtype)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")]
    ins, inputs = ["X", "W", "R"], []
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    x_shape = [BATCH, SEQ, INPUT] if layout else [SEQ, BATCH, INPUT]
    s_shape = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    inputs.append(helper.make_tensor_value_info("X", elem, x_shape))
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 2 * gates * HIDDEN)).astype(dtype), "B"))
    ins.append("B" if bias else "")
    ins.append("L" if lens else "")
    if lens:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [BATCH]))
    for name in ("H0", "C0") if op == "LSTM" else ("H0",):
        ins.append(name if states else "")
        if states:
            inputs.append(helper.make_tensor_value_info(name, elem, s_shape))
    if peephole:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 3 * HIDDEN)).astype(dtype), "P"))
        ins.append("P")
    names = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, ins, names, hidden_size=HIDDEN, direction=direction, layout=layout, **attrs)
    outs = [helper.make_tensor_value_info(n, elem, None) for n in names]
    graph = helper.make_graph([node], op.lower(), inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def feed(model, lens=None, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.name == "L":
            out["L"] = np.array(lens, np.int32)
        else:
            dt = np.float64 if vi.type.tensor_type.elem_type == TensorProto.DOUBLE else np.float32
            out[vi.name] = rng.standard_normal(dims).astype(dt)
    return out


def check(model, lens=None, oracle="ort"):
    """oracle "reference": onnx.reference, the spec's implementation, where ORT has no kernel
    (layout 1, double)."""
    f = feed(model, lens)
    got = Session(model).run(None, f)
    want = ort_session(model).run(None, f) if oracle == "ort" else ReferenceEvaluator(model).run(None, f)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_lstm_directions_and_layouts(direction, layout):
    check(lstm_model(direction, layout), oracle="reference" if layout else "ort")


@pytest.mark.parametrize("bias, states", [(False, False), (True, False), (False, True)])
def test_lstm_without_bias_or_states(bias, states):
    check(lstm_model("bidirectional", bias=bias, states=states))


@pytest.mark.parametrize("lens", [[SEQ] * BATCH, [SEQ, 2, 4]], ids=["full", "ragged"])
def test_lstm_sequence_lens(lens):
    check(lstm_model("bidirectional", lens=True), lens)


def test_lstm_float64():
    check(lstm_model("forward", dtype=np.float64), oracle="reference")


@pytest.mark.parametrize("options", [{"peephole": True}, {"clip": 0.5}, {"input_forget": 1}],
                         ids=["peephole", "clip", "input_forget"])
def test_lstm_options_left_to_the_generic_kernel(options):
    model = lstm_model("forward", **options)
    consts = [None] + [numpy_helper.to_array(t) for t in model.graph.initializer[:2]] + [None] * 5
    if options.get("peephole"):
        consts[7] = numpy_helper.to_array(model.graph.initializer[-1])
    attrs = {"hidden_size": HIDDEN, "direction": "forward", "clip": options.get("clip"),
             "input_forget": options.get("input_forget", 0)}
    assert prepare_lstm(attrs, consts, None) is None
    check(model)


def test_lstm_prepared_for_a_plain_model():
    model = lstm_model("forward")
    consts = [None] + [numpy_helper.to_array(t) for t in model.graph.initializer] + [None] * 4
    assert prepare_lstm({"hidden_size": HIDDEN}, consts, None) is not None


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("before_reset", [0, 1])
def test_gru_directions_and_linear_before_reset(direction, before_reset):
    check(lstm_model(direction, op="GRU", linear_before_reset=before_reset))


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("bias, states", [(False, False), (True, True)])
def test_gru_layouts_bias_states(layout, bias, states):
    check(lstm_model("bidirectional", layout, bias=bias, states=states, op="GRU", linear_before_reset=1),
          oracle="reference" if layout else "ort")


@pytest.mark.parametrize("lens", [[SEQ] * BATCH, [SEQ, 1, 3]], ids=["full", "ragged"])
def test_gru_sequence_lens(lens):
    check(lstm_model("bidirectional", lens=True, op="GRU"), lens)


def test_gru_clip_left_to_the_generic_kernel():
    model = lstm_model("forward", op="GRU", clip=0.5)
    consts = [None] + [numpy_helper.to_array(t) for t in model.graph.initializer[:2]] + [None] * 3
    assert prepare_gru({"hidden_size": HIDDEN, "clip": 0.5}, consts, None) is None
    check(model)
