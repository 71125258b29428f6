"""Representative random inputs for a model, and a note saying what was assumed.

Random data that merely has the right dtype breaks real models: token ids beyond an embedding
table (ORT: "idx=2 must be within the inclusive range [-2,1]" for a 2-row token-type table), an
attention mask of random 0/1/2, a detector fed a 1x1 image (its upsampled feature maps no longer
match). So the data follows the model:
- an integer input read as Gather indices is drawn below the table's row count;
- an input whose name says mask is all ones;
- a symbolic or unnamed dim takes (first that applies) the user's value, the size a constant weight
  fixes (MatMul's K, Conv's input channels), 1 for a batch axis, an image size for the spatial axes
  of a 4-D float input (the model's `imgsz` metadata, else a multiple of its total conv/pool stride
  >= 224), 128 for a sequence axis (no longer than the model's position table), else 64.
Every assumption is listed by `InputPlan.note()`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.errors import Unsupported, UsageError

BATCH, SEQUENCE, IMAGE, OTHER = 1, 128, 224, 64
# ops that hand their input's values on unchanged (for "which Gather reads this input as indices")
_VALUE_PRESERVING = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}
_STRIDED = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool", "FusedConv", "NhwcConv"}
_BATCH_NAMES = re.compile(r"batch|^(n|b|bs|N|B)$", re.I)
_SEQUENCE_NAMES = re.compile(r"seq|len|token|time|step|word|sentence", re.I)
# com.microsoft EmbedLayerNormalization: index input -> the table input it reads
_EMBED_TABLES = {0: 2, 1: 4, 7: 3}


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list
    fill: str  # normal | ones | ints | bool
    high: int = 3  # ints: values in [0, high)
    why: str = ""

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.fill == "ones":
            return np.ones(self.shape, self.dtype)
        if self.fill == "bool":
            return np.asarray(rng.random(self.shape) < 0.5)
        if self.fill == "ints":
            return np.asarray(rng.integers(0, self.high, self.shape)).astype(self.dtype)
        return np.asarray(rng.standard_normal(self.shape)).astype(self.dtype)


@dataclass
class InputPlan:
    specs: list
    assumed: list = field(default_factory=list)  # "batch=1 (batch axis)", ...

    def feed(self, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        return {s.name: s.sample(rng) for s in self.specs}

    def note(self) -> str:
        """One paragraph: what each random input holds, and every dim that was guessed."""
        parts = []
        for s in self.specs:
            what = {"ones": "all ones", "bool": "random bools", "normal": "N(0,1)",
                    "ints": f"ints in [0, {s.high})"}[s.fill]
            parts.append(f"{s.name} {s.dtype} {list(s.shape)} {what}" + (f" ({s.why})" if s.why else ""))
        text = "random inputs: " + "; ".join(parts)
        if self.assumed:
            text += "\nassumed dims: " + ", ".join(self.assumed) + \
                " (set with --dim NAME=V or --input-shape INPUT=D0,D1,...)"
        return text


def plan_inputs(model: onnx.ModelProto, dims: dict | None = None, shapes: dict | None = None,
                skip=()) -> InputPlan:
    """Shapes and value ranges for every graph input not in `skip`.

    dims: symbolic dim name -> size; shapes: input name -> full shape (fixes unnamed dims too).
    Unknown names in either are a UsageError."""
    facts = _Facts(model)
    inputs = facts.inputs
    dims, shapes = dict(dims or {}), dict(shapes or {})
    known_dims = {dim_name(d) for vi in inputs for d in _dims_of(vi) if dim_name(d)}
    for name in dims:
        if name not in known_dims:
            raise UsageError(f"--dim {name}: the model has no symbolic dim '{name}' "
                             f"(its symbolic dims: {', '.join(sorted(known_dims)) or 'none'})")
    names = [vi.name for vi in inputs]
    for name, shape in shapes.items():
        if name not in names:
            raise UsageError(f"--input-shape {name}: the model has no input '{name}' (inputs: {', '.join(names)})")
        declared = _dims_of(next(vi for vi in inputs if vi.name == name))
        if len(declared) != len(shape):
            raise UsageError(f"--input-shape {name}: {len(shape)} dims given, the input has rank {len(declared)}")
        for axis, (d, size) in enumerate(zip(declared, shape)):
            if d.HasField("dim_value") and d.dim_value != size:
                raise UsageError(f"--input-shape {name}: axis {axis} is fixed at {d.dim_value} in the model, got {size}")
            if dim_name(d):
                if dims.setdefault(dim_name(d), size) != size:
                    raise UsageError(f"--input-shape {name}: dim '{dim_name(d)}' is {dims[dim_name(d)]} elsewhere, "
                                     f"got {size}")
    plan = InputPlan([])
    for vi in inputs:
        if vi.name in skip:
            continue
        if not vi.type.HasField("tensor_type"):
            raise Unsupported(f"cannot make random data for input '{vi.name}' (not a tensor; pass it with --input)")
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = []
        for axis, d in enumerate(_dims_of(vi)):
            if vi.name in shapes:
                shape.append(shapes[vi.name][axis])
            elif d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif dim_name(d) and dim_name(d) in dims:
                shape.append(dims[dim_name(d)])
            else:
                size, why = facts.guess_dim(vi, axis, dtype)
                label = dim_name(d) or f"{vi.name}[{axis}]"
                plan.assumed.append(f"{label}={size} ({why})")
                if dim_name(d):
                    dims[dim_name(d)] = size
                shape.append(size)
        plan.specs.append(facts.value_spec(vi.name, dtype, shape))
    return plan


def dim_name(d) -> str:
    """A symbolic dim's name, or '' for an unnamed one ('?' and '-1', as some exporters write, name nothing:
    two inputs' '?' dims need not be equal)."""
    return "" if d.dim_param in ("?", "-1") else d.dim_param


