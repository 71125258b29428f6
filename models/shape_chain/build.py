"""Shape arithmetic the way exporters emit it, over a dynamic batch and known C/H/W.

Shape/Gather/Unsqueeze/Concat/Reshape, Shape(start=...)+ReduceProd, Slice of a shape, Cast of a
dim used as a float, ConstantOfShape and Expand over the batch. Everything over the known dims
folds; everything over `batch` must stay a node so the model keeps accepting any batch size.
"""
import numpy as np
from onnx import numpy_helper

from build_common import FLOAT, const, io, ints, model, node, rng, scalar, weight

DIMS = {"batch": 3}


def build():
    r = rng(3)
    # scalar indices, like torch's x.size(k)
    inits = [const(f"i{k}", k, np.int64) for k in range(4)] + [ints("axes0", 0), ints("minus1", -1),
             ints("four", 4), ints("sixteen", 16), ints("three", 3), ints("start1", 1), ints("end2", 2),
             ints("i1_1d", 1), weight(r, "fc.weight", 60, 16), weight(r, "fc.bias", 1, 16, scale=0.1),
             scalar("eps", 1e-3)]
    nodes = [
        node("Shape", "x", "x_shape"),
        node("Gather", ["x_shape", "i0"], "batch", axis=0),          # symbolic: stays
        node("Gather", ["x_shape", "i1"], "c", axis=0),              # 3
        node("Gather", ["x_shape", "i2"], "h", axis=0),              # 4
        node("Gather", ["x_shape", "i3"], "w", axis=0),              # 5
        node("Mul", ["c", "h"], "ch"),
        node("Mul", ["ch", "w"], "chw"),                             # 60
        node("Unsqueeze", ["batch", "axes0"], "batch_1d"),
        node("Unsqueeze", ["chw", "axes0"], "chw_1d"),
        node("Concat", ["batch_1d", "chw_1d"], "flat_shape", axis=0),  # [batch, 60]
        node("Reshape", ["x", "flat_shape"], "flat"),
        # the same product again through Shape(start=1) + ReduceProd
        node("Shape", "x", "chw_dims", start=1),
        node("ReduceProd", "chw_dims", "chw_again", keepdims=1),
        node("Concat", ["minus1", "chw_again"], "flat_shape2", axis=0),  # [-1, 60]
        node("Reshape", ["flat", "flat_shape2"], "flat2"),
        node("MatMul", ["flat2", "fc.weight"], "fc_mm"),
        node("Concat", ["batch_1d", "sixteen"], "bias_shape", axis=0),
        node("Expand", ["fc.bias", "bias_shape"], "bias_b"),
        node("Add", ["fc_mm", "bias_b"], "fc"),
        node("Shape", "fc", "fc_shape"),
        node("Slice", ["fc_shape", "start1", "end2"], "fc_width"),   # [16]
        node("Div", ["fc_width", "four"], "rows"),                   # [4]
        node("Concat", ["batch_1d", "rows", "four"], "square_shape", axis=0),
        node("Reshape", ["fc", "square_shape"], "y"),                # [batch, 4, 4]
        # a dim used as a number: mean over C computed as sum / C
        node("ReduceSum", ["x", "i1_1d"], "sum_c", keepdims=0),
        node("Cast", "c", "c_f", to=1),
        node("Div", ["sum_c", "c_f"], "y2"),                          # [batch, 4, 5]
        # ConstantOfShape over the batch
        node("Concat", ["batch_1d", "three"], "ones_shape", axis=0),
        node("ConstantOfShape", "ones_shape", "ones",
             value=numpy_helper.from_array(np.ones(1, np.float32), "one")),
        node("ReduceMean", "x", "gap", axes=[2, 3], keepdims=0),
        node("Add", ["gap", "ones"], "gap1"),
        node("Add", ["gap1", "eps"], "y3"),                           # [batch, 3]
    ]
    return model("shape_chain", nodes, [io("x", FLOAT, ["batch", 3, 4, 5])],
                 [io("y", FLOAT, ["batch", 4, 4]), io("y2", FLOAT, ["batch", 4, 5]), io("y3", FLOAT, ["batch", 3])],
                 inits, opset=15)
