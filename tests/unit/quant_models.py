"""Tiny seeded float models and feeds for the lossy-pass tests (weights drawn once per call)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

CNN = """<ir_version: 8, opset_import: ["": 17]>
cnn (float[N,3,8,8] x) => (float[N,10] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv<pads=[1,1,1,1]>(r1, w2, b2)
  a = Add(c2, r1)
  r2 = Relu(a)
  c3 = Conv<pads=[1,1,1,1], strides=[2,2]>(r2, w3, b3)
  r3 = Relu(c3)
  p = GlobalAveragePool(r3)
  f = Flatten(p)
  h = Gemm<transB=1>(f, w4, b4)
  y = Softmax(h)
}"""

MLP = """<ir_version: 8, opset_import: ["": 17]>
mlp (float[N,16] x) => (float[N,8] y) {
  m1 = MatMul(x, w1)
  a1 = Add(m1, b1)
  r1 = Relu(a1)
  n1 = LayerNormalization<axis=-1>(r1, g1, be1)
  m2 = MatMul(n1, w2)
  a2 = Add(m2, b2)
  r2 = Relu(a2)
  m3 = MatMul(r2, w3)
  y = Add(m3, b3)
}"""

# A text detector's shape (PP-OCR det, DBNet): features, then an upsampling head that ends in
# ConvTranspose layers and a Sigmoid map.
DET = """<ir_version: 8, opset_import: ["": 17]>
det (float[N,3,8,8] x) => (float[N,1,16,16] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv<pads=[1,1,1,1]>(r1, w2, b2)
  r2 = Relu(c2)
  t1 = ConvTranspose<strides=[2,2], kernel_shape=[2,2]>(r2, wt1, bt1)
  r3 = Relu(t1)
  t2 = ConvTranspose<pads=[1,1,1,1], kernel_shape=[3,3]>(r3, wt2, bt2)
  y = Sigmoid(t2)
}"""


def _model(text: str, shapes: dict, seed: int) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        if name.startswith("g"):
            value = 1.0 + rng.normal(0, 0.1, shape)
        elif name.startswith("b"):
            value = rng.normal(0, 0.1, shape)
        else:  # He-style scale so activations keep a steady range through the layers
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else (shape[1] if name == "w4" else shape[0])
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn(seed: int = 0) -> onnx.ModelProto:
    return _model(CNN, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "w3": (16, 8, 3, 3),
                        "b3": (16,), "w4": (10, 16), "b4": (10,)}, seed)


def mlp(seed: int = 0) -> onnx.ModelProto:
    return _model(MLP, {"w1": (16, 32), "b1": (32,), "g1": (32,), "be1": (32,), "w2": (32, 32), "b2": (32,),
                        "w3": (32, 8), "b3": (8,)}, seed)


def det(seed: int = 0) -> onnx.ModelProto:
    return _model(DET, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "wt1": (8, 4, 2, 2),
                        "bt1": (4,), "wt2": (4, 1, 3, 3), "bt2": (1,)}, seed)


def ort_optimized_ops(model: onnx.ModelProto, path) -> list[onnx.NodeProto]:
    """The nodes of the graph ONNX Runtime runs after all its optimizations (QDQ fusions included),
    written by ORT to `path` (1 thread, CPU)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(onnx.load(str(path)).graph.node)


def feeds(name: str, shape, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(size=shape).astype(np.float32)} for _ in range(count)]


def cosine_err(a, b) -> float:
    """1 - cosine similarity of two arrays (float64)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
