"""CUDA sources: pooling, resize, gather/scatter, transpose, quantize/dequantize, im2col, depthwise conv.

Plain CUDA C++ (see cuda_common.py). Element kernels use grid-stride loops so any launch size is
correct; the wrappers in the op modules pick the launch shape. Index math is 64-bit throughout.
"""
from __future__ import annotations

from .cuda_common import PRELUDE

_TYPES = (("f32", "float"), ("f16", "go_half"))

# Pooling over (D, H, W) windows of an (N*C, D, H, W) tensor (1-D and 2-D pools pass unit dims).
# mode 0: max, 1: average counting padding (only the part inside begin+input+end pads), 2: average
# over the valid elements only.
_POOL = r"""
template <typename T>
__device__ void pool_impl(const T* __restrict__ x, T* __restrict__ y, long long total,
                          int id, int ih, int iw, int od, int oh, int ow, int kd, int kh, int kw,
                          int sd, int sh, int sw, int pd, int ph, int pw, int ped, int peh, int pew,
                          int dd, int dh, int dw, int mode) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i;
        int ox = r % ow; r /= ow; int oy = r % oh; r /= oh; int oz = r % od; r /= od;
        const T* xp = x + r * (long long)id * ih * iw;
        float best = -__int_as_float(0x7f800000), sum = 0.0f;
        int valid = 0, padded = 0;
        for (int a = 0; a < kd; ++a) {
            int z = oz * sd - pd + a * dd;
            for (int b = 0; b < kh; ++b) {
                int yy = oy * sh - ph + b * dh;
                for (int c = 0; c < kw; ++c) {
                    int xx = ox * sw - pw + c * dw;
                    if (z >= -pd && z < id + ped && yy >= -ph && yy < ih + peh && xx >= -pw && xx < iw + pew) padded++;
                    if (z < 0 || z >= id || yy < 0 || yy >= ih || xx < 0 || xx >= iw) continue;
                    float v = (float)go_load(xp, ((long long)z * ih + yy) * iw + xx);
                    best = fmaxf(best, v); sum += v; valid++;
                }
            }
        }
        float res = mode == 0 ? best : sum / (float)(mode == 1 ? padded : (valid > 0 ? valid : 1));
        go_store(y, i, res);
    }
}
"""

# One resized axis: y[o, j, i] = sum_t w[j, t] * x[o, idx[j, t], i] (tap tables built on the host
# from the same interpolation matrices the NumPy runtime uses, so every mode shares one kernel).
_RESIZE = r"""
template <typename T>
__device__ void resize_axis_impl(const T* __restrict__ x, T* __restrict__ y, const long long* __restrict__ idx,
                                 const float* __restrict__ w, int taps, long long total, long long n_in,
                                 long long n_out, long long inner) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long in_ = i % inner, j = (i / inner) % n_out, o = i / (inner * n_out);
        const T* xp = x + o * n_in * inner + in_;
        float acc = 0.0f;
        for (int t = 0; t < taps; ++t) acc += w[j * taps + t] * (float)go_load(xp, idx[j * taps + t] * inner);
        go_store(y, i, acc);
    }
}
"""

# Gather along an axis: x viewed as (outer, n, inner), indices flat (m,), y as (outer, m, inner).
# Negative indices count from the end; an out-of-range one reads element 0 and sets *bad (not read
# back by the wrappers: that would cost a device sync per call).
_GATHER = r"""
template <typename T>
__device__ void gather_impl(const T* __restrict__ x, const long long* __restrict__ ind, T* __restrict__ y,
                            long long total, long long n, long long m, long long inner, int* bad) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long in_ = i % inner, j = (i / inner) % m, o = i / (inner * m);
        long long k = ind[j];
        if (k < 0) k += n;
        if (k < 0 || k >= n) { *bad = 1; k = 0; }
        y[i] = x[(o * n + k) * inner + in_];
    }
}
"""

# ScatterND without reduction: y already holds a copy of data; each of the u update rows of
# `slice` elements goes to the offset its K index components name (strides: data's, per component).
# ScatterElements: the update at multi-index (i0..i_{r-1}) goes to the same index with axis
# coordinate replaced by indices[...]; reduction 0 none, 1 add (atomic).
_SCATTER = r"""
template <typename T>
__device__ void scatter_nd_impl(T* __restrict__ y, const long long* __restrict__ ind, const T* __restrict__ upd,
                                const long long* __restrict__ dims, const long long* __restrict__ strides,
                                int K, long long u, long long slice, int* bad) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < u * slice; i += (long long)gridDim.x * blockDim.x) {
        long long row = i / slice, off = 0;
        for (int c = 0; c < K; ++c) {
            long long v = ind[row * K + c];
            if (v < 0) v += dims[c];
            if (v < 0 || v >= dims[c]) { *bad = 1; v = 0; }
            off += v * strides[c];
        }
        y[off + i % slice] = upd[i];
    }
}

template <typename T>
__device__ void scatter_elements_impl(T* __restrict__ y, const long long* __restrict__ ind, const T* __restrict__ upd,
                                      const long long* __restrict__ upd_dims, const long long* __restrict__ y_strides,
                                      int rank, int axis, long long axis_len, long long total, int reduction, int* bad) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i, off = 0;
        for (int a = rank - 1; a >= 0; --a) {
            long long c = r % upd_dims[a]; r /= upd_dims[a];
            if (a == axis) {
                c = ind[i];
                if (c < 0) c += axis_len;
                if (c < 0 || c >= axis_len) { *bad = 1; c = 0; }
            }
            off += c * y_strides[a];
        }
        if (reduction == 1) atomicAdd(y + off, upd[i]);
        else y[off] = upd[i];
    }
}
"""

