"""CUDA sources: softmax / log-softmax, LayerNormalization / RMSNormalization, GELU.

Every source is PRELUDE (+ REDUCE) + body; entry points are `extern "C"` and suffixed by the
element type (`_f32`, `_f16`). Arithmetic is float, so half inputs are accumulated in float as
ONNX Runtime's CUDA kernels do.
"""
from __future__ import annotations

from .cuda_common import PRELUDE, REDUCE

# float64 has no custom kernel: the wrappers compute it with CuPy array expressions in double.
_TYPES = (("f32", "float"), ("f16", "go_half"))

# One block per (outer, inner) pair; the reduced axis has length n and stride `inner`, so the
# common last-axis case (inner == 1) reads coalesced. log_mode 1 gives LogSoftmax.
_SOFTMAX = r"""
template <typename T>
__device__ void softmax_impl(const T* __restrict__ x, T* __restrict__ y, long long n, long long inner, int log_mode) {
    long long row = blockIdx.x;
    long long base = (row / inner) * n * inner + (row % inner);
    float m = -__int_as_float(0x7f800000);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, (float)go_load(x, base + j * inner));
    m = go_block_max(m);
    float s = 0.0f;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) s += expf((float)go_load(x, base + j * inner) - m);
    s = go_block_sum(s);
    float ls = logf(s), inv = 1.0f / s;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        float v = (float)go_load(x, base + j * inner) - m;
        go_store(y, base + j * inner, log_mode ? v - ls : expf(v) * inv);
    }
}
"""

# One block per normalized row of length n. mean/inv_std are written when the pointers are not
# null (LayerNormalization's optional outputs, always float32 by stash_type=1). rms=1 gives
# RMSNormalization: no mean subtraction, no bias.
_NORM = r"""
template <typename T>
__device__ void norm_impl(const T* __restrict__ x, const T* __restrict__ scale, const T* __restrict__ bias,
                          T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                          long long n, float eps, int rms) {
    long long row = blockIdx.x;
    const long long base = row * n;
    float mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) s += (float)go_load(x, base + j);
        mean = go_block_sum(s) / (float)n;
    }
    float q = 0.0f;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        float d = (float)go_load(x, base + j) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(go_block_sum(q) / (float)n + eps);
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        float v = ((float)go_load(x, base + j) - mean) * rstd * (float)go_load(scale, j);
        if (bias) v += (float)go_load(bias, j);
        go_store(y, base + j, v);
    }
    if (threadIdx.x == 0) {
        if (mean_out) mean_out[row] = mean;
        if (rstd_out) rstd_out[row] = rstd;
    }
}
"""

# approximate=0: 0.5 x (1 + erf(x / sqrt 2)); approximate=1: the tanh form.
_GELU = r"""
template <typename T>
__device__ void gelu_impl(const T* __restrict__ x, T* __restrict__ y, long long n, int approximate) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = (float)go_load(x, i), r;
        if (approximate) r = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        else r = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
        go_store(y, i, r);
    }
}
"""


def _entries(template: str, name: str, params: str, args: str) -> str:
    out = []
    for suffix, t in _TYPES:
        p = params.replace("T*", f"{t}*")
        out.append(f'extern "C" __global__ void {name}_{suffix}({p}) {{ {template}<{t}>({args}); }}')
    return "\n".join(out)


SOFTMAX = PRELUDE + REDUCE + _SOFTMAX + _entries(
    "softmax_impl", "go_softmax", "const T* x, T* y, long long n, long long inner, int log_mode",
    "x, y, n, inner, log_mode")

NORM = PRELUDE + REDUCE + _NORM + _entries(
    "norm_impl", "go_norm",
    "const T* x, const T* scale, const T* bias, T* y, float* mean_out, float* rstd_out, long long n, float eps, int rms",
    "x, scale, bias, y, mean_out, rstd_out, n, eps, rms")

GELU = PRELUDE + _GELU + _entries("gelu_impl", "go_gelu", "const T* x, T* y, long long n, int approximate",
                                  "x, y, n, approximate")

SOURCES = {"softmax": SOFTMAX, "norm": NORM, "gelu": GELU}
