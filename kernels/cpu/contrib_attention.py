"""ONNX Runtime's com.microsoft Attention and MultiHeadAttention, in their forms without a KV cache,
and EmbedLayerNormalization: what ORT's transformer optimizer writes for a BERT-like model.

`graphopt compile --target ort` writes the attention ops too; graphopt.Session runs them with the
ai.graphopt Attention kernel (kernels/cpu/fused.py) after the steps that ORT's ops add around it:

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
"""
from __future__ import annotations

import math

import numpy as np

from ..registry import kernel
from . import fused

DOMAIN = "com.microsoft"
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
    out = fused.attention([q, k, v] + ([bias] if bias is not None else []), {"num_heads": heads, "scale": scale})[0]
    present = [t.reshape(batch, kv_len, heads, -1).transpose(0, 2, 1, 3) for t in (k, v)]
    return out, present


@kernel("MultiHeadAttention", 1, domain=DOMAIN)
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


@kernel("Attention", 1, domain=DOMAIN)
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


@kernel("EmbedLayerNormalization", 1, domain=DOMAIN)
def embed_layer_norm(ins, at):
    ids, segments, word, position = ins[0], _given(ins, 1), ins[2], ins[3]
    seg_table, gamma, beta, mask, pos_ids = _given(ins, 4), ins[5], ins[6], _given(ins, 7), _given(ins, 8)
    seq = ids.shape[1]
    if pos_ids is None:
        pos_ids = np.arange(seq)[None, :]
    s = word[ids] + position[pos_ids]
    if segments is not None and seg_table is not None:
        s += seg_table[segments]
    y = fused._layer_norm(s, False, gamma, beta, -1, at.get("epsilon", 1e-12), word.dtype)
    mask_index = (np.count_nonzero(mask, axis=1) if mask is not None else np.zeros(ids.shape[0])).astype(np.int32)
    return y, mask_index, s
