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
    int scratch;                           // byte offset of the scratch (attn_scratch_bytes) in dynamic shared memory
    float scale; int pad_;
};

// Whether position p's attention is computed here (the same answer in every CTA, and in the split kernels).
__device__ __forceinline__ bool attn_here(const AttnDesc& A, int p) { return p + 1 - window_lo(p, A.window) <= A.short_keys; }

// The scratch (Python mirror: orcd.cuda_ops.attn_scratch_bytes), 16-byte aligned pieces: R [(n_heads + n_kv) D + n_kv Dv]
// f32 the token's q|k|v as loaded | CS [2 D] f32 cos | sin of position p | Q [n_heads D] rotated q | KN [n_kv D], VN
// [n_kv Dv] this token's key and value (rounded to fp16, as the caches hold them) | P [n_heads short_keys] scores, then
// exp(score - max) | O [n_heads Dv] the output | L [n_heads (+ pad to 4)] the denominators | Ks [n_kv short_keys (D + 8)]
// f16 the cached keys lo..p-1 (rows padded by 16 bytes: a warp's 16-byte reads of 8 consecutive rows meet no bank
// twice) | Vs [n_kv short_keys Dv] f16 the cached values.
__host__ __device__ __forceinline__ int attn_r_floats(int H, int NKV, int D, int Dv) { return (H + NKV) * D + NKV * Dv; }

// Everything the attention reads from memory, in one pass: each thread issues AB 16-byte loads, then stores them
// (the token's q|k|v, the cached keys and values of lo..p-1; cos and sin by threads of their own): one L2 round trip
// per AB NT pieces, instead of one per dependent load.
template <int NT>
__device__ __forceinline__ void attn_load(const AttnDesc& A, int p, int lo, float* R, float* CS, __half* Ks, __half* Vs) {
    constexpr int AB = 8;
    const int H = A.n_heads, NKV = A.n_kv, D = A.D, Dv = A.Dv, SK = A.short_keys, rows = p - lo;
    const int nr = attn_r_floats(H, NKV, D, Dv) / 4, rk = rows * (D / 8), rv = rows * (Dv / 8);
    const int nk = NKV * rk, tot = nr + nk + NKV * rv;
    for (int t = threadIdx.x; A.cos_t && t < A.rope_dim; t += NT) {
        const int h = A.rope_dim / 2, i = t % h;
        CS[t < h ? i : D + i] = (t < h ? A.cos_t : A.sin_t)[(size_t)p * h + i];
    }
    const uint4* kc = reinterpret_cast<const uint4*>(A.k_cache);
    const uint4* vc = reinterpret_cast<const uint4*>(A.v_cache);
    for (int b0 = 0; b0 < tot; b0 += AB * NT) {
        uint4 v[AB];
#pragma unroll
        for (int b = 0; b < AB; ++b) {
            const int e = b0 + b * NT + threadIdx.x;
            if (e < nr) v[b] = __ldg(reinterpret_cast<const uint4*>(A.qkv) + e);
            else if (e < nr + nk) {                          // key row lo + r of KV head kh, piece c
                const int f = e - nr, kh = f / rk, r = f % rk;
                v[b] = __ldg(kc + ((size_t)kh * A.n_ctx + lo) * (D / 8) + r);
            } else if (e < tot) {
                const int f = e - nr - nk, kh = f / rv, r = f % rv;
                v[b] = __ldg(vc + ((size_t)kh * A.n_ctx + lo) * (Dv / 8) + r);
            }
        }
#pragma unroll
        for (int b = 0; b < AB; ++b) {
            const int e = b0 + b * NT + threadIdx.x;
            if (e < nr) reinterpret_cast<uint4*>(R)[e] = v[b];
            else if (e < nr + nk) {
                const int f = e - nr, kh = f / rk, r = f % rk;
                reinterpret_cast<uint4*>(Ks)[((size_t)kh * SK + r / (D / 8)) * (D / 8 + 1) + r % (D / 8)] = v[b];
            } else if (e < tot) {
                const int f = e - nr - nk, kh = f / rv, r = f % rv;
                reinterpret_cast<uint4*>(Vs)[(size_t)kh * SK * (Dv / 8) + r] = v[b];
            }
        }
    }
}

