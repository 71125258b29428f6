"""Shape and layout ops: reshape, transpose, concat/split, slice, squeeze, expand, tile, pad, ..."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from ..registry import kernel
from ._util import axes_of, ints, np_dtype


@kernel("Reshape", 5)
def reshape(ins, at):
    x, shape = ins[0], ints(ins[1])
    if not at.get("allowzero"):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return (x.reshape(shape),)


@kernel("Reshape", 1)
def reshape_v1(ins, at):
    return reshape([ins[0], np.array(at["shape"])], {})


@kernel("Flatten")
def flatten(ins, at):
    x = ins[0]
    axis = at["axis"] + x.ndim if at["axis"] < 0 else at["axis"]
    # math.prod: exact Python ints, ~0.2 us (np.prod's wrapper costs ~5 us a call)
    return (x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:])),)


@kernel("Transpose")
def transpose(ins, at):
    return (np.transpose(ins[0], at["perm"]),)


@kernel("Concat", 4)
def concat(ins, at):
    xs = [x for x in ins if x is not None]
    return (np.concatenate(xs, axis=at["axis"]),)


@kernel("Concat")
def concat_v1(ins, at):
    return concat(ins, {"axis": at.get("axis") if at.get("axis") is not None else 1})


@kernel("Split", 1)
def split(ins, at):
    x = ins[0]
    axis = at["axis"] % x.ndim if x.ndim else 0
    sizes = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("split")
    if sizes is None or len(ints(sizes)) == 0:
        n = at.get("num_outputs") or at["__n_outputs__"]
        dim = x.shape[axis]
        if at.get("num_outputs") is not None:
            step = -(-dim // n)  # ceil: the last chunk is smaller
            sizes = [min(step, dim - i * step) for i in range(n)]
        else:
            sizes = [dim // n] * n
    sizes = ints(sizes)
    if sum(sizes) != x.shape[axis] or min(sizes) < 0:  # np.split would cut a wrong last part silently
        raise ValueError(f"split sizes {sizes} do not add up to the {x.shape[axis]} values of axis {axis}")
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, bounds, axis=axis))


def _split_outputs(ins, at):
    return split(ins, at, n_out=at.get("__n_out__"))


@kernel("Squeeze", 13)
def squeeze(ins, at):
    x = ins[0]
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else None
    if axes is None:
        return (np.squeeze(x),)
    return (np.squeeze(x, axis=axes_of(axes, x.ndim)),)


@kernel("Squeeze", 1)
def squeeze_v1(ins, at):
    return squeeze([ins[0], at.get("axes")], at)


@kernel("Unsqueeze", 13)
def unsqueeze(ins, at):
    x = ins[0]
    axes = ints(ins[1])
    out_rank = x.ndim + len(axes)
    return (np.expand_dims(x, tuple(sorted(a % out_rank for a in axes))),)


@kernel("Unsqueeze", 1)
def unsqueeze_v1(ins, at):
    return unsqueeze([ins[0], np.array(at["axes"])], at)


@kernel("Expand", 8)
def expand(ins, at):
    x, shape = ins[0], ints(ins[1])
    out = np.broadcast_shapes(x.shape, tuple(shape))
    return (np.broadcast_to(x, out).copy(),)


@kernel("Tile", 6)
def tile(ins, at):
    return (np.tile(ins[0], ints(ins[1])),)


@kernel("Shape", 1)
def shape(ins, at):
    dims = ins[0].shape
    start, end = at.get("start") or 0, at.get("end")
    return (np.array(dims[start:end] if end is not None else dims[start:], dtype=np.int64),)


@kernel("Size")
def size(ins, at):
    return (np.array(np.size(ins[0]), dtype=np.int64),)


@kernel("ConstantOfShape", 9)
def constant_of_shape(ins, at):
    value = at.get("value")
    value = np.zeros(1, np.float32) if value is None else value
    return (np.full(ints(ins[0]), value.reshape(-1)[0], dtype=value.dtype),)


@kernel("Constant")
def constant(ins, at):
    for key in ("value", "sparse_value"):
        if at.get(key) is not None:
            return (at[key],)
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                    ("value_ints", np.int64), ("value_string", object), ("value_strings", object)):
        if at.get(key) is not None:
            return (np.array(at[key], dtype=dt),)
    raise ValueError("Constant without a value")


@kernel("Range", 11)
def range_(ins, at):
    start, limit, delta = (x.reshape(()) for x in ins)
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return ((start + np.arange(n, dtype=np.int64 if start.dtype.kind in "iu" else start.dtype) * delta)
            .astype(start.dtype),)


def _slice_v1(ins, at):
    x = ins[0]
    axes = at.get("axes") or list(range(len(at["starts"])))
    return slice_([x, np.array(at["starts"]), np.array(at["ends"]), np.array(axes)], at)


def slice_index(shape, starts, ends, axes=None, steps=None) -> tuple:
    """Slice's index tuple for an input of this shape (axes/steps default to all/1)."""
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = shape[a]
        # clamp huge sentinels (INT_MAX, -INT_MAX) so Python slicing sees sane bounds
        s = max(min(s, dim), -dim - 1)
        e = max(min(e, dim), -dim - 1)
        if st < 0 and e < -dim:
            e = None
        index[a % len(shape)] = slice(s, e, st)
    return tuple(index)


