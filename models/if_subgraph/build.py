"""If nodes whose branches hold foldable and cleanable ops and read outer-scope values.

Branches contain Identity, x*1, x+0, x/1, same-type Cast, Constant nodes with constant arithmetic
between them, and a nested If; they read `x`, the outer intermediate `t` and the outer constant
sum `k`. Two Ifs take `cond` and `Not(cond)` so one set of inputs runs both branches; a third If
has branches that are a bare Identity of an outer value (their output names must survive).
Targets: passes recursing into subgraphs without breaking outer-scope references.
"""
import numpy as np
from onnx import helper

from build_common import BOOL, FLOAT, constant_node, io, model, node, scalar

DIMS = {}
SHAPE = [2, 3]


def inputs(r):
    return {"x": r.standard_normal(SHAPE).astype(np.float32), "cond": np.array(True)}


def _branches(p):
    """then: ((Identity(t) * 1) * (2 + 3)) + nested If; else: ((x + 0) / 1 + k) cast to float."""
    nested_then = helper.make_graph([node("Sub", ["x", "zero"], f"{p}_n_then")], f"{p}_nested_then", [],
                                    [io(f"{p}_n_then", FLOAT, SHAPE)])
    nested_else = helper.make_graph([node("Neg", "x", f"{p}_n_else")], f"{p}_nested_else", [],
                                    [io(f"{p}_n_else", FLOAT, SHAPE)])
    then = helper.make_graph([
        node("Identity", "t", f"{p}_ti"),
        node("Mul", [f"{p}_ti", "one"], f"{p}_tm"),
        constant_node(f"{p}_two", 2.0),
        constant_node(f"{p}_three", 3.0),
        node("Add", [f"{p}_two", f"{p}_three"], f"{p}_five"),
        node("Mul", [f"{p}_tm", f"{p}_five"], f"{p}_scaled"),
        node("Not", "cond", f"{p}_ncond"),
        node("If", f"{p}_ncond", f"{p}_nested", then_branch=nested_then, else_branch=nested_else),
        node("Add", [f"{p}_scaled", f"{p}_nested"], f"{p}_then_out"),
    ], f"{p}_then", [], [io(f"{p}_then_out", FLOAT, SHAPE)])
    other = helper.make_graph([
        node("Add", ["x", "zero"], f"{p}_xa"),
        node("Div", [f"{p}_xa", "one"], f"{p}_xd"),
        node("Add", [f"{p}_xd", "k"], f"{p}_xk"),
        node("Cast", f"{p}_xk", f"{p}_else_out", to=1),
    ], f"{p}_else", [], [io(f"{p}_else_out", FLOAT, SHAPE)])
    return then, other


def build():
    inits = [scalar("one", 1.0), scalar("zero", 0.0), scalar("k1", 0.25), scalar("k2", 0.5)]
    then1, else1 = _branches("a")
    then2, else2 = _branches("b")
    bare_then = helper.make_graph([node("Identity", "x", "c_then_out")], "c_then", [], [io("c_then_out", FLOAT, SHAPE)])
    bare_else = helper.make_graph([node("Identity", "t", "c_else_out")], "c_else", [], [io("c_else_out", FLOAT, SHAPE)])
    nodes = [
        node("Relu", "x", "t"),
        node("Add", ["k1", "k2"], "k"),  # outer constant arithmetic the branches read
        node("Not", "cond", "not_cond"),
        node("If", "cond", "y1", then_branch=then1, else_branch=else1),
        node("If", "not_cond", "y2", then_branch=then2, else_branch=else2),
        node("If", "cond", "y3", then_branch=bare_then, else_branch=bare_else),
    ]
    return model("if_subgraph", nodes, [io("x", FLOAT, SHAPE), io("cond", BOOL, [])],
                 [io("y1", FLOAT, SHAPE), io("y2", FLOAT, SHAPE), io("y3", FLOAT, SHAPE)], inits, opset=16)
