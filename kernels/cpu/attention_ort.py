"""ONNX Runtime's com.microsoft Attention and MultiHeadAttention, in their forms without a KV cache,
and EmbedLayerNormalization: what ORT's transformer optimizer writes for a BERT-like model.

`graphopt compile --target ort` writes the attention ops too; graphopt.Session runs them with the
ai.graphopt Attention kernel (kernels/cpu/attention.py) after the steps that ORT's ops add around it:

    Attention(input, weights, bias?, mask_index?, past?, attention_bias?)
        Q|K|V = input @ weights + bias (qkv_hidden_sizes, else three equal parts)
    MultiHeadAttention(query, key, value, bias?, key_padding_mask?, attention_bias?, ...)
        3-D query/key/value, bias = [bias_q | bias_k | bias_v]

Masks follow ORT's CPU kernels: a masked key position adds mask_filter_value (default -10000, not
-inf: a fully masked row then averages all positions, as in ORT), mask_index / key_padding_mask may
be key lengths (B), a 0/1 mask (B, L) or (B, S, L); unidirectional adds mask_filter_value once more
to future positions (Attention) or hides them outright (MultiHeadAttention, as ORT's CPU kernels); attention_bias (B|1, N|1, S, L) is added as it is. `present` outputs are the
projected keys and values; MultiHeadAttention's past_key/past_value (B, N, P, H) come before them
(KV cache: present = past + new, a causal mask offset by P). past_sequence_length, cache_indirection,
Attention's past, rotary embedding, a shared past/present buffer or the QK output is refused when
the Session is built (the node's `refuse` hook), never midway through a run.

    EmbedLayerNormalization(input_ids, segment_ids?, word_embedding, position_embedding,
                            segment_embedding?, gamma, beta, mask?, position_ids?)
        LayerNorm(word[ids] + position[position_ids or 0..S-1] + segment[segment_ids]) * gamma + beta,
        and mask_index = the number of ones per mask row (the key lengths Attention takes)

GroupQueryAttention (decoders with a KV cache) is at the end of the file.
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import kernel
from .attention import graphopt_attention, rotary_embedding, split_heads
from .layernorm import layer_norm_rows

ORT_DOMAIN = "com.microsoft"


MASK_FILTER_VALUE = -10000.0


def _given(ins, i):
    return ins[i] if len(ins) > i and ins[i] is not None else None


def _mask_bias(mask, batch, q_len, kv_len, filter_value, causal, dtype, causal_value=None):
    """The additive mask (B|1, 1, S|1, L) from a key mask and/or the causal rule, or None."""
    bias = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 1 and mask.shape[0] == batch:  # valid key length per sequence (right padding)
            keep = np.arange(kv_len)[None, :] < mask[:, None]
            keep = keep[:, None, None, :]
        elif mask.ndim == 2 and mask.shape == (batch, kv_len):
            keep = (mask != 0)[:, None, None, :]
        elif mask.ndim == 3 and mask.shape == (batch, q_len, kv_len):
            keep = (mask != 0)[:, None, :, :]
        else:
            raise ValueError(f"mask of shape {mask.shape} is not supported (batch {batch}, query length "
                             f"{q_len}, key length {kv_len}: expected (B,), (B, L) or (B, S, L))")
        bias = np.where(keep, dtype.type(0), dtype.type(filter_value))
    if causal:  # query i (the last q_len of kv_len positions) sees keys up to its own position
        future = np.arange(kv_len)[None, :] > np.arange(q_len)[:, None] + (kv_len - q_len)
        fill = filter_value if causal_value is None else causal_value
        step = np.where(future, dtype.type(fill), dtype.type(0))[None, None]
        bias = step if bias is None else bias + step
    return bias


def _attend(q, k, v, ins_mask, attention_bias, at, hard_causal=False):
    """The output and the present key/value, (B, N, L, H) each, of one attention."""
    batch, q_len, hidden = q.shape
    kv_len = k.shape[1]
    heads = int(at["num_heads"])
    if hidden % heads or k.shape[2] % heads or v.shape[2] % heads:
        raise ValueError(f"hidden sizes {hidden}/{k.shape[2]}/{v.shape[2]} are not multiples of num_heads {heads}")
    scale = at.get("scale") or 1.0 / math.sqrt(hidden // heads)
    calc = np.dtype(np.float64) if q.dtype == np.float64 else np.dtype(np.float32)
    bias = _mask_bias(ins_mask, batch, q_len, kv_len, at.get("mask_filter_value", MASK_FILTER_VALUE),
                      bool(at.get("unidirectional")), calc, np.finfo(calc).min if hard_causal else None)
    if attention_bias is not None:
        bias = attention_bias.astype(calc) if bias is None else bias + attention_bias.astype(calc)
    out = graphopt_attention([q, k, v] + ([bias] if bias is not None else []), {"num_heads": heads, "scale": scale})[0]
    present = [t.reshape(batch, kv_len, heads, -1).transpose(0, 2, 1, 3) for t in (k, v)]
    return out, present


@kernel("MultiHeadAttention", 1, domain=ORT_DOMAIN)
def multi_head_attention(ins, at):
    q, k, v, bias = ins[0], _given(ins, 1), _given(ins, 2), _given(ins, 3)
    if k is None or v is None or q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError("only separate 3-D query, key and value are supported (not packed or 4-D ones)")
    if bias is not None:
        dq, dk = q.shape[2], k.shape[2]
        q, k, v = q + bias[:dq], k + bias[dq:dq + dk], v + bias[dq + dk:]
    past_k, past_v = _given(ins, 6), _given(ins, 7)
    if past_k is not None:  # KV cache (B, N, P, H): the new keys/values follow it; present is the whole
        k, v = (np.concatenate([p.transpose(0, 2, 1, 3).reshape(p.shape[0], p.shape[2], p.shape[1] * p.shape[3]), t], axis=1)
                for p, t in ((past_k, k), (past_v, v)))
    # ORT's MultiHeadAttention hides future keys outright (a padded query row then still sees its past)
    out, (pk, pv) = _attend(q, k, v, _given(ins, 4), _given(ins, 5), at, hard_causal=True)
    return out, np.ascontiguousarray(pk), np.ascontiguousarray(pv)


def _refuse_mha(at, inputs, outputs):
    if any(inputs[8:]) or (len(inputs) > 6 and inputs[6]) != (len(inputs) > 7 and inputs[7]):
        return "past_sequence_length, cache_indirection, or a past key without a past value"
    if len(outputs) > 3 and outputs[3]:
        return "the qk output"
    return None


@kernel("Attention", 1, domain=ORT_DOMAIN)
def attention(ins, at):
    x, w, b = ins[0], ins[1], _given(ins, 2)
    sizes = list(at.get("qkv_hidden_sizes") or [w.shape[1] // 3] * 3)
    qkv = np.matmul(x, w)
    if b is not None:
        qkv += b
    q, k, v = np.split(qkv, np.cumsum(sizes)[:2], axis=-1)
    out, (pk, pv) = _attend(q, k, v, _given(ins, 3), _given(ins, 5), at)
    if at.get("__n_outputs__", 1) < 2:
        return (out,)
    if pk.shape != pv.shape:
        raise ValueError(f"present needs keys and values of one size, not qkv_hidden_sizes {sizes}")
    return out, np.stack([pk, pv])


def _refuse_attention(at, inputs, outputs):
    if (len(inputs) > 4 and inputs[4]) or any(inputs[6:]):
        return "past or past_sequence_length"
    if at.get("do_rotary") or at.get("past_present_share_buffer"):
        return "do_rotary or past_present_share_buffer"
    return None


multi_head_attention.refuse = _refuse_mha


attention.refuse = _refuse_attention


@kernel("EmbedLayerNormalization", 1, domain=ORT_DOMAIN)
def embed_layer_norm(ins, at):
    ids, segments, word, position = ins[0], _given(ins, 1), ins[2], ins[3]
    seg_table, gamma, beta, mask, pos_ids = _given(ins, 4), ins[5], ins[6], _given(ins, 7), _given(ins, 8)
    seq = ids.shape[1]
    if pos_ids is None:
        pos_ids = np.arange(seq)[None, :]
    s = word[ids] + position[pos_ids]
    if segments is not None and seg_table is not None:
        s += seg_table[segments]
    y = layer_norm_rows(s, False, gamma, beta, -1, at.get("epsilon", 1e-12), word.dtype)
    mask_index = (np.count_nonzero(mask, axis=1) if mask is not None else np.zeros(ids.shape[0])).astype(np.int32)
    return y, mask_index, s


# ---------------------------------------------------------------- GroupQueryAttention
# ONNX Runtime's com.microsoft GroupQueryAttention (decoders with a KV cache), on the CPU kernels here.
#
#     GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k, total_sequence_length,
#                         cos_cache?, sin_cache?, position_ids?, attention_bias?; num_heads, kv_num_heads,
#                         scale, softcap, local_window_size=-1, do_rotary=0, rotary_interleaved=0)
#         -> output (B, S, N*H), present_key / present_value (B, kv_num_heads, P + S, H)
#
# query is (B, S, N*H), or Q|K|V packed on its last axis when key/value are left out. The cache is not a
# shared buffer: present = past (B, kv, P, H) followed by the new keys/values. Sequence b holds
# seqlens_k[b] + 1 tokens in all; its new tokens sit at the end of them, at positions past_b .. past_b+S-1
# with past_b = seqlens_k[b] + 1 - S, except on the first prompt (no past, total_sequence_length == S),
# where every sequence starts at 0 and seqlens_k only marks its right padding. Each query sees the keys
# at or before its position (causal, always), inside local_window_size when set, and below its
# sequence's length. With do_rotary the query and new keys are rotated at those positions by the
# cos/sin caches (max_position, H_rot/2). The past must be as long as every sequence's past (left as a
# clear error otherwise: a shared-buffer cache with per-sequence fill is not modelled).
# head_sink, smooth_softmax and the qk output are refused when the Session is built.


@kernel("GroupQueryAttention", 1, domain=ORT_DOMAIN)
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
    kh, vh = split_heads(k, kv), split_heads(v, kv)
    if past_k is not None:
        kh, vh = np.concatenate([past_k, kh], axis=2), np.concatenate([past_v, vh], axis=2)
    present_k, present_v = np.ascontiguousarray(kh), np.ascontiguousarray(vh)
    calc = np.float64 if q.dtype == np.float64 else np.float32
    qh = split_heads(q, n).astype(calc)
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
