"""CUDA source: scaled dot-product attention, tiled over keys with an online softmax.

Layout: q (B, H, Sq, d), k and v (B, KVH, Sk, d), all contiguous; out (B, H, Sq, d). Query head h
reads kv head h / (H / KVH) (grouped-query attention). A block owns BM query rows of one (b, h)
(one thread per row, its accumulator in registers) and walks the keys in tiles of BN rows that
the block stages in shared memory, so memory is O(tile) and the sequence length is unbounded
(4096 and beyond cost time, not memory). Per tile the running max m and sum l are updated once:
acc <- acc * exp(m_old - m_new) + sum_j exp(s_j - m_new) v_j. Rows that every key masks give 0,
as the NumPy runtime does.

The optional mask is either an additive float bias (mask_kind 1) or a bool keep-mask (mask_kind 2)
addressed with broadcast strides (0 on broadcast axes) over (B, H, Sq, Sk). causal=1 keeps key j
for query i when j <= i + past_len (past_len: keys that precede the queries, i.e. a KV cache).
"""
from __future__ import annotations

from .cuda_common import PRELUDE

BM = 64  # query rows per block (= threads per block)

_BODY = r"""
template <typename T, int D, int BN>
__device__ void attention_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               T* __restrict__ out, const void* __restrict__ mask, int mask_kind,
                               long long ms_b, long long ms_h, long long ms_q, long long ms_k,
                               int H, int KVH, int Sq, int Sk, int d, float scale, int causal, int past_len) {
    __shared__ float ks[BN][D];
    __shared__ float vs[BN][D];
    const int bh = blockIdx.y, b = bh / H, h = bh % H, kvh = h / (H / KVH);
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = row < Sq;
    const T* qr = q + ((long long)bh * Sq + (active ? row : 0)) * d;
    const T* kb = k + ((long long)b * KVH + kvh) * Sk * d;
    const T* vb = v + ((long long)b * KVH + kvh) * Sk * d;
    float qv[D], acc[D], sc[BN];
    for (int c = 0; c < D; ++c) { qv[c] = c < d ? (float)go_load(qr, c) * scale : 0.0f; acc[c] = 0.0f; }
    float m = -__int_as_float(0x7f800000), l = 0.0f;
    const long long mrow = (long long)b * ms_b + (long long)h * ms_h + (long long)row * ms_q;
    for (int t0 = 0; t0 < Sk; t0 += BN) {
        #pragma unroll 1
        for (int e = threadIdx.x; e < BN * D; e += blockDim.x) {
            int j = e / D, c = e % D;
            bool in = (t0 + j) < Sk && c < d;
            ks[j][c] = in ? (float)go_load(kb, (long long)(t0 + j) * d + c) : 0.0f;
            vs[j][c] = in ? (float)go_load(vb, (long long)(t0 + j) * d + c) : 0.0f;
        }
        __syncthreads();
        if (active) {
            float tmax = -__int_as_float(0x7f800000);
            #pragma unroll 1
            for (int j = 0; j < BN; ++j) {
                int key = t0 + j;
                float s = -__int_as_float(0x7f800000);
                bool keep = key < Sk && !(causal && key > row + past_len);
                if (keep && mask_kind == 2) keep = ((const unsigned char*)mask)[mrow + (long long)key * ms_k] != 0;
                if (keep) {
                    s = 0.0f;
                    for (int c = 0; c < D; ++c) s += qv[c] * ks[j][c];
                    if (mask_kind == 1) s += ((const float*)mask)[mrow + (long long)key * ms_k];
                }
                sc[j] = s;
                tmax = fmaxf(tmax, s);
            }
            float mnew = fmaxf(m, tmax);
            if (mnew > -__int_as_float(0x7f800000)) {
                float corr = expf(m - mnew);  /* m = -inf on the first live tile: corr = 0 */
                l *= corr;
                for (int c = 0; c < D; ++c) acc[c] *= corr;
                #pragma unroll 1
                for (int j = 0; j < BN; ++j) {
                    float p = expf(sc[j] - mnew);
                    l += p;
                    for (int c = 0; c < D; ++c) acc[c] += p * vs[j][c];
                }
                m = mnew;
            }
        }
        __syncthreads();
    }
    if (active) {
        T* orow = out + ((long long)bh * Sq + row) * d;
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int c = 0; c < d && c < D; ++c) go_store(orow, c, acc[c] * inv);
    }
}
"""

# head-dim buckets: shared memory is 2 * BN * D floats (32 KiB at most, under the 48 KiB static limit)
HEAD_DIMS = {32: 64, 64: 32, 128: 16}  # larger heads use the matmul + softmax path
_TYPES = (("f32", "float"), ("f16", "go_half"))


def _entries() -> str:
    params = ("const T* q, const T* k, const T* v, T* out, const void* mask, int mask_kind, long long ms_b, "
              "long long ms_h, long long ms_q, long long ms_k, int H, int KVH, int Sq, int Sk, int d, "
              "float scale, int causal, int past_len")
    args = "q, k, v, out, mask, mask_kind, ms_b, ms_h, ms_q, ms_k, H, KVH, Sq, Sk, d, scale, causal, past_len"
    out = []
    for suffix, t in _TYPES:
        for dim, bn in HEAD_DIMS.items():
            out.append(f'extern "C" __global__ void go_attention_{suffix}_d{dim}({params.replace("T*", t + "*")}) '
                       f'{{ attention_impl<{t}, {dim}, {bn}>({args}); }}')
    return "\n".join(out)


def head_dim_bucket(d: int) -> int | None:
    """The smallest compiled head-dim bucket that holds d, or None when d is too large."""
    return next((D for D in sorted(HEAD_DIMS) if d <= D), None)


ATTENTION = PRELUDE + _BODY + _entries()
SOURCES = {"attention": ATTENTION}
