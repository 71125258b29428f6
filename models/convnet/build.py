"""A small CNN: Conv+BatchNormalization+Relu blocks, MaxPool, GlobalAveragePool, Flatten, Gemm.

Targets: Conv+BN folding, Conv+Relu fusion, Gemm handling; dynamic batch ("batch").
"""
import numpy as np

from build_common import FLOAT, io, model, node, rng, weight, const

DIMS = {"batch": 2}


def _conv_bn_relu(r, i, x, cin, cout, inits, bias=True):
    """Conv (with or without bias) -> BatchNormalization (inference) -> Relu."""
    w = weight(r, f"conv{i}.weight", cout, cin, 3, 3)
    inits.append(w)
    conv_in = [x, w.name]
    if bias:
        inits.append(weight(r, f"conv{i}.bias", cout, scale=0.1))
        conv_in.append(f"conv{i}.bias")
    inits += [const(f"bn{i}.scale", 1 + 0.1 * r.standard_normal(cout), np.float32),
              const(f"bn{i}.bias", 0.1 * r.standard_normal(cout), np.float32),
              const(f"bn{i}.mean", 0.1 * r.standard_normal(cout), np.float32),
              const(f"bn{i}.var", 0.5 + r.random(cout), np.float32)]
    return [node("Conv", conv_in, f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            node("BatchNormalization", [f"conv{i}", f"bn{i}.scale", f"bn{i}.bias", f"bn{i}.mean", f"bn{i}.var"],
                 f"bn{i}", epsilon=1e-5),
            node("Relu", f"bn{i}", f"relu{i}")], f"relu{i}"


def build():
    r = rng(1)
    inits, nodes = [], []
    x = "input"
    for i, (cin, cout, bias) in enumerate([(3, 8, True), (8, 16, False)]):
        block, x = _conv_bn_relu(r, i, x, cin, cout, inits, bias)
        nodes += block
    nodes.append(node("MaxPool", x, "pool", kernel_shape=[2, 2], strides=[2, 2]))
    block, x = _conv_bn_relu(r, 2, "pool", 16, 16, inits)
    nodes += block
    nodes += [node("GlobalAveragePool", x, "gap"),
              node("Flatten", "gap", "flat", axis=1),
              node("Gemm", ["flat", "fc.weight", "fc.bias"], "logits", transB=1)]
    inits += [weight(r, "fc.weight", 10, 16), weight(r, "fc.bias", 10, scale=0.1)]
    return model("convnet", nodes, [io("input", FLOAT, ["batch", 3, 32, 32])],
                 [io("logits", FLOAT, ["batch", 10])], inits, opset=13, ir_version=7)
