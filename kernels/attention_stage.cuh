// Decode attention computed where its output is consumed: inside every CTA of the o projection (matvec_v2's staged
// input IN_ATTN; orcd.cuda_matvec.V2_INPUTS 'attn', orcd.cuda_ops.attn_desc). At a short context a layer's attention is
// a few KB of cache, and its two kernels (the split keys, then the merge) cost more in kernel boundaries than in work:
// here each CTA of the o product, after its wait for the q|k|v product, rotates q and this token's key, scores the
// visible keys, takes the softmax (with gpt-oss's sink) and the weighted values itself, and stages that output as x.
// The first CTA writes the token's rotated key and value into the caches. Beyond `short_keys` visible keys the split
// kernels run as before (they return at once below it) and x is their merged output.
// Numpy reference: orcd.cuda_ops.rope_kv_ref, then attention_ref (the fp16 caches), then the product.
#pragma once
#include <cuda_fp16.h>
#include "ops_common.cuh"

namespace mv {

// Python mirror: orcd.cuda_ops.ATTN_DESC (104 bytes).
struct AttnDesc {
    const float* qkv;                      // this token's q (n_heads D) | k (n_kv D) | v (n_kv Dv)
    __half* k_cache; __half* v_cache;      // [n_kv, n_ctx, D], [n_kv, n_ctx, Dv]
    const int* pos;                        // the token's position, on the device
    const float* cos_t; const float* sin_t;  // RoPE tables [n_ctx, rope_dim / 2], or null: no rotation
    const float* sinks;                    // [n_heads] or null
    int n_heads, n_kv, D, Dv, n_ctx, window, rope_dim, neox;
    int short_keys;                        // at most this many visible keys (a multiple of 32): computed here
    int scratch;                           // byte offset of the scratch (attn_scratch_floats) in dynamic shared memory
    float scale; int pad_;
};

#define ATTN_MAXG 8                        // query heads per KV head, at most (orcd.cuda_ops.attn_here_ok)

// Whether position p's attention is computed here (the same answer in every CTA, and in the split kernels).
__device__ __forceinline__ bool attn_here(const AttnDesc& A, int p) { return p + 1 - window_lo(p, A.window) <= A.short_keys; }

// The scratch, in floats (Python mirror: orcd.cuda_ops.attn_scratch_floats): Q [n_heads D] rotated q | P [n_heads
// short_keys] scores, then exp(score - max) | KN [n_kv D] this token's key, VN [n_kv Dv] its value (both rounded to
// fp16, as the caches hold them) | O [n_heads Dv] the output | L [n_heads] the softmax's denominators.
// Leaves O complete (after a __syncthreads) and returns it.
template <int NT>
__device__ float* attend_here(const AttnDesc& A, int p, float* sm) {
    const int H = A.n_heads, NKV = A.n_kv, D = A.D, Dv = A.Dv, G = H / NKV, SK = A.short_keys;
    const int lo = window_lo(p, A.window), n = p + 1 - lo;
    float* Q = sm; float* P = Q + H * D; float* KN = P + H * SK; float* VN = KN + NKV * D; float* O = VN + NKV * Dv;
    float* L = O + H * Dv;
    const bool rope = A.cos_t != nullptr;
    const float* rc = rope ? A.cos_t + (size_t)p * (A.rope_dim / 2) : nullptr;
    const float* rs = rope ? A.sin_t + (size_t)p * (A.rope_dim / 2) : nullptr;
    const float* qx = A.qkv; const float* kx = qx + (size_t)H * D; const float* vx = kx + (size_t)NKV * D;
    // 1. q and this token's key rotated as rope_kv rotates them, its value; the first CTA writes both caches' row p
    for (int e = threadIdx.x; e < H * D; e += NT)
        Q[e] = rope ? rope_value(qx + (e / D) * D, e % D, rc, rs, A.rope_dim, A.neox) : qx[e];
    for (int e = threadIdx.x; e < NKV * D; e += NT) {
        const __half y = __float2half_rn(rope ? rope_value(kx + (e / D) * D, e % D, rc, rs, A.rope_dim, A.neox) : kx[e]);
        KN[e] = __half2float(y);
        if (blockIdx.x == 0) A.k_cache[((size_t)(e / D) * A.n_ctx + p) * D + e % D] = y;
    }
    for (int e = threadIdx.x; e < NKV * Dv; e += NT) {
        const __half y = __float2half_rn(vx[e]);
        VN[e] = __half2float(y);
        if (blockIdx.x == 0) A.v_cache[((size_t)(e / Dv) * A.n_ctx + p) * Dv + e % Dv] = y;
    }
    __syncthreads();
    // 2. scores: one (KV head, key) a thread, its G query heads at once (the key read once, 16 bytes at a time)
    for (int it = threadIdx.x; it < NKV * n; it += NT) {
        const int kh = it / n, j = it % n, key = lo + j;
        const float* q0 = Q + (size_t)kh * G * D;
        float acc[ATTN_MAXG];
#pragma unroll
        for (int g = 0; g < ATTN_MAXG; ++g) acc[g] = 0.f;
        if (key == p) {
            for (int d = 0; d < D; ++d) {
                const float kf = KN[kh * D + d];
#pragma unroll
                for (int g = 0; g < ATTN_MAXG; ++g) if (g < G) acc[g] = fmaf(q0[g * D + d], kf, acc[g]);
            }
        } else {                               // rows before p: written by earlier steps, read-only in this kernel
            const uint4* kr = reinterpret_cast<const uint4*>(A.k_cache + ((size_t)kh * A.n_ctx + key) * D);
            for (int c = 0; c < D / 8; ++c) {
                const uint4 u = __ldg(kr + c);
                const __half2* h2 = reinterpret_cast<const __half2*>(&u);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float2 f = __half22float2(h2[i]);
                    const int d = 8 * c + 2 * i;
#pragma unroll
                    for (int g = 0; g < ATTN_MAXG; ++g)
                        if (g < G) acc[g] = fmaf(q0[g * D + d + 1], f.y, fmaf(q0[g * D + d], f.x, acc[g]));
                }
            }
        }
#pragma unroll
        for (int g = 0; g < ATTN_MAXG; ++g) if (g < G) P[(kh * G + g) * SK + j] = acc[g] * A.scale;
    }
    __syncthreads();
    // 3. softmax per head (a warp a head): max (with the sink), exp, the denominator (sink included)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int h = warp; h < H; h += NT / 32) {
        float* ph = P + (size_t)h * SK;
        float m = NEG_INF;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, ph[j]);
        m = warp_max(m);
        const float sk = A.sinks ? A.sinks[h] : NEG_INF, M = fmaxf(m, sk);
        float l = 0.f;
        for (int j = lane; j < n; j += 32) { const float e = expf(ph[j] - M); ph[j] = e; l += e; }
        l = warp_sum(l);
        if (lane == 0) L[h] = l + (A.sinks ? expf(sk - M) : 0.f);
    }
    __syncthreads();
    // 4. the weighted values: two output dims a thread (one half2 of V per key), the token's own value last
    for (int o = threadIdx.x; o < H * Dv / 2; o += NT) {
        const int h = 2 * o / Dv, dv = 2 * o % Dv, kh = h / G;
        const float* ph = P + (size_t)h * SK;
        const __half2* vr = reinterpret_cast<const __half2*>(A.v_cache + ((size_t)kh * A.n_ctx + lo) * Dv + dv);
        float a0 = 0.f, a1 = 0.f;
#pragma unroll 8
        for (int j = 0; j < n - 1; ++j) {
            const float2 v = __half22float2(__ldg(vr + (size_t)j * (Dv / 2)));
            a0 = fmaf(ph[j], v.x, a0); a1 = fmaf(ph[j], v.y, a1);
        }
        a0 = fmaf(ph[n - 1], VN[kh * Dv + dv], a0); a1 = fmaf(ph[n - 1], VN[kh * Dv + dv + 1], a1);
        O[2 * o] = a0 / L[h]; O[2 * o + 1] = a1 / L[h];
    }
    __syncthreads();
    return O;
}

}  // namespace mv
