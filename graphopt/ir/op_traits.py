"""Op facts: the one place the compiler, the runtimes and the passes read them from.

Standard ops' facts are tables here. A fused op registers its own facts next to its rule or kernel
(`@kernel("FusedConv", domain="ai.graphopt", shape_from_shapes=True)` in its kernel file), so adding an op never
edits this file.
"""
from __future__ import annotations

# ops whose output is not a function of their inputs: never folded, never cached per shape
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})
# ... plus Dropout, which draws a mask when its training_mode input is true: the runtime treats it as
# random (it sees the input only at run time); the passes remove inference-mode Dropout instead
MAY_DRAW_RANDOM = RANDOM_OPS | {"Dropout"}

# two-input ops whose inputs may be swapped (Sum is variadic: any order)
COMMUTATIVE_OPS = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal", "Sum", "Mean",
                             "BitwiseAnd", "BitwiseOr", "BitwiseXor"})

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})  # the standard ops that carry subgraphs
SHAPE_READERS = frozenset({"Shape", "Size"})  # read only their input's shape, never its values

_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum")
# input positions whose VALUES (not only shapes) decide the output shape
SHAPE_VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Unsqueeze": (1,), "Squeeze": (1,), "Slice": (1, 2, 3, 4), "Tile": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "Split": (1,), "Pad": (1, 3),
    **{r: (1,) for r in _REDUCE_OPS}}
# inputs a device runtime keeps on the host: the shape-deciding ones, plus small parameters read
# on the host side (Pad's constant value, Resize's roi/scales/sizes)
# (ConstantOfShape's and Range's inputs are the data of a host-computed result, not parameters)
HOST_INPUTS: dict[str, frozenset[int]] = {
    op: frozenset(pos) for op, pos in {**SHAPE_VALUE_INPUTS, "Pad": (1, 2, 3), "Resize": (1, 2, 3)}.items()
    if op not in ("ConstantOfShape", "Range")}

_ELEMENTWISE = {
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos",
    "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Tanh", "Not", "IsNaN", "IsInf", "BitwiseNot", "Softsign",
    "Reciprocal", "Erf", "Relu", "Sigmoid", "Softplus", "Mish", "HardSwish", "Identity", "Add", "Sub", "Mul",
    "Div", "Pow", "Mod", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitShift", "Max", "Min", "Sum", "Mean", "Where", "Clip",
    "LeakyRelu", "PRelu", "Elu", "Celu", "Selu", "ThresholdedRelu", "HardSigmoid", "Shrink", "Gelu", "Swish",
    "Cast", "CastLike"}
# (domain, op) whose output shapes follow from the input shapes and the attributes alone
_SHAPE_FROM_SHAPES: set[tuple[str, str]] = {("", op) for op in _ELEMENTWISE} | {("", op) for op in (
    "MatMul", "Gemm", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "LpPool", "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "RMSNormalization", "LpNormalization", "Softmax", "LogSoftmax", "Hardmax", "Transpose", "Flatten", "Gather",
    "GatherElements", "Concat", "DepthToSpace", "SpaceToDepth", "ArgMax", "ArgMin", "CumSum", "Einsum",
    "QuantizeLinear", "DequantizeLinear")}


def register_shape_rule(domain: str, op: str) -> None:
    """Declare that `op`'s output shapes follow from its input shapes and attributes alone (lets the
    runtime specialize a plan per input-shape signature through it). Called by the file that owns
    the op, e.g. a fused op's kernel file."""
    _SHAPE_FROM_SHAPES.add((domain, op))


def shape_from_shapes(domain: str, op: str) -> bool:
    return (domain, op) in _SHAPE_FROM_SHAPES


def shape_value_inputs(domain: str, op: str) -> tuple[int, ...] | None:
    """The input positions whose values decide `op`'s output shape; None when the op is not one of those."""
    return SHAPE_VALUE_INPUTS.get(op) if domain == "" else None
