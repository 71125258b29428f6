"""What a session's inputs and outputs look like, and the checks on a feed: shared by the CPU and the
GPU session (the onnxruntime.InferenceSession surface: NodeArg, get_inputs, run's feed errors)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from graphopt import ir
from graphopt.errors import UsageError
from graphopt.kernels.cpu._util import np_dtype

_ELEM_NAMES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


def type_string(tp: onnx.TypeProto) -> str:
    """ORT's spelling of a type: tensor(float), seq(tensor(int64)), optional(...)."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        elem = tp.tensor_type.elem_type
        return f"tensor({_ELEM_NAMES.get(elem, 'undefined')})"
    if kind == "sequence_type":
        return f"seq({type_string(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_string(tp.optional_type.elem_type)})"
    if kind == "map_type":
        key = _ELEM_NAMES.get(tp.map_type.key_type, "undefined")
        return f"map({key},{type_string(tp.map_type.value_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({_ELEM_NAMES.get(tp.sparse_tensor_type.elem_type, 'undefined')})"
    return "unknown"


@dataclass
class NodeArg:
    """What get_inputs()/get_outputs() return: the fields of onnxruntime.NodeArg."""
    name: str
    shape: list | None
    type: str
    type_proto: onnx.TypeProto = field(repr=False, default=None)

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


def node_arg(vi: onnx.ValueInfoProto) -> NodeArg:
    shape = None
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is not None and tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return NodeArg(vi.name, shape, type_string(vi.type), vi.type)


def check_feed_names(feed: dict, known: dict, overridable=()) -> None:
    """UsageError for a feed name the model does not have (initializers in `overridable` may be
    fed) or a model input the feed lacks."""
    extra = [k for k in feed if k not in known and k not in overridable]
    if extra:
        raise UsageError(f"feed has unknown input(s) {extra}; the model's inputs are {list(known)}")
    missing = [k for k in known if k not in feed]
    if missing:
        raise UsageError(f"missing input(s) {missing}; the model's inputs are {list(known)}")


def feed_spec(arg: NodeArg):
    """(dtype, rank, fixed dims) for an input a plain ndarray can be checked against, else ()."""
    tp = arg.type_proto
    if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.elem_type \
            or not tp.tensor_type.HasField("shape"):
        return ()
    want = np_dtype(tp.tensor_type.elem_type)
    if want == object:
        return ()
    dims = tp.tensor_type.shape.dim
    return (want, len(dims), [(i, d.dim_value) for i, d in enumerate(dims) if d.HasField("dim_value")])


def fits_spec(spec, value) -> bool:
    """`value` is a plain ndarray that feed_spec's (dtype, rank, fixed dims) accepts as it is."""
    return bool(spec) and type(value) is np.ndarray and value.dtype == spec[0] and value.ndim == spec[1] \
        and all(value.shape[i] == d for i, d in spec[2])


def as_outputs(outputs: list) -> list:
    for r in outputs:
        if type(r) is not np.ndarray:  # rare (NumPy scalars, sequences): converted where needed
            return [as_output(r) for r in outputs]
    return outputs


def as_output(value):
    if isinstance(value, np.ndarray) or value is None or isinstance(value, list):
        return value
    return np.asarray(value)


def check_value(arg: NodeArg, value):
    tp = arg.type_proto
    if tp is None or not tp.HasField("tensor_type"):
        return value  # sequences, optionals, maps: passed through as given
    elem = tp.tensor_type.elem_type
    want = np_dtype(elem) if elem else None
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value, dtype=want if want is not None and want != object else None)
        except (TypeError, ValueError) as e:
            raise UsageError(f"input {arg.name!r}: expected {arg.type}, got {type(value).__name__}") from e
    if want is not None:
        got = value.dtype
        ok = got == want or (want == object and got.kind in "OUS")
        if not ok:
            got_s = f"tensor({_ELEM_NAMES.get(elem_type_of(got), str(got))})"
            raise UsageError(f"input {arg.name!r}: expected {arg.type}, got {got_s}")
        if want == object and got.kind in "US":
            value = value.astype(object)
    if tp.tensor_type.HasField("shape"):
        dims = tp.tensor_type.shape.dim
        if value.ndim != len(dims):
            raise UsageError(f"input {arg.name!r}: expected rank {len(dims)} (shape {arg.shape}), "
                             f"got rank {value.ndim} (shape {list(value.shape)})")
        for i, (d, got) in enumerate(zip(dims, value.shape)):
            if d.HasField("dim_value") and d.dim_value != got:
                raise UsageError(f"input {arg.name!r}: expected shape {arg.shape}, got {list(value.shape)} "
                                 f"(dimension {i} must be {d.dim_value})")
    return value


def elem_type_of(dtype) -> int:
    try:
        return helper.np_dtype_to_tensor_dtype(dtype)
    except (KeyError, ValueError, TypeError):
        return 0


def load_model(model_or_path) -> onnx.ModelProto:
    """The compiler's loader, with all its checks (graphopt.ir.load_model): a Session reads models
    from strangers too. A missing file is a usage error here, as in onnxruntime."""
    if isinstance(model_or_path, (str, os.PathLike)) and not os.path.exists(model_or_path):
        raise UsageError(f"model file not found: {os.fspath(model_or_path)}")
    return ir.load_model(model_or_path)
