"""String ops, TfIdfVectorizer, ai.onnx.ml LabelEncoder / Binarizer. Strings are object arrays of str."""
from __future__ import annotations

import re

import numpy as np

from ..registry import kernel


def _str(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@kernel("StringConcat", 20)
def string_concat(ins, at):
    a, b = np.broadcast_arrays(ins[0], ins[1])
    out = np.array([_str(x) + _str(y) for x, y in zip(a.reshape(-1), b.reshape(-1))], dtype=object)
    return (out.reshape(a.shape),)


@kernel("RegexFullMatch", 20)
def regex_full_match(ins, at):
    pattern = re.compile(at["pattern"])
    x = ins[0]
    out = np.array([pattern.fullmatch(_str(v)) is not None for v in x.reshape(-1)], dtype=bool)
    return (out.reshape(x.shape),)


@kernel("StringSplit", 20)
def string_split(ins, at):
    x = ins[0]
    delim = at.get("delimiter") or None
    maxsplit = at.get("maxsplit")
    maxsplit = -1 if maxsplit is None else maxsplit
    parts = [_str(v).split(delim, maxsplit) for v in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    y = np.full((len(parts), width), "", dtype=object)
    for i, p in enumerate(parts):
        y[i, :len(p)] = p
    counts = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    return (y.reshape(x.shape + (width,)), counts)


@kernel("StringNormalizer", 10)
def string_normalizer(ins, at):
    x = ins[0]
    stop = at.get("stopwords") or []
    case_sensitive = at.get("is_case_sensitive") or 0
    action = at.get("case_change_action") or "NONE"
    flat = [_str(v) for v in x.reshape(-1)]
    if stop:
        if case_sensitive:
            stops = set(stop)
            flat = [w for w in flat if w not in stops]
        else:
            stops = {w.lower() for w in stop}
            flat = [w for w in flat if w.lower() not in stops]
    if action == "LOWER":
        flat = [w.lower() for w in flat]
    elif action == "UPPER":
        flat = [w.upper() for w in flat]
    if not flat:
        flat = [""]
    out = np.array(flat, dtype=object)
    return (out.reshape(1, -1) if x.ndim == 2 else out,)


@kernel("TfIdfVectorizer", 9)
def tfidf_vectorizer(ins, at):
    x = ins[0]
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    pool = at.get("pool_strings") or at.get("pool_int64s") or []
    if at.get("pool_strings"):
        rows = np.vectorize(_str, otypes=[object])(rows) if rows.size else rows
    counts = list(at["ngram_counts"]) + [len(pool)]
    indexes = at["ngram_indexes"]
    lookup, k = {}, 0
    for n in range(1, len(counts)):  # counts[n-1] .. counts[n] holds the n-grams, n items each
        start, end = counts[n - 1], counts[n]
        for j in range(start, end, n):
            lookup[tuple(pool[j:j + n])] = indexes[k]
            k += 1
    width = max(indexes) + 1 if indexes else 0
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    lo, hi, max_skip = at["min_gram_length"], at["max_gram_length"], at["max_skip_count"]
    for r, row in enumerate(rows):
        items = row.tolist()
        for n in range(lo, hi + 1):
            for skip in range(0, max_skip + 1 if n > 1 else 1):
                span = (n - 1) * (skip + 1)
                for s in range(0, len(items) - span):
                    key = tuple(items[s:s + span + 1:skip + 1])
                    if key in lookup:
                        out[r, lookup[key]] += 1
    weights = np.asarray(at.get("weights") or [1.0] * len(indexes), dtype=np.float32)
    w = np.zeros(width, np.float32)
    w[indexes] = weights
    if at["mode"] == "IDF":
        out = (out > 0) * w
    elif at["mode"] == "TFIDF":
        out = out * w
    out = out.astype(np.float32)
    return (out.reshape(-1) if x.ndim == 1 else out,)


@kernel("LabelEncoder", 1, domain="ai.onnx.ml")
def label_encoder(ins, at):
    x = ins[0]

    def pick(prefix, kinds):
        for kind in kinds:
            v = at.get(f"{prefix}_{kind}")
            if v is not None and len(v):
                return v
        return None
    keys = at.get("keys_tensor")
    keys = list(keys.reshape(-1)) if keys is not None else pick("keys", ["strings", "int64s", "floats"])
    values = at.get("values_tensor")
    if values is not None:
        vdtype, values = values.dtype, list(values.reshape(-1))
    else:
        for kind, dt in (("strings", object), ("int64s", np.int64), ("floats", np.float32)):
            if at.get(f"values_{kind}"):
                values, vdtype = at[f"values_{kind}"], np.dtype(dt)
                break
    default = at.get("default_tensor")
    if default is not None:
        default = default.reshape(-1)[0]
    elif vdtype == object:
        default = at.get("default_string") if at.get("default_string") is not None else "_Unused"
    elif vdtype.kind in "iu":
        default = at.get("default_int64") if at.get("default_int64") is not None else -1
    else:
        default = at.get("default_float") if at.get("default_float") is not None else -0.0
    table = {}
    nan_value = None
    for k, v in zip(keys, values):
        if isinstance(k, float) and np.isnan(k):
            nan_value = v
        else:
            table[_str(k) if isinstance(k, (str, bytes)) else k.item() if hasattr(k, "item") else k] = v
    flat = []
    for v in x.reshape(-1).tolist():
        if isinstance(v, float) and np.isnan(v):
            flat.append(nan_value if nan_value is not None else default)
        else:
            flat.append(table.get(_str(v) if isinstance(v, (str, bytes)) else v, default))
    return (np.array(flat, dtype=vdtype).reshape(x.shape),)


@kernel("Binarizer", 1, domain="ai.onnx.ml")
def binarizer(ins, at):
    x = ins[0]
    return ((x > at["threshold"]).astype(x.dtype),)
