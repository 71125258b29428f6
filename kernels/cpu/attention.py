"""Transformer ops: Attention (MHA / GQA / MQA, KV cache, masks, softcap, windows) and RotaryEmbedding."""
from __future__ import annotations

import numpy as np

from ..registry import kernel
from ._util import np_dtype, row_sums


def split_heads(x, n):
    """(B, S, n*D) -> (B, n, S, D)."""
    b, s, _ = x.shape
    return x.reshape(b, s, n, -1).transpose(0, 2, 1, 3)


@kernel("Attention", 23)
def attention(ins, at):
    get = lambda i: ins[i] if len(ins) > i else None  # noqa: E731
    q, k, v = ins[0], ins[1], ins[2]
    mask, past_k, past_v, nonpad = get(3), get(4), get(5), get(6)
    out_dtype = q.dtype
    three_d = q.ndim == 3
    if three_d:
        q, k, v = split_heads(q, at["q_num_heads"]), split_heads(k, at["kv_num_heads"]), split_heads(v, at["kv_num_heads"])
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)
        v = np.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    b, qh, sq, d = q.shape
    kvh, sk = k.shape[1], k.shape[2]
    past_len = past_k.shape[2] if past_k is not None else 0
    if qh != kvh:  # grouped-query attention: each kv head serves qh / kvh query heads
        k, v = np.repeat(k, qh // kvh, axis=1), np.repeat(v, qh // kvh, axis=1)
    calc = np.float64 if out_dtype == np.float64 else np.float32
    scale = at.get("scale") or 1.0 / np.sqrt(d)
    s = np.sqrt(scale)
    # half-precision inputs: round each stage to the input type, as a half-precision runtime does
    rnd = (lambda a: a.astype(out_dtype).astype(calc)) if out_dtype.itemsize < 4 else (lambda a: a)
    qs, ks = rnd(q.astype(calc) * s), rnd(k.astype(calc) * s)
    scores = rnd(np.matmul(qs, np.swapaxes(ks, -1, -2)))  # (B, H, Sq, Sk)
    qk = {0: scores}
    if at.get("softcap"):
        cap = at["softcap"]
        scores = cap * np.tanh(scores / cap)
    qk[1] = scores
    bias = np.zeros((1, 1, sq, sk), calc)
    allowed = np.ones((b, 1, sq, sk), bool)
    if mask is not None:
        if mask.shape[-1] < sk:
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, sk - mask.shape[-1])]
            mask = np.pad(mask, pad, constant_values=False if mask.dtype == bool else -np.inf)
        if mask.dtype == bool:
            allowed = allowed & mask
        else:
            bias = bias + mask.astype(calc)
    offset = np.zeros((b, 1, 1, 1), np.int64)
    if past_k is not None:
        offset[:] = past_len
    elif nonpad is not None:
        offset = (np.asarray(nonpad, np.int64) - sq).reshape(b, 1, 1, 1)
    qi = np.arange(sq).reshape(1, 1, sq, 1)
    kj = np.arange(sk).reshape(1, 1, 1, sk)
    pos = qi + offset
    if at.get("is_causal"):
        allowed = allowed & (kj <= pos)
    left, right = at.get("left_window_size"), at.get("right_window_size")
    if left is not None and left >= 0:
        allowed = allowed & (kj >= pos - left)
    if right is not None and right >= 0:
        allowed = allowed & (kj <= pos + right)
    if nonpad is not None:
        allowed = allowed & (kj < np.asarray(nonpad, np.int64).reshape(b, 1, 1, 1))
    scores = np.where(allowed, scores + bias, -np.inf)
    qk[2] = scores
    prec = at.get("softmax_precision")
    sm = scores.astype(np_dtype(prec)).astype(calc) if prec else scores
    m = np.max(sm, axis=-1, keepdims=True)
    finite = np.isfinite(m)
    e = np.exp(sm - np.where(finite, m, 0))
    total = e.sum(axis=-1, keepdims=True)
    probs = np.where(finite & (total > 0), e / np.where(total > 0, total, 1), 0.0)  # fully masked rows -> 0
    if prec:
        probs = probs.astype(np_dtype(prec)).astype(calc)
    qk[3] = probs
    if out_dtype.itemsize < 4:
        y = np.matmul(probs.astype(out_dtype), v)
    else:
        y = np.matmul(probs, v.astype(calc))
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(b, sq, -1)
    mode = at.get("qk_matmul_output_mode") or 0
    return (y.astype(out_dtype), present_k, present_v, qk[mode].astype(out_dtype))


