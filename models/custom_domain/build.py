"""Custom-domain ops ("custom.ops") defined as model-local functions, among standard ops.

ScaledTanh(X; alpha) = alpha * Tanh(X) (an attribute passed through ref_attr_name) and
Swish(X) = X * Sigmoid(X). Around them: Identity, x*1, x+0, constant arithmetic, a duplicate
ScaledTanh call on the same value. graphopt must pass the custom nodes and functions through
untouched (same nodes, same attributes, functions kept, "custom.ops" opset kept) while cleaning
the standard ops around them.
"""
from onnx import AttributeProto, helper

from build_common import FLOAT, io, model, node, rng, scalar, weight

DOMAIN = "custom.ops"
OPSET = 18
DIMS = {"batch": 2}


def _functions():
    alpha = helper.make_node("Constant", [], ["alpha"], name="alpha")
    alpha.attribute.append(helper.make_attribute_ref("value_float", AttributeProto.FLOAT))
    alpha.attribute[0].ref_attr_name = "alpha"
    scaled_tanh = helper.make_function(
        DOMAIN, "ScaledTanh", ["X"], ["Y"],
        [alpha, helper.make_node("Tanh", ["X"], ["t"]), helper.make_node("Mul", ["t", "alpha"], ["Y"])],
        [helper.make_opsetid("", OPSET)], attributes=["alpha"], doc_string="alpha * tanh(X)")
    swish = helper.make_function(
        DOMAIN, "Swish", ["X"], ["Y"],
        [helper.make_node("Sigmoid", ["X"], ["s"]), helper.make_node("Mul", ["X", "s"], ["Y"])],
        [helper.make_opsetid("", OPSET)], doc_string="X * sigmoid(X)")
    return [scaled_tanh, swish]


def build():
    r = rng(5)
    inits = [weight(r, "fc.weight", 8, 8), weight(r, "fc.bias", 8, scale=0.1),
             scalar("one", 1.0), scalar("zero", 0.0), scalar("c1", 1.5), scalar("c2", 0.5)]
    nodes = [
        node("Identity", "x", "x_id"),
        node("Mul", ["x_id", "one"], "x_1"),
        node("MatMul", ["x_1", "fc.weight"], "fc_mm"),
        node("Add", ["fc_mm", "fc.bias"], "fc"),
        node("ScaledTanh", "fc", "st_a", domain=DOMAIN, alpha=0.5),
        node("ScaledTanh", "fc", "st_b", domain=DOMAIN, alpha=0.5),  # same call twice
        node("Add", ["st_a", "zero"], "st_a0"),
        node("Swish", "st_a0", "sw", domain=DOMAIN),
        node("Add", ["c1", "c2"], "c"),  # 2.0, folds
        node("Mul", ["sw", "c"], "sw2"),
        node("Add", ["sw2", "st_b"], "y"),
        node("Swish", "x", "z", domain=DOMAIN),  # a custom op straight on a graph input, to an output
    ]
    return model("custom_domain", nodes, [io("x", FLOAT, ["batch", 8])],
                 [io("y", FLOAT, ["batch", 8]), io("z", FLOAT, ["batch", 8])], inits, opset=OPSET,
                 extra_opsets={DOMAIN: 1}, functions=_functions())
