"""Loop and Scan bodies with cleanable ops and outer-scope reads.

Loop: 3 iterations of v <- tanh(v @ W + b*1 + (0.5 - 0.5) + t) with W an outer initializer and
t an outer intermediate; a per-iteration ReduceSum is a scan output. Scan: a running sum over the
sequence axis whose body holds Identity and x*1.
Targets: passes recursing into Loop/Scan bodies (body inputs/outputs are positional: they must
keep their count and order), outer-scope values.
"""
import numpy as np
from onnx import helper

from build_common import BOOL, FLOAT, INT64, const, io, model, node, rng, scalar, weight

DIMS = {}
H = 6


def _loop_body():
    nodes = [
        node("Identity", "cond_in", "cond_out"),
        node("Identity", "v_in", "v_id"),
        node("MatMul", ["v_id", "W"], "v_mm"),
        node("Mul", ["b", "one"], "b1"),                  # b*1
        node("Sub", ["half", "half"], "nothing"),         # constant arithmetic: 0
        node("Add", ["v_mm", "b1"], "v_b"),
        node("Add", ["v_b", "nothing"], "v_b0"),
        node("Add", ["v_b0", "t"], "v_t"),                # outer intermediate
        node("Tanh", "v_t", "v_out"),
        node("ReduceSum", "v_out", "v_sum", keepdims=0),
    ]
    return helper.make_graph(nodes, "loop_body",
                             [io("iter", INT64, []), io("cond_in", BOOL, []), io("v_in", FLOAT, [1, H])],
                             [io("cond_out", BOOL, []), io("v_out", FLOAT, [1, H]), io("v_sum", FLOAT, [])])


def _scan_body():
    nodes = [
        node("Identity", "x_t", "x_t_id"),
        node("Mul", ["x_t_id", "one"], "x_t1"),
        node("Add", ["s_in", "x_t1"], "s_out"),
        node("Identity", "s_out", "s_seq"),
    ]
    return helper.make_graph(nodes, "scan_body", [io("s_in", FLOAT, [H]), io("x_t", FLOAT, [H])],
                             [io("s_out", FLOAT, [H]), io("s_seq", FLOAT, [H])])


def build():
    r = rng(9)
    inits = [weight(r, "W", H, H), weight(r, "b", 1, H, scale=0.1), scalar("one", 1.0), scalar("half", 0.5),
             const("trips", 3, np.int64), const("keep_going", True, np.bool_), const("s0", np.zeros(H), np.float32)]
    nodes = [
        node("Relu", "v0", "t"),
        node("Loop", ["trips", "keep_going", "v0"], ["v_final", "v_sums"], body=_loop_body()),
        node("Scan", ["s0", "seq"], ["s_final", "running"], body=_scan_body(), num_scan_inputs=1),
    ]
    return model("loop_subgraph", nodes, [io("v0", FLOAT, [1, H]), io("seq", FLOAT, [5, H])],
                 [io("v_final", FLOAT, [1, H]), io("v_sums", FLOAT, [3]), io("s_final", FLOAT, [H]),
                  io("running", FLOAT, [5, H])], inits, opset=16)
