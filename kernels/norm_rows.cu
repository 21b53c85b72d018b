// RMSNorm and LayerNorm of the rows of x (T, d), with the residual add fused in front; and gemma3's per-head
// RMSNorm of q and k inside the qkv buffer.
//
// norm_rows: one block per row. Pass 1 adds the residual (written back into x: x is the residual stream) and sums
// x (LayerNorm) or x^2 (RMSNorm); LayerNorm makes a second pass for the centred variance, as numpy does; the
// last pass writes out = (x - mean) / sqrt(var + eps) * w + b. out may be x itself: each thread reads and
// writes only its own elements, so x and out are not __restrict__.
// Numpy references: orcd.ops.rms_norm, orcd.ops.layer_norm.
#include "ops_common.cuh"

#define NORM_MAXV 8   // values per thread, kept in registers: d <= 8 * blockDim.x

extern "C" __global__ void norm_rows(float* x,                           // [T, d], += residual in place
                                     const float* __restrict__ residual,  // [T, d] or null
                                     const float* __restrict__ w,         // [d] or null (no weight)
                                     const float* __restrict__ b,         // [d] or null (no bias)
                                     float* out,                          // [T, d], may alias x
                                     int d, float eps, int layer) {
    wait_primary();
    trigger_dependents();
    __shared__ float red[32];
    float* xr = x + (size_t)blockIdx.x * d;
    float* yr = out + (size_t)blockIdx.x * d;
    const float* rr = residual ? residual + (size_t)blockIdx.x * d : nullptr;
    float v[NORM_MAXV], wv[NORM_MAXV], bv[NORM_MAXV];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < NORM_MAXV; ++k) {                     // all loads first (w, b too): one memory latency
        const int i = threadIdx.x + k * blockDim.x;
        v[k] = 0.f; wv[k] = 1.f; bv[k] = 0.f;
        if (i < d) {
            v[k] = xr[i];
            if (rr) v[k] += rr[i];
            if (w) wv[k] = w[i];
            if (b) bv[k] = b[i];
        }
    }
#pragma unroll
    for (int k = 0; k < NORM_MAXV; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < d) {
            if (rr) xr[i] = v[k];
            s += layer ? v[k] : v[k] * v[k];
        }
    }
    s = block_sum(s, red);
    float mean = 0.f, var;
    if (layer) {
        mean = s / (float)d;
        float s2 = 0.f;
#pragma unroll
        for (int k = 0; k < NORM_MAXV; ++k)
            if (threadIdx.x + k * blockDim.x < d) { const float c = v[k] - mean; s2 += c * c; }
        var = block_sum(s2, red) / (float)d;
    } else {
        var = s / (float)d;                                    // mean of squares
    }
    const float denom = sqrtf(var + eps);
#pragma unroll
    for (int k = 0; k < NORM_MAXV; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < d) {
            float y = (v[k] - mean) / denom;
            if (w) y *= wv[k];
            if (b) y += bv[k];
            yr[i] = y;
        }
    }
}

#define HEAD_MAXV 8   // head_dim <= 256

// In place: buf[t, col_offset + h*head_dim + i] for i < head_dim is RMS-normalised over i, times w[i];
// one warp per (token t, head h). Numpy reference: orcd.ops.rms_norm over the (T, n_heads, head_dim) view.
extern "C" __global__ void head_rms_norm(float* __restrict__ buf, const float* __restrict__ w,
                                         int n_heads, int head_dim, float eps, int col_offset, int row_stride,
                                         int T) {
    wait_primary();
    trigger_dependents();
    const int item = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (item >= T * n_heads) return;
    const int t = item / n_heads, h = item % n_heads;
    float* p = buf + (size_t)t * row_stride + col_offset + h * head_dim;
    float v[HEAD_MAXV], wv[HEAD_MAXV], s = 0.f;
#pragma unroll
    for (int k = 0; k < HEAD_MAXV; ++k) {
        const int i = lane + 32 * k;
        v[k] = i < head_dim ? p[i] : 0.f;
        wv[k] = i < head_dim ? w[i] : 0.f;
        s += v[k] * v[k];
    }
    const float denom = sqrtf(warp_sum(s) / (float)head_dim + eps);
#pragma unroll
    for (int k = 0; k < HEAD_MAXV; ++k)
        if (lane + 32 * k < head_dim) p[lane + 32 * k] = v[k] / denom * wv[k];
}
