"""NumPy CPU kernels. Importing this package registers every kernel in graphopt.kernels.registry."""
from . import (attention, control, detect, elementwise, gather, linalg, nn, norm, quant, reduce, resize, rnn,  # noqa: F401
               prepared, shape, spectral, text, training)
from . import gelu, layernorm, conv_activation, attention_ort  # noqa: F401,E402  (each: graphopt's fused op and ORT's spelling of it)
from . import prepared_small  # noqa: F401,E402  (build-time specializations of small shape/convert ops, MatMul)
from . import pooling  # noqa: F401,E402  (build-time specialized MaxPool/AveragePool/global pools)
from . import prepared_split  # noqa: F401,E402  (Split with constant sizes: slices remembered per input shape)
from . import prepared_pad  # noqa: F401,E402  (Pad with constant pads: np.pad's work done once per input shape)
from . import contrib_quant  # noqa: F401,E402  (ORT's com.microsoft QOperator-format quantized ops: QLinearAdd, QGemm, ...)
from . import contrib_quant_lstm  # noqa: F401,E402  (ORT's com.microsoft DynamicQuantizeLSTM, from quantize_dynamic)
from . import ml_trees, ml_linear, ml_preprocess  # noqa: F401,E402  (ai.onnx.ml: tree ensembles, linear/SVM models, scikit-learn preprocessing)
