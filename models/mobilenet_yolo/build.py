"""A MobileNet/YOLO-style detector as exporters emit it (random weights, structure only).

Backbone: Conv+BN+SiLU stem (SiLU spelled x*Sigmoid(x)), depthwise-separable blocks (depthwise
Conv+BN+HardSwish spelled x*HardSigmoid(x), pointwise Conv+BN, a residual Add), a Relu6 (Clip) block,
a LeakyRelu block behind an explicit zero Pad, an SPPF-style MaxPool/Concat. Neck: 1x1 Conv, Resize
(nearest, x2) upsample, Concat with the stride-16 feature. Head: per-scale 1x1 Conv, Reshape to
[batch, anchors, 5+classes, H*W], Transpose, Sigmoid, Concat of both scales. Symbolic batch.
Targets: BN folding, Pad folding, Conv+activation fusion, layout simplification.
"""
import numpy as np
from build_common import FLOAT, const, ints, io, model, node, rng, scalar, weight

DIMS = {"batch": 2}
ANCHORS, CLASSES = 3, 4


class _Net:
    def __init__(self, seed: int):
        self.r, self.nodes, self.inits, self.n = rng(seed), [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def conv(self, x, cin, cout, k=1, stride=1, group=1, pad=None, bias=False):
        i = self.name("conv")
        w = weight(self.r, f"{i}.weight", cout, cin // group, k, k)
        self.inits.append(w)
        inputs = [x, w.name]
        if bias:
            self.inits.append(weight(self.r, f"{i}.bias", cout, scale=0.1))
            inputs.append(f"{i}.bias")
        p = k // 2 if pad is None else pad
        self.nodes.append(node("Conv", inputs, i, kernel_shape=[k, k], strides=[stride, stride],
                               pads=[p, p, p, p], group=group))
        return i

    def bn(self, x, c):
        i = self.name("bn")
        r = self.r
        self.inits += [const(f"{i}.scale", 1 + 0.1 * r.standard_normal(c), np.float32),
                       const(f"{i}.bias", 0.1 * r.standard_normal(c), np.float32),
                       const(f"{i}.mean", 0.1 * r.standard_normal(c), np.float32),
                       const(f"{i}.var", 0.5 + r.random(c), np.float32)]
        self.nodes.append(node("BatchNormalization", [x] + [f"{i}.{k}" for k in ("scale", "bias", "mean", "var")],
                               i, epsilon=1e-3))
        return i

    def act(self, x, kind):
        i = self.name(kind.lower())
        if kind == "SiLU":  # x * Sigmoid(x)
            self.nodes += [node("Sigmoid", x, f"{i}.sig"), node("Mul", [x, f"{i}.sig"], i)]
        elif kind == "HardSwish":  # x * HardSigmoid(x, 1/6, 0.5)
            self.nodes += [node("HardSigmoid", x, f"{i}.hs", alpha=1.0 / 6, beta=0.5), node("Mul", [x, f"{i}.hs"], i)]
        elif kind == "Relu6":
            self.nodes.append(node("Clip", [x, "zero", "six"], i))
        elif kind == "LeakyRelu":
            self.nodes.append(node("LeakyRelu", x, i, alpha=0.1))
        else:
            self.nodes.append(node(kind, x, i))
        return i

    def cba(self, x, cin, cout, k=1, stride=1, group=1, act="SiLU"):
        y = self.bn(self.conv(x, cin, cout, k, stride, group), cout)
        return self.act(y, act) if act else y

    def dw_separable(self, x, cin, cout, stride, act, residual=False):
        y = self.cba(x, cin, cin, 3, stride, group=cin, act=act)
        y = self.cba(y, cin, cout, 1, act=None)
        if residual:
            i = self.name("res")
            self.nodes.append(node("Add", [x, y], i))
            return i
        return y

    def head(self, x, cin, hw):
        y = self.conv(x, cin, ANCHORS * (5 + CLASSES), 1, bias=True)
        i = self.name("head")
        self.nodes += [node("Reshape", [y, "head_shape"], f"{i}.r"),
                       node("Transpose", f"{i}.r", f"{i}.t", perm=[0, 1, 3, 2]),
                       node("Sigmoid", f"{i}.t", i)]
        return i


def build():
    net = _Net(7)
    net.inits += [scalar("zero", 0.0), scalar("six", 6.0), ints("head_shape", 0, ANCHORS, 5 + CLASSES, -1),
                  const("up_scales", [1.0, 1.0, 2.0, 2.0], np.float32), ints("pad_amounts", 0, 0, 1, 1, 0, 0, 1, 1)]
    x = net.cba("images", 3, 16, 3, 2, act="SiLU")                      # 32x32
    x = net.dw_separable(x, 16, 16, 1, "HardSwish", residual=True)
    x = net.dw_separable(x, 16, 24, 2, "HardSwish")                     # 16x16
    x = net.dw_separable(x, 24, 24, 1, "Relu6", residual=True)
    p4 = net.cba(x, 24, 32, 1, act="HardSwish")
    x = net.dw_separable(p4, 32, 48, 2, "Relu6")                        # 8x8
    net.nodes.append(node("Pad", [x, "pad_amounts"], "padded", mode="constant"))
    x = net.bn(net.conv("padded", 48, 48, 3, 1, pad=0), 48)             # explicit Pad + Conv(pads=0)
    x = net.act(x, "LeakyRelu")
    x = net.cba(x, 48, 48, 3, 1, act="Sigmoid")
    # SPPF: three chained 5x5 max pools, concatenated
    pools = [x]
    for j in range(3):
        net.nodes.append(node("MaxPool", pools[-1], f"sppf{j}", kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
        pools.append(f"sppf{j}")
    net.nodes.append(node("Concat", pools, "sppf", axis=1))
    p5 = net.cba("sppf", 192, 64, 1, act="SiLU")
    # neck: upsample P5 and join P4
    lat = net.cba(p5, 64, 32, 1, act="Relu")
    net.nodes.append(node("Resize", [lat, "", "up_scales"], "up", mode="nearest"))
    net.nodes.append(node("Concat", ["up", p4], "neck", axis=1))
    n4 = net.cba("neck", 64, 32, 3, act="Tanh")
    d4, d5 = net.head(n4, 32, 16 * 16), net.head(p5, 64, 8 * 8)
    net.nodes.append(node("Concat", [d4, d5], "detections", axis=2))
    return model("mobilenet_yolo", net.nodes, [io("images", FLOAT, ["batch", 3, 64, 64])],
                 [io("detections", FLOAT, ["batch", ANCHORS, 16 * 16 + 8 * 8, 5 + CLASSES])], net.inits, opset=13)