template <int NT>
__device__ float* attend_here(const AttnDesc& A, int p, unsigned char* scratch) {
    const int H = A.n_heads, NKV = A.n_kv, D = A.D, Dv = A.Dv, G = H / NKV, SK = A.short_keys;
    const int lo = window_lo(p, A.window), n = p + 1 - lo;
    float* R = reinterpret_cast<float*>(scratch);
    float* CS = R + attn_r_floats(H, NKV, D, Dv); float* Q = CS + 2 * D; float* KN = Q + H * D; float* VN = KN + NKV * D;
    float* P = VN + NKV * Dv; float* O = P + H * SK; float* L = O + H * Dv;
    __half* Ks = reinterpret_cast<__half*>(L + (H + 3) / 4 * 4); __half* Vs = Ks + (size_t)NKV * SK * (D + 8);
    attn_load<NT>(A, p, lo, R, CS, Ks, Vs);
    __syncthreads();
    // 1. q and this token's key rotated as rope_kv rotates them, its value; the first CTA writes both caches' row p
    const bool rope = A.cos_t != nullptr;
    const float* kx = R + H * D; const float* vx = kx + NKV * D;
    for (int e = threadIdx.x; e < H * D; e += NT)
        Q[e] = rope ? rope_value(R + (e / D) * D, e % D, CS, CS + D, A.rope_dim, A.neox) : R[e];
    for (int e = threadIdx.x; e < NKV * D; e += NT) {
        const __half y = __float2half_rn(rope ? rope_value(kx + (e / D) * D, e % D, CS, CS + D, A.rope_dim, A.neox) : kx[e]);
        KN[e] = __half2float(y);
        if (blockIdx.x == 0) A.k_cache[((size_t)(e / D) * A.n_ctx + p) * D + e % D] = y;
    }
    for (int e = threadIdx.x; e < NKV * Dv; e += NT) {
        const __half y = __float2half_rn(vx[e]);
        VN[e] = __half2float(y);
        if (blockIdx.x == 0) A.v_cache[((size_t)(e / Dv) * A.n_ctx + p) * Dv + e % Dv] = y;
    }
    __syncthreads();
    // 2. scores: one (query head, key) a thread — consecutive threads take consecutive keys of one head, so the q row is
    // one broadcast and the padded key rows meet no bank twice; the token's own key from KN
    for (int it = threadIdx.x; it < H * n; it += NT) {
        const int h = it / n, j = it % n, kh = h / G;
        const float4* q4 = reinterpret_cast<const float4*>(Q + (size_t)h * D);
        float acc = 0.f;
        if (j == n - 1) {
            const float4* k4 = reinterpret_cast<const float4*>(KN + (size_t)kh * D);
            for (int c = 0; c < D / 4; ++c) {
                const float4 a = q4[c], k = k4[c];
                acc = fmaf(a.x, k.x, fmaf(a.y, k.y, fmaf(a.z, k.z, fmaf(a.w, k.w, acc))));
            }
        } else {
            const uint4* kr = reinterpret_cast<const uint4*>(Ks + ((size_t)kh * SK + j) * (D + 8));
#pragma unroll 4
            for (int c = 0; c < D / 8; ++c) {              // 8 dims: one 16-byte key piece, two of the q row
                const uint4 u = kr[c];
                const __half2* h2 = reinterpret_cast<const __half2*>(&u);
                const float4 a = q4[2 * c], b = q4[2 * c + 1];
                const float2 k0 = __half22float2(h2[0]), k1 = __half22float2(h2[1]);
                const float2 k2 = __half22float2(h2[2]), k3 = __half22float2(h2[3]);
                acc = fmaf(a.x, k0.x, acc); acc = fmaf(a.y, k0.y, acc); acc = fmaf(a.z, k1.x, acc); acc = fmaf(a.w, k1.y, acc);
                acc = fmaf(b.x, k2.x, acc); acc = fmaf(b.y, k2.y, acc); acc = fmaf(b.z, k3.x, acc); acc = fmaf(b.w, k3.y, acc);
            }
        }
        P[(size_t)h * SK + j] = acc * A.scale;
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
        const __half2* vr = reinterpret_cast<const __half2*>(Vs + (size_t)kh * SK * Dv + dv);
        float a0 = 0.f, a1 = 0.f;
#pragma unroll 8
        for (int j = 0; j < n - 1; ++j) {
            const float2 v = __half22float2(vr[(size_t)j * (Dv / 2)]);
            a0 = fmaf(ph[j], v.x, a0); a1 = fmaf(ph[j], v.y, a1);
        }
        a0 = fmaf(ph[n - 1], VN[kh * Dv + dv], a0); a1 = fmaf(ph[n - 1], VN[kh * Dv + dv + 1], a1);
        O[2 * o] = a0 / L[h]; O[2 * o + 1] = a1 / L[h];
    }
    __syncthreads();
    return O;
}

