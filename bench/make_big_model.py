"""Build the synthetic scale model: a chain of transformer-ish blocks.

Each block is decomposed LayerNorm + MatMul + bias Add + erf-GELU + residual Add (~20 nodes),
with a dynamic batch dimension. 2,500 blocks give ~50,000 nodes. Weights are small (hidden 16)
so the file stays light; the point is graph size, not FLOPs.

    python bench/make_big_model.py --blocks 2500 -o /tmp/big.onnx
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(blocks: int, hidden: int = 16, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    axes = const("axes", np.array([-1], np.int64))
    two = const("two", np.array(2.0, np.float32))
    eps = const("eps", np.array(1e-5, np.float32))
    half = const("half", np.array(0.5, np.float32))
    one = const("one", np.array(1.0, np.float32))
    rsqrt2 = const("rsqrt2", np.array(1 / np.sqrt(2), np.float32))
    x = "x"
    for b in range(blocks):
        p = f"b{b}_"
        gamma = const(p + "gamma", rng.standard_normal(hidden).astype(np.float32))
        beta = const(p + "beta", rng.standard_normal(hidden).astype(np.float32))
        w = const(p + "w", (rng.standard_normal((hidden, hidden)) / hidden).astype(np.float32))
        bias = const(p + "bias", rng.standard_normal(hidden).astype(np.float32))
        n = lambda op, ins, out, **kw: nodes.append(helper.make_node(op, ins, [p + out], name=p + out, **kw)) or p + out
        mean = n("ReduceMean", [x, axes], "mean", keepdims=1)
        d = n("Sub", [x, mean], "d")
        sq = n("Pow", [d, two], "sq")
        var = n("ReduceMean", [sq, axes], "var", keepdims=1)
        ve = n("Add", [var, eps], "ve")
        sd = n("Sqrt", [ve], "sd")
        nrm = n("Div", [d, sd], "nrm")
        sc = n("Mul", [nrm, gamma], "sc")
        ln = n("Add", [sc, beta], "ln")
        mm = n("MatMul", [ln, w], "mm")
        mb = n("Add", [mm, bias], "mb")
        g1 = n("Mul", [mb, rsqrt2], "g1")
        g2 = n("Erf", [g1], "g2")
        g3 = n("Add", [g2, one], "g3")
        g4 = n("Mul", [mb, g3], "g4")
        g5 = n("Mul", [g4, half], "g5")
        idn = n("Identity", [g5], "idn")
        x = n("Add", [x, idn], "res")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "big_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, hidden])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2800)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    m = build(a.blocks)
    onnx.save(m, a.output)
    print(f"{a.output}: {len(m.graph.node)} nodes")