# Batched 2-D transpose (B, R, C) -> (B, C, R) through a padded 32x32 shared tile (coalesced both
# ways), and a general permutation for everything else.
_TRANSPOSE = r"""
template <typename T>
__device__ void transpose2d_impl(const T* __restrict__ x, T* __restrict__ y, long long R, long long C) {
    __shared__ T tile[32][33];
    long long b = blockIdx.z;
    long long c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    const T* xb = x + b * R * C; T* yb = y + b * R * C;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        long long r = r0 + k, c = c0 + threadIdx.x;
        if (r < R && c < C) tile[k][threadIdx.x] = xb[r * C + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        long long c = c0 + k, r = r0 + threadIdx.x;
        if (r < R && c < C) yb[c * R + r] = tile[threadIdx.x][k];
    }
}

/* p: rank output dims, then the input stride of each output axis */
template <typename T>
__device__ void permute_impl(const T* __restrict__ x, T* __restrict__ y, long long total, int rank,
                             const long long* __restrict__ p) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i, off = 0;
        for (int a = rank - 1; a >= 0; --a) { off += (r % p[a]) * p[rank + a]; r /= p[a]; }
        y[i] = x[off];
    }
}
"""

# QuantizeLinear: y = saturate(rint(x / scale) + zero_point); DequantizeLinear: (q - zp) * scale.
# Per-axis parameters: element i uses channel (i / inner) % channels (channels 1: per tensor).
_QUANT = r"""
template <typename TX, typename TQ>
__device__ void quantize_impl(const TX* __restrict__ x, const float* __restrict__ scale, const TQ* __restrict__ zp,
                              TQ* __restrict__ y, long long total, long long channels, long long inner, float lo, float hi) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long ch = (i / inner) % channels;
        float q = rintf((float)go_load(x, i) / scale[ch]) + (zp ? (float)zp[ch] : 0.0f);
        y[i] = (TQ)fminf(fmaxf(q, lo), hi);
    }
}

template <typename TQ, typename TY>
__device__ void dequantize_impl(const TQ* __restrict__ q, const float* __restrict__ scale, const TQ* __restrict__ zp,
                                TY* __restrict__ y, long long total, long long channels, long long inner) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long ch = (i / inner) % channels;
        float v = ((float)q[i] - (zp ? (float)zp[ch] : 0.0f)) * scale[ch];
        go_store(y, i, v);
    }
}
"""

# im2col for a 2-D convolution: x (N, C, H, W) -> col (N, C*kh*kw, oh*ow), zero outside the input.
# Depthwise: output channel co reads input channel co / mult, with its own kh*kw filter.
_CONV = r"""
template <typename T>
__device__ void im2col_impl(const T* __restrict__ x, T* __restrict__ col, long long total, int C, int H, int W,
                            int kh, int kw, int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i;
        int ox = r % ow; r /= ow; int oy = r % oh; r /= oh;
        int kx = r % kw; r /= kw; int ky = r % kh; r /= kh;
        int c = r % C; long long n = r / C;
        int yy = oy * sh - ph + ky * dh, xx = ox * sw - pw + kx * dw;
        T v = (T)0;
        if (yy >= 0 && yy < H && xx >= 0 && xx < W) v = x[((n * C + c) * H + yy) * W + xx];
        col[i] = v;
    }
}

template <typename T>
__device__ void depthwise_impl(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                               T* __restrict__ y, long long total, int C, int Co, int H, int W, int kh, int kw,
                               int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw) {
    int mult = Co / C;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i;
        int ox = r % ow; r /= ow; int oy = r % oh; r /= oh;
        int co = r % Co; long long n = r / Co;
        const T* xp = x + (n * C + co / mult) * (long long)H * W;
        const T* wp = w + (long long)co * kh * kw;
        float acc = bias ? (float)go_load(bias, co) : 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            int yy = oy * sh - ph + ky * dh;
            if (yy < 0 || yy >= H) continue;
            for (int kx = 0; kx < kw; ++kx) {
                int xx = ox * sw - pw + kx * dw;
                if (xx < 0 || xx >= W) continue;
                acc += (float)go_load(xp, (long long)yy * W + xx) * (float)go_load(wp, ky * kw + kx);
            }
        }
        go_store(y, i, acc);
    }
}
"""


