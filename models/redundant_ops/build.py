"""Redundancy cleanup should remove, next to look-alikes it must keep.

Removable: Constant nodes, duplicate initializers, common subexpressions, dead nodes, and no-op
Identity/Reshape/Transpose/Cast/Slice/Pad/Expand/Concat/Split/Add 0/Sub 0/Mul 1/Div 1, on a
static input and on a dynamic-batch one.
Must stay (output `traps`): Cast to int32 and back (rounds), Cast through float16 (loses bits),
x + zeros that broadcasts to a bigger shape, Expand that broadcasts, Reshape that changes shape.
"""
import numpy as np

from build_common import FLOAT, const, constant_node, io, ints, model, node, rng, weight

DIMS = {"batch": 3}


def inputs(r):
    # magnitudes where rounding to int or float16 visibly changes values
    return {"x": (r.standard_normal((2, 8)) * 3).astype(np.float32),
            "d": r.standard_normal((DIMS["batch"], 8)).astype(np.float32)}


def build():
    r = rng(7)
    w = weight(r, "w_a", 8, 8)
    w_dup = const("w_b", np.frombuffer(w.raw_data, np.float32).reshape(8, 8))  # same bytes, other name
    inits = [w, w_dup, ints("shape_2x8", 2, 8), ints("shape_3x8x2", 3, 8, 2), ints("zero_1d", 0), ints("big", 2**62),
             ints("axis1", 1), ints("pads0", 0, 0, 0, 0), ints("ones_2", 1, 1), ints("expand_big", 3, 2, 8),
             ints("shape_keep", 0, -1), const("zeros_3x2x8", np.zeros((3, 2, 8)), np.float32),
             const("ones_row", np.ones((1, 8)), np.float32), const("zero", 0.0, np.float32),
             const("dead_w", np.ones((8, 4)), np.float32)]
    nodes = [
        constant_node("one", 1.0),
        constant_node("one_again", 1.0),  # a second Constant with the same value
        node("Identity", "x", "x_id"),
        node("Mul", ["x_id", "one"], "x_m1"),                                   # x*1
        node("Reshape", ["x_m1", "shape_2x8"], "x_rs"),                          # same shape
        node("Transpose", "x_rs", "x_tp", perm=[0, 1]),                          # identity perm
        node("Cast", "x_tp", "x_cast", to=1),                                    # float -> float
        node("Slice", ["x_cast", "zero_1d", "big", "axis1"], "x_sl"),            # [:, 0:max]
        node("Pad", ["x_sl", "pads0"], "x_pad", mode="constant"),                # zero pads
        node("Expand", ["x_pad", "ones_2"], "x_ex"),                             # expand to ones
        node("Concat", ["x_ex"], "x_cat", axis=0),                               # single input
        node("Split", "x_cat", "x_sp", axis=1),                                  # single output
        node("Sub", ["x_sp", "zero"], "x_s0"),                                   # x-0
        node("Div", ["x_s0", "one_again"], "x_d1"),                              # x/1
        node("Mul", ["x_d1", "ones_row"], "x_clean"),                            # x*ones, same shape
        node("MatMul", ["x_clean", "w_a"], "mm_a"),
        node("MatMul", ["x_clean", "w_b"], "mm_b"),                              # same after dedup -> CSE
        node("Relu", "mm_a", "relu_a"),
        node("Relu", "mm_b", "relu_b"),
        node("Add", ["relu_a", "relu_b"], "y"),
        node("MatMul", ["x_clean", "dead_w"], "dead_mm"),                        # dead code
        node("Relu", "dead_mm", "dead_relu"),
        # dynamic batch
        node("Reshape", ["d", "shape_keep"], "d_rs"),                            # [0, -1] keeps the shape
        node("Identity", "d_rs", "d_id"),
        node("Add", ["d_id", "zero"], "d_a0"),
        node("Sigmoid", "d_a0", "d_sig1"),
        node("Sigmoid", "d_a0", "d_sig2"),                                       # CSE
        node("Mul", ["d_sig1", "d_sig2"], "d_out"),
        # traps: look like no-ops, are not
        node("Cast", "x", "x_i32", to=6), node("Cast", "x_i32", "x_rounded", to=1),
        node("Cast", "x", "x_f16", to=10), node("Cast", "x_f16", "x_f16_back", to=1),
        node("Add", ["x_rounded", "x_f16_back"], "trap_sum"),
        node("Add", ["trap_sum", "zeros_3x2x8"], "trap_bcast"),                  # [2,8] + zeros[3,2,8] -> [3,2,8]
        node("Expand", ["x", "expand_big"], "trap_ex"),
        node("Sub", ["trap_bcast", "trap_ex"], "trap_diff"),
        node("Reshape", ["trap_diff", "shape_3x8x2"], "traps"),
    ]
    return model("redundant_ops", nodes, [io("x", FLOAT, [2, 8]), io("d", FLOAT, ["batch", 8])],
                 [io("y", FLOAT, [2, 8]), io("d_out", FLOAT, ["batch", 8]), io("traps", FLOAT, [3, 8, 2])],
                 inits, opset=13)
