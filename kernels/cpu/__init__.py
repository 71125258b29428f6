"""NumPy CPU kernels. Importing this package registers every kernel in graphopt.kernels.registry."""
from . import (attention, control, detect, elementwise, gather, linalg, nn, norm, quant, reduce, resize, rnn,  # noqa: F401
               shape, spectral, text, training)