def _dims_of(vi) -> list:
    tt = vi.type.tensor_type
    return list(tt.shape.dim) if vi.type.HasField("tensor_type") and tt.HasField("shape") else []


class _Facts:
    """What the graph says about its inputs: constant tables, weights, strides, metadata."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.consts = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = a.t
        self.inputs = [vi for vi in g.input if vi.name not in self.consts]
        self.nodes = list(g.node)
        self.users: dict[str, list] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.users.setdefault(name, []).append((n, i))
        self.metadata = {p.key: p.value for p in model.metadata_props}
        self._stride = None

    def const_shape(self, name: str):
        t = self.consts.get(name)
        return list(t.dims) if t is not None else None

    def reached(self, name: str):
        """(node, input index) of every user of `name`, looking through value-preserving ops."""
        seen, todo, found = {name}, [name], []
        while todo:
            for node, i in self.users.get(todo.pop(), []):
                if node.op_type in _VALUE_PRESERVING and i == 0:
                    for out in node.output:
                        if out not in seen:
                            seen.add(out)
                            todo.append(out)
                else:
                    found.append((node, i))
        return found

    def table_rows(self, name: str):
        """The smallest row count of an embedding table read with this input as indices, and its name."""
        best = None
        for node, i in self.reached(name):
            table = None
            if node.op_type == "Gather" and i == 1:
                table, axis = node.input[0], _attr(node, "axis", 0)
            elif node.op_type == "EmbedLayerNormalization" and i in _EMBED_TABLES \
                    and len(node.input) > _EMBED_TABLES[i]:
                table, axis = node.input[_EMBED_TABLES[i]], 0
            shape = self.const_shape(table) if table else None
            if shape:
                rows = shape[axis if axis >= 0 else axis + len(shape)]
                if best is None or rows < best[0]:
                    best = (rows, table)
        return best

    def value_spec(self, name: str, dtype: np.dtype, shape: list) -> InputSpec:
        if "mask" in name.lower():
            return InputSpec(name, dtype, shape, "ones", why="a mask, by its name")
        if dtype == np.bool_:
            return InputSpec(name, dtype, shape, "bool")
        if np.issubdtype(dtype, np.integer):
            table = self.table_rows(name)
            if table:
                return InputSpec(name, dtype, shape, "ints", table[0], f"indices into '{table[1]}', {table[0]} rows")
            return InputSpec(name, dtype, shape, "ints")
        if np.issubdtype(dtype, np.floating):
            return InputSpec(name, dtype, shape, "normal")
        raise Unsupported(f"cannot make random data for input '{name}' of type {dtype} (pass it with --input)")

    def guess_dim(self, vi, axis: int, dtype: np.dtype) -> tuple[int, str]:
        d = _dims_of(vi)[axis]
        rank, label = len(_dims_of(vi)), dim_name(d)
        weight = self.weight_dim(vi.name, axis, rank)
        if weight:
            return weight
        if _BATCH_NAMES.search(label) or (axis == 0 and rank >= 2):
            return BATCH, "batch axis"
        floating = np.issubdtype(dtype, np.floating)
        if floating and rank == 4 and axis in (2, 3):
            return self.image_size(axis - 2)
        last = _dims_of(vi)[-1]
        if floating and rank == 4 and axis in (1, 2) and last.HasField("dim_value") and last.dim_value in (1, 3, 4):
            return self.image_size(axis - 1)  # NHWC: channels last
        if _SEQUENCE_NAMES.search(label) or (np.issubdtype(dtype, np.integer) and axis >= 1):
            return self.sequence_length()
        return OTHER, "no better guess"

    def weight_dim(self, name: str, axis: int, rank: int):
        """A dim that a constant weight fixes: x's last axis in MatMul(x, W) / Gemm, axis 1 in Conv(x, W)."""
        for node, i in self.users.get(name, []):
            w = self.const_shape(node.input[1]) if i == 0 and len(node.input) > 1 else None
            if not w:
                continue
            if node.op_type == "MatMul" and axis == rank - 1 and len(w) >= 2:
                return w[-2], f"rows of weight '{node.input[1]}'"
            if node.op_type == "Gemm" and axis == (0 if _attr(node, "transA", 0) else 1) and len(w) == 2:
                return w[1 if _attr(node, "transB", 0) else 0], f"weight '{node.input[1]}'"
            if node.op_type == "Conv" and axis == 1 and len(w) >= 3:
                return w[1] * _attr(node, "group", 1), f"input channels of weight '{node.input[1]}'"
        return None

    def image_size(self, which: int) -> tuple[int, str]:
        for key in ("imgsz", "image_size", "input_size"):
            sizes = [int(s) for s in re.findall(r"\d+", self.metadata.get(key, ""))]
            if sizes:
                return sizes[min(which, len(sizes) - 1)], f"model metadata '{key}'"
        stride = self.total_stride()
        size = max(stride, math.ceil(IMAGE / stride) * stride)
        return size, f"image side, a multiple of the model's total stride {stride}"

    def total_stride(self) -> int:
        """The largest downsampling factor along any path (Conv/pool strides, divided by Resize scales)."""
        if self._stride is None:
            stride: dict[str, float] = {}
            for n in self.nodes:
                s = max([stride.get(i, 1.0) for i in n.input if i] or [1.0])
                if n.op_type in _STRIDED:
                    s *= max(_attr(n, "strides", [1]) or [1])
                elif n.op_type == "ConvTranspose":
                    s /= max(_attr(n, "strides", [1]) or [1])
                elif n.op_type in ("Resize", "Upsample"):
                    scales = self.consts.get(n.input[2] if n.op_type == "Resize" and len(n.input) > 2
                                             else n.input[-1])
                    values = numpy_helper.to_array(scales).ravel() if scales is not None else []
                    if len(values) >= 3:
                        s /= max(float(max(values[2:])), 1.0)
                for out in n.output:
                    stride[out] = max(s, 1.0)
            self._stride = int(round(max(stride.values(), default=1.0)))
        return self._stride

    def sequence_length(self) -> tuple[int, str]:
        """128, or fewer when a position table (>= 16 rows, not indexed by an input) is shorter."""
        indexed = {id(n) for vi in self.inputs for n, _ in self.reached(vi.name)}
        cap = None
        for n in self.nodes:
            shape = self.const_shape(n.input[0]) if n.op_type == "Gather" and n.input else None
            if shape and len(shape) == 2 and 16 <= shape[0] < SEQUENCE and id(n) not in indexed:
                if cap is None or shape[0] < cap[0]:
                    cap = (shape[0], n.input[0])
        if cap:
            return cap[0], f"sequence, no longer than position table '{cap[1]}'"
        return SEQUENCE, "sequence"


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default

