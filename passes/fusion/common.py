"""Checks and small numeric helpers shared by the fusion rule files (nothing here rewrites)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphopt import ir
from graphopt.compiler.rewrite import attr_value, close_to

FLOAT_TYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) in FLOAT_TYPES


def near(value: np.ndarray, target: float, tol: float = 1e-5) -> bool:
    """A single-element constant close to `target` (absolute `tol`, or the dtype's own rounding)."""
    return close_to(value, target, rtol=0.0, atol=tol)


def scalar_like(c: np.ndarray, x: gs.Tensor) -> bool:
    """A one-element constant that cannot raise x's rank when broadcast against it."""
    if c.size != 1:
        return False
    return c.ndim == 0 or (ir.rank(x) is not None and c.ndim <= ir.rank(x))


def axis_vector(c: np.ndarray, rank: int, axis: int, size: int | None) -> np.ndarray | None:
    """If constant c, broadcast against a rank-`rank` tensor, varies only along `axis` (and cannot
    change that tensor's shape), return its values as a vector of length `size`; else None.
    size None: the extent of `axis` is unknown, so only a single value is acceptable."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis % rank):
        return None
    along = shape[axis % rank]
    if along == 1:
        return np.full(size if size is not None else 1, c.reshape(-1)[0], dtype=c.dtype)
    if size is None or along != size:
        return None
    return c.reshape(-1)


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.inputs[index] if len(node.inputs) > index and not node.inputs[index].is_empty() else None


def only_first_output_used(graph: gs.Graph, node: gs.Node) -> bool:
    return all(not o.outputs and not ir.is_graph_output(graph, o) for o in node.outputs[1:])


def output_is_renamable(m, replacement: str = "x") -> str | None:
    """A rule that returns an existing value needs that value to take over a graph output's name."""
    out = m.root.outputs[0]
    if ir.is_graph_output(m.graph, out) and not ir.can_take_over(m.graph, out, m[replacement]):
        return "output is a graph output that must keep its name"
    return None


def axes_of(node: gs.Node, opset: int, input_since: int) -> list[int] | None:
    """`axes` of a Reduce*/Squeeze/Unsqueeze: an attribute before `input_since`, an input after.
    None when absent or not constant."""
    if opset < input_since:
        axes = attr_value(node, "axes", opset)
        return None if axes is None else [int(a) for a in axes]
    t = optional_input(node, 1)
    value = None if t is None else ir.const_value(t)
    return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]


def out_like(m, node: gs.Node | None = None) -> dict:
    """dtype/shape of the root's (or `node`'s) first output, for the node that replaces it."""
    out = (node or m.root).outputs[0]
    return {"dtype": out.dtype, "shape": out.shape}
