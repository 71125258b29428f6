"""ONNX Runtime's com.microsoft GroupQueryAttention (decoders with a KV cache), on the CPU kernels here.

    GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k, total_sequence_length,
                        cos_cache?, sin_cache?, position_ids?, attention_bias?; num_heads, kv_num_heads,
                        scale, softcap, local_window_size=-1, do_rotary=0, rotary_interleaved=0)
        -> output (B, S, N*H), present_key / present_value (B, kv_num_heads, P + S, H)

query is (B, S, N*H), or Q|K|V packed on its last axis when key/value are left out. The cache is not a
shared buffer: present = past (B, kv, P, H) followed by the new keys/values. Sequence b holds
seqlens_k[b] + 1 tokens in all; its new tokens sit at the end of them, at positions past_b .. past_b+S-1
with past_b = seqlens_k[b] + 1 - S, except on the first prompt (no past, total_sequence_length == S),
where every sequence starts at 0 and seqlens_k only marks its right padding. Each query sees the keys
at or before its position (causal, always), inside local_window_size when set, and below its
sequence's length. With do_rotary the query and new keys are rotated at those positions by the
cos/sin caches (max_position, H_rot/2). The past must be as long as every sequence's past (left as a
clear error otherwise: a shared-buffer cache with per-sequence fill is not modelled).
head_sink, smooth_softmax and the qk output are refused when the Session is built.
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import kernel
from .attention import rotary_embedding

DOMAIN = "com.microsoft"


def _given(ins, i):
    return ins[i] if len(ins) > i and ins[i] is not None else None


def _heads(x, n):
    b, s, _ = x.shape
    return x.reshape(b, s, n, -1).transpose(0, 2, 1, 3)  # (B, n, S, H)


@kernel("GroupQueryAttention", 1, domain=DOMAIN)
def group_query_attention(ins, at):
    n, kv = int(at["num_heads"]), int(at["kv_num_heads"])
    q, k, v = ins[0], _given(ins, 1), _given(ins, 2)
    past_k, past_v = _given(ins, 3), _given(ins, 4)
    seqlens = np.asarray(ins[5], np.int64).reshape(-1)
    total = int(np.asarray(ins[6]).reshape(-1)[0])
    b, s = q.shape[0], q.shape[1]
    if k is None:  # packed Q|K|V
        h = q.shape[2] // (n + 2 * kv)
        q, k, v = np.split(q, [n * h, (n + kv) * h], axis=2)
    h = q.shape[2] // n
    p = 0 if past_k is None else past_k.shape[2]
    first_prompt = p == 0 and total == s
    lengths = seqlens + 1
    past = np.zeros(b, np.int64) if first_prompt else lengths - s
    if not first_prompt and np.any(past != p):
        raise ValueError(f"GroupQueryAttention: per-sequence past lengths {past.tolist()} differ from the "
                         f"past_key length {p} (a shared-buffer KV cache is not supported)")
    if at.get("do_rotary"):
        pos = past[:, None] + np.arange(s)[None, :]
        if _given(ins, 9) is not None:
            pos = np.asarray(ins[9], np.int64).reshape(b, s)
        rot = {"interleaved": int(at.get("rotary_interleaved", 0))}
        q = rotary_embedding([q, ins[7], ins[8], pos], {**rot, "num_heads": n})[0]
        k = rotary_embedding([k, ins[7], ins[8], pos], {**rot, "num_heads": kv})[0]
    kh, vh = _heads(k, kv), _heads(v, kv)
    if past_k is not None:
        kh, vh = np.concatenate([past_k, kh], axis=2), np.concatenate([past_v, vh], axis=2)
    present_k, present_v = np.ascontiguousarray(kh), np.ascontiguousarray(vh)
    calc = np.float64 if q.dtype == np.float64 else np.float32
    qh = _heads(q, n).astype(calc)
    keys = np.repeat(kh, n // kv, axis=1).astype(calc)
    values = np.repeat(vh, n // kv, axis=1).astype(calc)
    scale = at.get("scale") or 1.0 / math.sqrt(h)
    scores = np.matmul(qh, np.swapaxes(keys, -1, -2)) * calc(scale)  # (B, N, S, T)
    if at.get("softcap"):
        scores = at["softcap"] * np.tanh(scores / at["softcap"])
    bias = _given(ins, 10)
    if bias is not None:
        scores = scores + bias.astype(calc)
    t = keys.shape[2]
    qpos = past[:, None, None, None] + np.arange(s)[None, None, :, None]
    kpos = np.arange(t)[None, None, None, :]
    allowed = (kpos <= qpos) & (kpos < lengths[:, None, None, None])
    window = at.get("local_window_size", -1)
    if window is not None and window >= 0:
        allowed &= kpos > qpos - window
    scores = np.where(allowed, scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(peak), peak, 0))
    total_e = e.sum(axis=-1, keepdims=True)
    probs = np.where(total_e > 0, e / np.where(total_e > 0, total_e, 1), 0)
    y = np.matmul(probs, values).transpose(0, 2, 1, 3).reshape(b, s, n * h)
    return y.astype(q.dtype), present_k, present_v


def _refuse(at, inputs, outputs):
    if any(inputs[11:]):
        return "head_sink"
    if at.get("smooth_softmax") or at.get("qk_output"):
        return "smooth_softmax or the qk output"
    if len(outputs) > 3 and any(outputs[3:]):
        return "the qk output"
    return None


group_query_attention.refuse = _refuse