@kernel("RotaryEmbedding", 23)
def rotary_embedding(ins, at):
    x, cos, sin = ins[0], ins[1], ins[2]
    pos = ins[3] if len(ins) > 3 else None
    four_d = x.ndim == 4
    if four_d:  # (B, N, S, D) -> (B, S, N, D)
        xs = x.transpose(0, 2, 1, 3)
    else:
        b, s, hidden = x.shape
        xs = x.reshape(b, s, at["num_heads"], -1)
    d = xs.shape[-1]
    rd = at.get("rotary_embedding_dim") or d
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    cos = cos[:, :, None, :rd // 2]
    sin = sin[:, :, None, :rd // 2]
    rot, rest = xs[..., :rd], xs[..., rd:]
    if at.get("interleaved"):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :rd // 2], rot[..., rd // 2:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if at.get("interleaved"):
        rotated = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rotated, rest], axis=-1).astype(x.dtype)
    return (y.transpose(0, 2, 1, 3) if four_d else y.reshape(x.shape),)


# ---------------------------------------------------------------- graphopt's own (compile --target graphopt)
# softmax(Q K^T * scale + M) V per head, Q/K/V (B, S, H*D); kv_num_heads < num_heads: grouped-query

_CALC = (np.dtype(np.float32), np.dtype(np.float64))  # float64 stays, all else computes in float32


@kernel("Attention", 1, domain="ai.graphopt", shape_from_shapes=True)
def graphopt_attention(ins, at):
    q, k, v = ins[0], ins[1], ins[2]
    mask = ins[3] if len(ins) > 3 else None
    heads = int(at["num_heads"])
    b, s, _ = q.shape
    t = k.shape[1]
    calc = _CALC[1] if q.dtype == _CALC[1] else _CALC[0]  # float64 stays, all else in float32
    if q.dtype != calc or k.dtype != calc or v.dtype != calc:
        q, k, v = q.astype(calc), k.astype(calc), v.astype(calc)
    kv = int(at.get("kv_num_heads", heads))  # grouped-query attention: each K/V head serves heads / kv queries
    cached = len(ins) > 5 and ins[4] is not None
    if cached:  # KV cache: present = past + new (B, kv, P + t, D)
        past_k, past_v = ins[4], ins[5]
        if not (ins[0].dtype == calc and past_k.dtype == calc and past_v.dtype == calc and (
                mask is None or (mask.dtype == calc and mask.shape[-1] == past_k.shape[2] + t))):
            # other dtypes, a mask shorter than past + new: the standard Attention-23 kernel
            std = {"q_num_heads": heads, "kv_num_heads": kv, "scale": float(at["scale"])}
            return attention(list(ins[:6]), std)[:3]
        present_k = np.concatenate([past_k, k.reshape(b, t, kv, -1).transpose(0, 2, 1, 3)], axis=2)
        present_v = np.concatenate([past_v, v.reshape(b, t, kv, -1).transpose(0, 2, 1, 3)], axis=2)
        kh, vh, t = present_k.transpose(0, 1, 3, 2), present_v, present_k.shape[2]
    else:
        kh = k.reshape(b, t, kv, -1).transpose(0, 2, 3, 1)
        vh = v.reshape(b, t, kv, -1).transpose(0, 2, 1, 3)
    qh = q.reshape(b, s, heads, -1).transpose(0, 2, 1, 3)
    if kv != heads:
        kh, vh = np.repeat(kh, heads // kv, axis=1), np.repeat(vh, heads // kv, axis=1)
    scores = np.matmul(qh, kh)
    scores *= calc.type(at["scale"])
    if mask is not None:
        scores += mask if mask.dtype == calc else mask.astype(calc)
    guarded = at.get("nan_probs_to_zero")  # the export's Where(IsNaN(p), 0, p): a fully masked row gives 0
    with np.errstate(**({"invalid": "ignore"} if guarded else {})):
        scores -= np.maximum.reduce(scores, axis=3, keepdims=True)  # = .max(): without the method's wrapper
        np.exp(scores, out=scores)
        scores /= row_sums(scores)[..., None]  # matmul's fresh result: contiguous rows, summed by a GEMV
    if guarded:
        scores[np.isnan(scores)] = 0
    # the context written by matmul straight into (B, S, H, D) order: the final reshape is a view,
    # not the copy a transpose of matmul's (B, H, S, D) result made (dividing the context there
    # instead of the scores was slower: a strided divide)
    out = np.empty((b, s, heads, vh.shape[3]), calc)
    np.matmul(scores, vh, out=out.transpose(0, 2, 1, 3))
    y = out.reshape(b, s, -1).astype(ins[0].dtype, copy=False)
    return (y, present_k, present_v) if cached else (y,)


# the standard op's 3-D form without position_ids (passes/fusion/rotary.py emits it)
kernel("RotaryEmbedding", 1, domain="ai.graphopt")(rotary_embedding)
