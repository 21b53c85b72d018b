// RoPE of q and k, and the KV-cache write, for T tokens: one block per token.
//
// qkv row t holds q (n_heads x D), then k (n_kv x D), then v (n_kv x Dv). Pair i < rope_dim/2 of a head is
// (i, i + rope_dim/2) for NEOX, else (2i, 2i+1), rotated by the angle of position pos[t]:
//   x0' = x0*cos - x1*sin,   x1' = x0*sin + x1*cos     (cos, sin: row pos[t] of the (n_ctx, rope_dim/2) tables)
// with the products rounded before the sum (__fmul_rn, no fused multiply-add), exactly as numpy computes them.
// q and k are rotated in place in qkv; k and v are also stored as fp16 in k_cache (n_kv, n_ctx, D) and
// v_cache (n_kv, n_ctx, Dv) at row pos[t]. Dims >= rope_dim are not rotated; rope_dim = 0 (learned positions)
// only copies. A position outside [0, n_ctx) writes nothing.
// Numpy reference: orcd.ops.rope, then the cache write of orcd.adapters (k.transpose(1, 0, 2) -> cache[:, pos]).
#include "ops_common.cuh"

extern "C" __global__ void rope_kv(float* __restrict__ qkv, const int* __restrict__ pos,
                                   const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                   __half* __restrict__ k_cache, __half* __restrict__ v_cache,
                                   int n_heads, int n_kv, int D, int Dv, int rope_dim, int neox, int n_ctx) {
    wait_primary();
    trigger_dependents();
    const int t = blockIdx.x, p = pos[t];
    if (p < 0 || p >= n_ctx) return;
    const int row = (n_heads + n_kv) * D + n_kv * Dv, half = rope_dim / 2;
    float* q = qkv + (size_t)t * row;
    float* k = q + n_heads * D;
    const float* v = k + n_kv * D;
    const float* c = cos_t + (size_t)p * half;
    const float* s = sin_t + (size_t)p * half;
    // rotated pairs of every q and k head; the k pairs also go to the cache
    for (int e = threadIdx.x; e < (n_heads + n_kv) * half; e += blockDim.x) {
        const int h = e / half, i = e % half;
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float* x = q + h * D;                                  // k heads follow the q heads
        float y0, y1;
        rope_pair(x[i0], x[i1], c[i], s[i], y0, y1);
        x[i0] = y0; x[i1] = y1;
        if (h >= n_heads) {
            __half* kc = k_cache + ((size_t)(h - n_heads) * n_ctx + p) * D;
            kc[i0] = __float2half_rn(y0); kc[i1] = __float2half_rn(y1);
        }
    }
    // k dims past rope_dim: copied
    const int rest = D - rope_dim;
    for (int e = threadIdx.x; e < n_kv * rest; e += blockDim.x) {
        const int h = e / rest, i = rope_dim + e % rest;
        k_cache[((size_t)h * n_ctx + p) * D + i] = __float2half_rn(k[h * D + i]);
    }
    for (int e = threadIdx.x; e < n_kv * Dv; e += blockDim.x) {
        const int h = e / Dv, i = e % Dv;
        v_cache[((size_t)h * n_ctx + p) * Dv + i] = __float2half_rn(v[e]);
    }
}