@kernel("Slice", 10)
def slice_(ins, at):
    x, starts, ends = ins[0], ints(ins[1]), ints(ins[2])
    axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    return (x[slice_index(x.shape, starts, ends, axes, steps)],)


kernel("Slice", 1)(_slice_v1)


@kernel("Pad", 11)
def pad(ins, at):
    x, pads = ins[0], ints(ins[1])
    value = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].size else 0
    axes = axes_of(ins[3], x.ndim) if len(ins) > 3 and ins[3] is not None else tuple(range(x.ndim))
    n = len(axes)
    width = [[0, 0] for _ in range(x.ndim)]
    for i, a in enumerate(axes):
        width[a] = [pads[i], pads[i + n]]
    # negative pads crop
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(width))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    mode = at.get("mode", "constant")
    if mode == "constant":
        return (np.pad(x, width, mode="constant", constant_values=np.asarray(value).reshape(-1)[0]
                       if np.ndim(value) else value),)
    return (np.pad(x, width, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode]),)


@kernel("Pad", 2)
def pad_v2(ins, at):
    return pad([ins[0], np.array(at["pads"]), np.array(at.get("value") or 0.0, ins[0].dtype)], at)


@kernel("CenterCropPad", 18)
def center_crop_pad(ins, at):
    x, shape = ins[0], ints(ins[1])
    axes = axes_of(at["axes"], x.ndim) if at.get("axes") else tuple(range(x.ndim))
    for a, want in zip(axes, shape):
        dim = x.shape[a]
        if want < dim:
            start = (dim - want) // 2
            x = np.take(x, np.arange(start, start + want), axis=a)
        elif want > dim:
            before = (want - dim) // 2
            width = [(0, 0)] * x.ndim
            width[a] = (before, want - dim - before)
            x = np.pad(x, width)
    return (x,)


@kernel("Cast", 1)
def cast(ins, at):
    return (cast_to(ins[0], np_dtype(at["to"]), at.get("saturate", 1), at.get("round_mode") or "up"),)


@kernel("CastLike", 15)
def cast_like(ins, at):
    return (cast_to(ins[0], ins[1].dtype, at.get("saturate", 1), at.get("round_mode") or "up"),)


_FLOAT8 = {"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"}


def cast_to(x: np.ndarray, dtype, saturate=1, round_mode="up") -> np.ndarray:
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if dtype.name == "float8_e8m0fnu":
        return _to_e8m0(x, saturate, round_mode)
    if dtype == object:
        return _to_strings(x)
    if x.dtype == object:
        return np.array([_parse(v, dtype) for v in x.reshape(-1)], dtype=np.float64 if dtype.kind == "f"
                        else dtype).reshape(x.shape).astype(dtype)
    if dtype.name in _FLOAT8 and saturate and x.dtype.kind == "f":
        finfo_max = float(ml_dtypes.finfo(dtype).max)
        x32 = x.astype(np.float32)
        x32 = np.where(np.isnan(x32), x32, np.clip(x32, -finfo_max, finfo_max))
        return x32.astype(dtype)
    if dtype.name in _FLOAT8 or x.dtype.name in _FLOAT8 or dtype.name.startswith(("float4", "int4", "uint4")):
        return x.astype(np.float32).astype(dtype) if x.dtype.kind not in "iub" else x.astype(dtype)
    return x.astype(dtype)


