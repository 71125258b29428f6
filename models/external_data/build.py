"""An MLP whose weights live in external data: model.onnx + model.onnx.data (relative location).

The weights are stored transposed and fed through Transpose (folds into new initializers); a
weight is shared by two MatMuls. Targets: loading external data safely, folding tensors that came
from external data, and leaving the input model's files untouched.
"""
import onnx

from build_common import FLOAT, io, model, node, rng, weight

DIMS = {"batch": 4}
DATA_FILE = "model.onnx.data"


def build():
    r = rng(6)
    inits = [weight(r, "w1_t", 64, 32), weight(r, "b1", 64, scale=0.1),
             weight(r, "w2_t", 64, 64), weight(r, "b2", 64, scale=0.1),
             weight(r, "w3", 64, 16), weight(r, "b3", 16, scale=0.1)]
    nodes = [
        node("Transpose", "w1_t", "w1", perm=[1, 0]),
        node("Transpose", "w2_t", "w2", perm=[1, 0]),
        node("MatMul", ["x", "w1"], "h1_mm"), node("Add", ["h1_mm", "b1"], "h1"), node("Relu", "h1", "a1"),
        node("MatMul", ["a1", "w2"], "h2_mm"), node("Add", ["h2_mm", "b2"], "h2"), node("Relu", "h2", "a2"),
        node("MatMul", ["a2", "w2"], "h3_mm"), node("Add", ["h3_mm", "b2"], "h3"), node("Tanh", "h3", "a3"),
        node("MatMul", ["a3", "w3"], "h4_mm"), node("Add", ["h4_mm", "b3"], "y"),
    ]
    return model("external_data", nodes, [io("x", FLOAT, ["batch", 32])], [io("y", FLOAT, ["batch", 16])], inits,
                 opset=17)


def save(m, path):
    """Every tensor over 256 bytes goes to DATA_FILE beside the model (the biases stay inline)."""
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE,
                    size_threshold=256, convert_attribute=False)
