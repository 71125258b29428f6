"""ai.onnx.ml preprocessing ops that scikit-learn exports write: Scaler, Normalizer, OneHotEncoder,
Imputer, CategoryMapper, FeatureVectorizer, and ZipMap (class probabilities as a list of one
{label: probability} dict per row, which is what onnxruntime's Python API returns for a
sequence of maps). Strings are object arrays of str, as in text.py. LabelEncoder, Binarizer
(text.py) and ArrayFeatureExtractor (gather.py) were registered before these.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import Unsupported

from ..registry import DYNAMIC, kernel, kernel_from_attributes, prepare
from .ml_transforms import row_max, row_sum

ML = "ai.onnx.ml"


def _text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def make_scaler(at):
    offset = np.asarray(at.get("offset") or [0.0], np.float32)
    scale = np.asarray(at.get("scale") or [1.0], np.float32)

    def run(ins, _at=None):
        x = ins[0]
        width = x.shape[-1] if x.ndim else 1
        if len(offset) not in (1, width) or len(scale) not in (1, width):
            raise Unsupported(f"Scaler: {len(offset)} offsets, {len(scale)} scales for {width} features")
        y = np.subtract(x, offset, dtype=np.float32)
        y *= scale
        return (y,)
    return run


kernel_from_attributes("Scaler", make_scaler, domain=ML)


@kernel("Normalizer", 1, domain=ML)
@np.errstate(divide="ignore", invalid="ignore")  # a zero row gives NaN/inf, as in ORT
def normalizer(ins, at):
    x = ins[0] if ins[0].dtype == np.float32 else ins[0].astype(np.float32)
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    norm = at.get("norm") or "MAX"
    if norm == "MAX":
        d = row_max(rows)
    elif norm == "L1":
        d = row_sum(np.abs(rows))
    elif norm == "L2":
        d = np.sqrt(row_sum(np.square(rows)))
    else:
        raise Unsupported(f"Normalizer: norm {norm!r}")
    return (np.divide(rows, d).reshape(x.shape),)


@prepare("OneHotEncoder", 1, domain=ML)
def _prepare_one_hot_encoder(at, constants, generic):
    """Integer categories: one broadcast comparison of the values against all categories."""
    cats = at.get("cats_int64s")
    if at.get("cats_strings") or not cats or len(set(cats)) != len(cats):
        return None
    cats = np.asarray(cats, np.int64)
    zeros = at.get("zeros", 1)

    def run(ins, _at=None):
        x = ins[0]
        if x.dtype.kind not in "iuf":
            return generic(ins, at)
        values = x if x.dtype == np.int64 else x.astype(np.int64)  # floats truncated, as ORT casts
        hits = np.equal(values[..., None], cats)
        if not zeros and not hits.any(axis=-1).all():
            raise ValueError("OneHotEncoder: an input value is not among the categories and zeros=0")
        return (hits.astype(np.float32),)
    return run


@prepare("ArrayFeatureExtractor", 1, domain=ML)
def _prepare_array_feature_extractor(at, constants, generic):
    """Constant indices (what skl2onnx writes to pick columns): converted once."""
    if len(constants) < 2 or constants[1] is None or constants[1] is DYNAMIC:
        return None
    index = np.asarray(constants[1], np.int64).reshape(-1)
    if index.size == 0:
        return None

    def run(ins, _at=None):
        x = ins[0]
        if x.ndim == 0 or not (-x.shape[-1] <= index.min() and index.max() < x.shape[-1]):
            return generic(ins, at)  # the generic kernel reports the bad index
        return (x.take(index, axis=-1),)
    return run


@kernel("OneHotEncoder", 1, domain=ML)
def one_hot_encoder(ins, at):
    x = ins[0]
    strings = at.get("cats_strings")
    cats = strings if strings else at.get("cats_int64s")
    if not cats:
        raise Unsupported("OneHotEncoder without categories")
    flat = x.reshape(-1)
    if strings:
        index = {c: k for k, c in enumerate(cats)}
        pos = np.array([index.get(_text(v), -1) for v in flat.tolist()], np.int64)
    else:
        values = flat.astype(np.int64) if flat.dtype.kind == "f" else flat
        order = np.argsort(cats, kind="stable")
        sorted_cats = np.asarray(cats, np.int64)[order]
        at_pos = np.clip(np.searchsorted(sorted_cats, values), 0, len(cats) - 1)
        pos = np.where(sorted_cats[at_pos] == values, order[at_pos], -1)
    if not at.get("zeros", 1) and (pos < 0).any():
        raise ValueError("OneHotEncoder: an input value is not among the categories and zeros=0")
    out = np.zeros((len(flat), len(cats)), np.float32)
    hit = pos >= 0
    out[np.nonzero(hit)[0], pos[hit]] = 1.0
    return (out.reshape(x.shape + (len(cats),)),)


@prepare("ZipMap", 1, domain=ML)
def _prepare_zip_map(at, constants, generic):
    """A row-to-dict function written out for the labels: `{0: a, 1: b, 2: c}` built from a row's
    unpacked values takes half the time of dict(zip(labels, row)) (1000 rows: 220 vs 410 us)."""
    labels = at.get("classlabels_strings") or at.get("classlabels_int64s")
    if not labels or len(labels) > 64 or len(set(labels)) != len(labels):
        return None
    names = [f"v{i}" for i in range(len(labels))]
    pairs = ", ".join(f"{label!r}: {name}" for label, name in zip(labels, names))
    source = f"def rows_to_dicts(rows):\n    return [{{{pairs}}} for {', '.join(names)}, in rows]\n"
    env: dict = {}
    exec(compile(source, "<graphopt ZipMap>", "exec"), env)  # noqa: S102  (labels only as repr() literals)
    rows_to_dicts = env["rows_to_dicts"]

    def run(ins, _at=None):
        x = ins[0]
        rows = x.reshape(1, -1) if x.ndim == 1 else x
        if rows.ndim != 2 or rows.shape[1] != len(labels):
            return generic(ins, at)
        return (rows_to_dicts(rows.tolist()),)
    return run


@kernel("ZipMap", 1, domain=ML)
def zip_map(ins, at):
    x = ins[0]
    labels = at.get("classlabels_strings") or at.get("classlabels_int64s")
    if not labels:
        raise Unsupported("ZipMap without class labels")
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    if rows.shape[1] != len(labels):
        raise ValueError(f"ZipMap: {rows.shape[1]} columns for {len(labels)} labels")
    keys = list(labels)
    return ([dict(zip(keys, row)) for row in rows.tolist()],)


@kernel("Imputer", 1, domain=ML)
def imputer(ins, at):
    x = ins[0]
    if x.dtype.kind == "f":
        fill = at.get("imputed_value_floats") or []
        target = at.get("replaced_value_float")
        target = 0.0 if target is None else target
        missing = np.isnan(x) if np.isnan(target) else x == np.float32(target)
    else:
        fill = at.get("imputed_value_int64s") or []
        target = at.get("replaced_value_int64")
        missing = x == (0 if target is None else target)
    width = x.shape[-1] if x.ndim else 1
    if len(fill) not in (1, width):
        raise Unsupported(f"Imputer: {len(fill)} imputed values for {width} features")
    fill = np.broadcast_to(np.asarray(fill, x.dtype), x.shape)
    return (np.where(missing, fill, x),)


@kernel("CategoryMapper", 1, domain=ML)
def category_mapper(ins, at):
    x = ins[0]
    strings, ints = at.get("cats_strings") or [], at.get("cats_int64s") or []
    if len(strings) != len(ints):
        raise Unsupported("CategoryMapper: cats_strings and cats_int64s differ in length")
    flat = x.reshape(-1).tolist()
    if x.dtype.kind in "OUS":
        table = dict(zip(strings, ints))
        default = at.get("default_int64")
        default = -1 if default is None else default
        out = np.array([table.get(_text(v), default) for v in flat], np.int64)
    else:
        table = dict(zip(ints, strings))
        default = at.get("default_string")
        default = "_Unused" if default is None else default
        out = np.array([table.get(v, default) for v in flat], dtype=object)
    return (out.reshape(x.shape),)


@kernel("FeatureVectorizer", 1, domain=ML)
def feature_vectorizer(ins, at):
    dims = at.get("inputdimensions") or []
    if len(dims) != len(ins):
        raise Unsupported(f"FeatureVectorizer: {len(ins)} inputs, {len(dims)} inputdimensions")
    n = ins[0].shape[0] if ins[0].ndim > 1 else 1
    parts = []
    for x, d in zip(ins, dims):
        rows = x.reshape(n, -1).astype(np.float32)
        part = np.zeros((n, d), np.float32)  # shorter inputs are padded with zeros, longer cut
        w = min(d, rows.shape[1])
        part[:, :w] = rows[:, :w]
        parts.append(part)
    return (np.concatenate(parts, axis=1),)