// The decode attention's splits merged where their output is consumed (matvec_v2's staged input IN_MERGE;
// orcd.cuda_matvec.V2_INPUTS 'merge', orcd.cuda_ops.DecodeAttention.merge_desc): past a short context attention_gqa
// writes each split's m, l and unnormalised output to its workspace, and instead of attention_merge's launch (a kernel
// boundary: 1.4-2.7 µs a layer on the H200, Qwen2.5-0.5B layout at 4,096 keys) every CTA of the o product merges
// them itself, into the float4 group of x that its thread stages (x of at most 4 NT values: stage_q8's `pre`).
// Thread i takes dims 4i..4i+3 of query head h = 4i / 64 (heads of Dv = 64: a head is 16 lanes), and the splits CH
// at a time: lane j < CH of the head's 16 loads split s0 + j's m and l, each thread the CH splits' acc values of its
// dims, all in flight at once; then the chunk's max and sum by shuffles within the 16 lanes, and each split's weight
// exp(m_s - M) from its lane. M = max(m_s, sink), out = sum_s exp(m_s - M) acc_s / (sum_s exp(m_s - M) l_s +
// exp(sink - M)), a running max rescaling what earlier chunks added: attention_merge's sums, in another order.
// Numpy reference: orcd.cuda_ops.attention_ref (of the attention the splits are of).

// Python mirror: orcd.cuda_ops.MERGE_DESC (48 bytes).
struct MergeDesc {
    const float* ws;                       // m, l [n_heads, max_splits] | acc [n_heads, max_splits, 64]
    const int* pos;                        // the token's position, on the device
    const float* sinks;                    // [n_heads] or null
    int n_heads, Dv, n_ctx, window;        // Dv = 64
    int max_splits, min_tiles;             // the split rule attention_gqa ran (key_split)
};

// Every thread of the CTA calls it (shuffles); threads past the n_heads 16 groups get zeros.
// Splits a round (orcd.cuda_matvec.MERGE_CH): 12 keeps the o product within 120 registers a thread (as allocated), so
// its CTA fits on an SM beside an attention_gqa block (136) while it waits. 16 took 139 (144) and the step slowed
// (H200, Qwen2.5-0.5B layout, 4,096 keys: 686.4 µs against 600.8 at 12 and 643.2 with attention_merge; 06b).
#ifndef ORCD_MERGE_CH
#define ORCD_MERGE_CH 12
#endif
__device__ __forceinline__ float4 merged_x4(const MergeDesc& A) {
    constexpr int W = 16;                                     // lanes of a head
    constexpr int CH = ORCD_MERGE_CH;                         // splits a round
    static_assert(CH >= 1 && CH <= W, "ORCD_MERGE_CH: 1 to 16 splits a round");
    const int i = threadIdx.x, j = i % W, S = A.max_splits;
    const int h = min(i / W, A.n_heads - 1), p = A.pos[0];   // (past the heads: the last head's, discarded)
    int kb, ke, su;
    key_split(window_lo(p, A.window), min(A.n_ctx, p + 1), S, A.min_tiles, 0, kb, ke, su);
    const float* ms = A.ws + (size_t)h * S;
    const float* ls = A.ws + (size_t)(A.n_heads + h) * S;
    const float4* acc = reinterpret_cast<const float4*>(A.ws + (size_t)2 * A.n_heads * S + (size_t)h * S * 64) + j;
    float M = NEG_INF, L = 0.f;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < su; s0 += CH) {                     // uniform
        const bool v = j < CH && s0 + j < su;
        const float m = v ? __ldg(ms + s0 + j) : NEG_INF, l = v ? __ldg(ls + s0 + j) : 0.f;
        float4 a[CH];
#pragma unroll
        for (int c = 0; c < CH; ++c)
            a[c] = s0 + c < su ? __ldg(acc + (size_t)(s0 + c) * 16) : make_float4(0.f, 0.f, 0.f, 0.f);
        float mc = fmaxf(M, m);
#pragma unroll
        for (int d = W / 2; d > 0; d >>= 1) mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, d));   // split s0: finite
        const float r = expf(M - mc), w = expf(m - mc);       // (first chunk: r = 0 times zeros; past su: w = 0)
        float lw = w * l;
#pragma unroll
        for (int d = W / 2; d > 0; d >>= 1) lw += __shfl_xor_sync(0xffffffffu, lw, d);
        L = fmaf(L, r, lw); o.x *= r; o.y *= r; o.z *= r; o.w *= r;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const float wc = __shfl_sync(0xffffffffu, w, c, W);
            o.x = fmaf(wc, a[c].x, o.x); o.y = fmaf(wc, a[c].y, o.y); o.z = fmaf(wc, a[c].z, o.z); o.w = fmaf(wc, a[c].w, o.w);
        }
        M = mc;
    }
    if (A.sinks) {
        const float sk = __ldg(A.sinks + h), mc = fmaxf(M, sk), r = expf(M - mc);
        L = fmaf(L, r, expf(sk - mc)); o.x *= r; o.y *= r; o.z *= r; o.w *= r;
    }
    if (i >= A.n_heads * W) return make_float4(0.f, 0.f, 0.f, 0.f);
    return make_float4(o.x / L, o.y / L, o.z / L, o.w / L);
}

}  // namespace mv
