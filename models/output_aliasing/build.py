"""Graph outputs in awkward places: the names of outputs must survive every rewrite.

An output that is the graph input itself, an Identity of the input, two outputs holding the same
value (one through Identity), an output that other nodes also consume, an output that is pure
constant arithmetic, and an output reached through a no-op chain (x*1, +0, Reshape to same shape).
"""

from build_common import FLOAT, io, ints, model, node, scalar

DIMS = {"batch": 2}
SHAPE = ["batch", 4]


def build():
    inits = [scalar("one", 1.0), scalar("zero", 0.0), scalar("c1", 2.0), scalar("c2", 3.0), ints("keep", 0, 4)]
    nodes = [
        node("Identity", "x", "x_copy"),                      # output = Identity(input)
        node("Relu", "x", "relu"),                            # output, also consumed below
        node("Identity", "relu", "relu_copy"),                # same value as `relu`, another output
        node("Sigmoid", "relu", "sig"),
        node("Add", ["sig", "relu"], "mixed"),
        node("Mul", ["c1", "c2"], "const_out"),               # folds to 6.0, stays an output
        node("Mul", ["mixed", "one"], "chain1"),
        node("Add", ["chain1", "zero"], "chain2"),
        node("Reshape", ["chain2", "keep"], "chained"),       # output after a no-op chain
    ]
    outs = [io("x", FLOAT, SHAPE), io("x_copy", FLOAT, SHAPE), io("relu", FLOAT, SHAPE),
            io("relu_copy", FLOAT, SHAPE), io("const_out", FLOAT, []), io("chained", FLOAT, SHAPE)]
    return model("output_aliasing", nodes, [io("x", FLOAT, SHAPE)], outs, inits, opset=17)
