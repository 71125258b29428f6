"""Channel pruning on random CNN topologies (convs, BN, depthwise, x * hardsigmoid(x), SE blocks,
Concat, Split, pooling) whose lowest-norm channels are exactly dead: zero weights and bias, BN
shift and mean 0, so they are 0 everywhere. Removing them must leave ONNX Runtime's outputs of the
original model unchanged, whatever the composition: this checks the channel bookkeeping across
joins and forks."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphopt.passes.prune import prune
from onnx import TensorProto, helper, numpy_helper
from test_prune import _run  # ONNX Runtime, optimizations off, on input x

RATIO = 0.2
BLOCKS = ["relu", "bn", "dw", "gate", "concat", "split", "se", "conv", "pool", "residual", "residual"]


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, prefix: str) -> str:
        value = np.asarray(value)
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32) if value.dtype.kind == "f" else value, name))
        return name

    def op(self, op_type: str, inputs: list, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 1, dead=None) -> str:
        """A conv whose floor(RATIO * cout) random channels (or those listed in `dead`) are exactly
        zero; self.dead = them."""
        if dead is None:
            dead = self.rng.choice(cout, size=int(np.floor(cout * RATIO)), replace=False)
        w, b = self.rng.normal(size=(cout, cin, k, k)), self.rng.normal(size=cout) * 0.1
        w[dead], b[dead] = 0.0, 0.0
        self.dead = np.sort(np.asarray(dead, np.int64))
        return self.op("Conv", [x, self.const(w, "w"), self.const(b, "b")], pads=[k // 2] * 4)

    def block(self, kind: str, cur: str, c: int) -> tuple[str, int]:
        """Append one block to the chain; returns its output and channel count. self.dead tracks
        the channels of the chain that are exactly zero."""
        if kind == "relu":
            return self.op("Relu", [cur]), c
        if kind == "gate":
            return self.op("Mul", [cur, self.op("HardSigmoid", [cur])]), c
        if kind == "residual":  # x + conv(relu(conv(x))): the second conv's dead channels are x's
            dead = self.dead
            inner = self.op("Relu", [self.conv(cur, c, c, 3)])
            out = self.op("Relu", [self.op("Add", [self.conv(inner, c, c, dead=dead), cur])])
            self.dead = dead
            return out, c
        if kind == "bn":
            params = [self.const(self.rng.uniform(0.5, 2, c), "s"), self.const(np.zeros(c), "t"),
                      self.const(np.zeros(c), "m"), self.const(self.rng.uniform(0.5, 2, c), "v")]
            return self.op("BatchNormalization", [cur, *params]), c
        if kind == "dw":
            return self.op("Conv", [cur, self.const(self.rng.normal(size=(c, 1, 3, 3)), "wd")], group=c, pads=[1] * 4), c
        if kind == "pool":
            return self.op("MaxPool", [cur], kernel_shape=[3, 3], pads=[1] * 4), c
        if kind == "conv":
            return self.conv(cur, c, c + 2), c + 2
        if kind == "concat":
            dead = self.dead
            other = self.conv(cur, c, 5)
            first = self.rng.random() < 0.5
            self.dead = np.concatenate([dead, self.dead + c] if first else [self.dead, dead + 5])
            return self.op("Concat", [cur, other] if first else [other, cur], axis=1), c + 5
        if kind == "split":  # halves swapped and one half activated: channels change places
            a, b = self.name("sa"), self.name("sb")
            half = c // 2
            sizes = self.const(np.array([half, c - half], np.int64), "sizes")
            self.nodes.append(helper.make_node("Split", [cur, sizes], [a, b], axis=1))
            self.dead = np.sort(np.where(self.dead >= half, self.dead - half, self.dead + c - half))
            return self.op("Concat", [b, self.op("Relu", [a])], axis=1), c
        # "se": squeeze-excite; the expand conv is pruned along with the gated layer
        dead = self.dead
        squeeze = self.op("Relu", [self.conv(self.op("GlobalAveragePool", [cur]), c, 5)])
        gate = self.op("HardSigmoid", [self.conv(squeeze, 5, c, dead=[])])
        self.dead = dead
        return self.op("Mul", [cur, gate]), c

    def model(self) -> onnx.ModelProto:
        cur, c = self.conv("x", 3, 8, 3), 8
        for _ in range(self.rng.integers(3, 7)):
            cur, c = self.block(str(self.rng.choice(BLOCKS)), cur, c)
        self.nodes.append(helper.make_node("Identity", [self.conv(cur, c, 5, dead=[])], ["y"]))
        graph = helper.make_graph(self.nodes, "random_cnn",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 8, 8])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


@pytest.mark.parametrize("seed", range(24))
def test_pruning_dead_channels_of_random_topologies_keeps_outputs(seed):
    model = _Builder(seed).model()
    pruned, report = prune(model, RATIO, "channel")
    onnx.checker.check_model(pruned, full_check=True)
    # every layer but the last (it feeds the graph output) gets pruned
    assert report.pruned and set(report.refused.values()) <= {"channels reach the graph output 'y'"}
    assert sum(t.dims[0] for t in pruned.graph.initializer) < sum(t.dims[0] for t in model.graph.initializer)
    x = np.random.default_rng(seed).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(model, x), rtol=1e-4, atol=1e-4)
