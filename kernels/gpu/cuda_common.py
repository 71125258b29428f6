"""The CUDA prelude every hand-written and generated kernel source starts with.

Sources are plain CUDA C++ with `extern "C"` entry points and no #include, so the same text compiles
with CuPy's NVRTC (cupy.RawModule) and with a stand-alone `nvcc --cubin` (tests/unit/test_gpu_sources.py).
Half precision travels as raw 16-bit words (`unsigned short`) converted with PTX `cvt` on the device,
which avoids depending on cuda_fp16.h being on NVRTC's include path. The host branch of the
conversions exists so generated element functions can also be compiled and run as host code.
"""
from __future__ import annotations

PRELUDE = r"""
typedef unsigned short go_half;

__host__ __device__ __forceinline__ float go_h2f(go_half h) {
#ifdef __CUDA_ARCH__
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
#else
    unsigned int sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign << 31; }
        else {  /* subnormal half: normalize */
            int e = -1; do { e++; man <<= 1; } while ((man & 0x400u) == 0);
            bits = (sign << 31) | ((unsigned int)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) { bits = (sign << 31) | 0x7f800000u | (man << 13); }
    else { bits = (sign << 31) | ((exp + 112u) << 23) | (man << 13); }
    union { unsigned int u; float f; } c; c.u = bits; return c.f;
#endif
}

__host__ __device__ __forceinline__ go_half go_f2h(float f) {
#ifdef __CUDA_ARCH__
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
#else
    union { float f; unsigned int u; } c; c.f = f;
    unsigned int u = c.u, sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (go_half)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) return (go_half)(sign | 0x7c00u);          /* rounds to infinity */
    if (a < 0x38800000u) {                                            /* half subnormal or zero */
        if (a < 0x33000000u) return (go_half)sign;
        unsigned int e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;
        unsigned int r = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) r++;
        return (go_half)(sign | r);
    }
    unsigned int r = a - 0x38000000u, base = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (base & 1u))) base++;
    return (go_half)(sign | base);
#endif
}

__host__ __device__ __forceinline__ float go_load(const float* p, long long i) { return p[i]; }
__host__ __device__ __forceinline__ double go_load(const double* p, long long i) { return p[i]; }
__host__ __device__ __forceinline__ float go_load(const go_half* p, long long i) { return go_h2f(p[i]); }
__host__ __device__ __forceinline__ void go_store(float* p, long long i, float v) { p[i] = v; }
__host__ __device__ __forceinline__ void go_store(double* p, long long i, double v) { p[i] = v; }
__host__ __device__ __forceinline__ void go_store(go_half* p, long long i, float v) { p[i] = go_f2h(v); }
"""

# Block-wide reductions for kernels that launch one block per row (softmax, norms).
REDUCE = r"""
__device__ __forceinline__ float go_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float go_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* blockDim.x must be a multiple of 32; every thread gets the result */
__device__ float go_block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    v = go_warp_sum(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        w = go_warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}
__device__ float go_block_max(float v) {
    __shared__ float part[32];
    __shared__ float total;
    v = go_warp_max(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? part[lane] : -__int_as_float(0x7f800000);
        w = go_warp_max(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}
"""