def _typed(name: str, impl: str, params: str, args: str, types=_TYPES) -> str:
    out = []
    for suffix, t in types:
        p = params.replace("T*", f"{t}*")
        out.append(f'extern "C" __global__ void {name}_{suffix}({p}) {{ {impl}<{t}>({args}); }}')
    return "\n".join(out)


_POOL_P = ("const T* x, T* y, long long total, int id, int ih, int iw, int od, int oh, int ow, int kd, int kh, "
           "int kw, int sd, int sh, int sw, int pd, int ph, int pw, int ped, int peh, int pew, int dd, int dh, "
           "int dw, int mode")
POOL = PRELUDE + _POOL + _typed("go_pool", "pool_impl", _POOL_P, ", ".join(
    p.split()[-1] for p in _POOL_P.split(", ")))

RESIZE = PRELUDE + _RESIZE + _typed(
    "go_resize_axis", "resize_axis_impl",
    "const T* x, T* y, const long long* idx, const float* w, int taps, long long total, long long n_in, "
    "long long n_out, long long inner", "x, y, idx, w, taps, total, n_in, n_out, inner")

# data movement kernels only copy bits: one instantiation per element width
_WIDTHS = (("b1", "unsigned char"), ("b2", "unsigned short"), ("b4", "unsigned int"), ("b8", "unsigned long long"))
GATHER = PRELUDE + _GATHER + _typed(
    "go_gather", "gather_impl", "const T* x, const long long* ind, T* y, long long total, long long n, long long m, "
    "long long inner, int* bad", "x, ind, y, total, n, m, inner, bad", _WIDTHS)
TRANSPOSE = PRELUDE + _TRANSPOSE + _typed(
    "go_transpose2d", "transpose2d_impl", "const T* x, T* y, long long R, long long C", "x, y, R, C", _WIDTHS) + \
    "\n" + _typed("go_permute", "permute_impl", "const T* x, T* y, long long total, int rank, const long long* p",
                  "x, y, total, rank, p", _WIDTHS)
SCATTER = PRELUDE + _SCATTER + _typed(
    "go_scatter_nd", "scatter_nd_impl", "T* y, const long long* ind, const T* upd, const long long* dims, "
    "const long long* strides, int K, long long u, long long slice, int* bad",
    "y, ind, upd, dims, strides, K, u, slice, bad", _WIDTHS) + "\n" + _typed(
    "go_scatter_elements", "scatter_elements_impl", "T* y, const long long* ind, const T* upd, "
    "const long long* upd_dims, const long long* y_strides, int rank, int axis, long long axis_len, "
    "long long total, int reduction, int* bad",
    "y, ind, upd, upd_dims, y_strides, rank, axis, axis_len, total, reduction, bad", (("f32", "float"),))


def _quant_entries() -> str:
    out = []
    for xs, xt in _TYPES:
        for qs, qt in (("u8", "unsigned char"), ("i8", "signed char")):
            out.append(f'extern "C" __global__ void go_quantize_{xs}_{qs}(const {xt}* x, const float* scale, '
                       f'const {qt}* zp, {qt}* y, long long total, long long channels, long long inner, float lo, '
                       f'float hi) {{ quantize_impl<{xt}, {qt}>(x, scale, zp, y, total, channels, inner, lo, hi); }}')
            out.append(f'extern "C" __global__ void go_dequantize_{qs}_{xs}(const {qt}* q, const float* scale, '
                       f'const {qt}* zp, {xt}* y, long long total, long long channels, long long inner) '
                       f'{{ dequantize_impl<{qt}, {xt}>(q, scale, zp, y, total, channels, inner); }}')
    return "\n".join(out)


QUANT = PRELUDE + _QUANT + _quant_entries()

_IM2COL_P = ("const T* x, T* col, long long total, int C, int H, int W, int kh, int kw, int oh, int ow, int sh, "
             "int sw, int ph, int pw, int dh, int dw")
_DW_P = ("const T* x, const T* w, const T* bias, T* y, long long total, int C, int Co, int H, int W, int kh, "
         "int kw, int oh, int ow, int sh, int sw, int ph, int pw, int dh, int dw")
_names = lambda params: ", ".join(p.split()[-1] for p in params.split(", "))  # noqa: E731
CONV = PRELUDE + _CONV + _typed("go_im2col", "im2col_impl", _IM2COL_P, _names(_IM2COL_P), _WIDTHS[1:3]) + "\n" + \
    _typed("go_depthwise", "depthwise_impl", _DW_P, _names(_DW_P))

SOURCES = {"pool": POOL, "resize": RESIZE, "gather": GATHER, "transpose": TRANSPOSE, "scatter": SCATTER,
           "quant": QUANT, "conv": CONV}
