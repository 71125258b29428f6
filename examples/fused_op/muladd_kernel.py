"""The kernel file of a fused op: ai.graphopt MulAdd(x, a, b) = x * a + b, in one pass over one buffer.

`shape_from_shapes=True` records the op fact the runtime needs to specialize plans through it
(the output has x's shape). A built-in kernel file lives in kernels/cpu/ and is imported from
kernels/cpu/__init__.py.
"""
import numpy as np

from graphopt.kernels.registry import kernel


@kernel("MulAdd", 1, domain="ai.graphopt", shape_from_shapes=True)
def mul_add(inputs, attrs):
    x, a, b = inputs
    y = np.multiply(x, a)  # the one new buffer; the Add writes into it
    np.add(y, b, out=y)
    return (y,)