def _to_e8m0(x, saturate, round_mode):
    """float8e8m0 holds only powers of two: pick the exponent by round_mode."""
    xf = np.abs(x.astype(np.float64))
    m, e = np.frexp(xf)  # xf = m * 2**e with m in [0.5, 1)
    k = (e - 1).astype(np.float64)
    frac = 2 * m  # in [1, 2)
    if round_mode == "up":
        k = k + (frac > 1)
    elif round_mode == "nearest":
        k = k + (frac >= 1.5)
    k = np.where(xf == 0, -127, k)
    big = np.isinf(xf) | (k > 127)
    k = np.clip(k, -127, 127)
    out = np.exp2(k)
    out = np.where(big, np.float64(2.0 ** 127) if saturate else np.nan, out)
    out = np.where(np.isnan(xf), np.nan, out)
    return out.astype(np.float32).astype(ml_dtypes.float8_e8m0fnu)


def _parse(v, dtype):
    s = v.decode() if isinstance(v, bytes) else str(v)
    if dtype.kind == "f":
        return float(s)
    if dtype.kind == "b":
        return s.lower() in ("1", "true")
    return int(s)


def _to_strings(x):
    flat = x.reshape(-1)
    if x.dtype.kind == "f":
        out = [_float_str(v) for v in flat.astype(np.float32 if x.dtype.itemsize <= 4 else x.dtype)]
    else:
        out = [str(v) for v in flat.tolist()]
    return np.array(out, dtype=object).reshape(x.shape)


def _float_str(v) -> str:
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "INF" if v > 0 else "-INF"
    return np.format_float_positional(v, unique=True, trim="-") if abs(v) >= 1e-4 and abs(v) < 1e16 \
        else np.format_float_scientific(v, unique=True, trim="-")


@kernel("DepthToSpace", 11)
def depth_to_space(ins, at):
    x, b = ins[0], at["blocksize"]
    n, c, h, w = x.shape
    if at.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // b // b, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // b // b, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return (y.reshape(n, c // b // b, h * b, w * b),)


kernel("DepthToSpace", 1)(depth_to_space)


@kernel("SpaceToDepth", 1)
def space_to_depth(ins, at):
    x, b = ins[0], at["blocksize"]
    n, c, h, w = x.shape
    if at.get("mode") == "CRD":
        y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 1, 3, 5, 2, 4)
    else:
        y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return (y.reshape(n, c * b * b, h // b, w // b),)


@kernel("Trilu", 14)
def trilu(ins, at):
    x = ins[0]
    k = int(ins[1].reshape(())) if len(ins) > 1 and ins[1] is not None else 0
    return ((np.triu(x, k) if at["upper"] else np.tril(x, k)),)


@kernel("EyeLike", 9)
def eye_like(ins, at):
    x = ins[0]
    dtype = np_dtype(at["dtype"]) if at.get("dtype") is not None else x.dtype
    return (np.eye(x.shape[0], x.shape[1], k=at["k"], dtype=dtype),)


@kernel("ReverseSequence", 10)
def reverse_sequence(ins, at):
    x, lens = ins[0], ints(ins[1])
    tax, bax = at["time_axis"], at["batch_axis"]
    y = x.copy()
    for b, n in enumerate(lens):
        src = [slice(None)] * x.ndim
        src[bax], src[tax] = b, slice(0, n)
        dst = list(src)
        dst[tax] = slice(n - 1, None, -1) if n > 0 else slice(0, 0)
        y[tuple(src)] = x[tuple(dst)]
    return (y,)


@kernel("BitCast", 26)
def bitcast(ins, at):
    x, dtype = ins[0], np_dtype(at["to"])
    if dtype.itemsize == x.dtype.itemsize:
        return (x.view(dtype),)
    return (np.ascontiguousarray(x).view(dtype).reshape(x.shape + (-1,)) if dtype.itemsize < x.dtype.itemsize
            else np.ascontiguousarray(x).view(dtype).reshape(x.shape[:-1]),)
