// Prompt (prefill) attention on the tensor cores: mma.sync m16n8k16 (fp16 inputs, fp32 accumulation), the
// flash-attention-2 loop. The scalar `attention` kernel (attention.cu) computes every score and every p·v with fp32
// FMAs; a prompt of 2,048 tokens spends most of its time there. Here a block owns one KV head and 64 "rows" (query
// vectors: row r is token r / G, query head r % G of the head's group of G, so one K/V tile serves every head of the
// group); warp w owns rows 16w .. 16w+15. Per tile of 64 keys (fetched with cp.async into the other of two shared
// buffers while this one is used):
//   S = Q K^T   the warp's 16 x 64 scores: 8 n-tiles of 8 keys x D/16 k-steps. q is fp32 in qkv: it is split into
//               q_hi = fp16(q) and q_lo = fp16(q - q_hi) and both are multiplied (two mma), so the scores are as
//               exact as fp32 q against the fp16 cache; q is pre-scaled by scale * log2(e) (scores in base 2).
//   softmax     online, per row, in registers: the accumulator layout of m16n8 puts row g = lane/4 in c0, c1 and row
//               g + 8 in c2, c3 of every n-tile, the 4 lanes of a quad share a row (two shuffles reduce it).
//   O += P V    P's fp32 accumulators, rounded to fp16, are directly the A operand of the next mma (n-tiles 2k,
//               2k+1 = k-step k); V's B operand comes from ldmatrix.trans of the row-major V tile.
// The one rounding the scalar kernel does not make: p in fp16 (relative 2^-11; at most 2^-11 max|v| in the output).
// Causal and window masks, sinks (added to the denominator) as in attention.cu; numpy reference: ops.attention.
// Needs sm_80 (mma.sync with fp16, cp.async, ldmatrix); D = Dv in {64, 96, 128}: attention_mma_64 / _96 / _128.
#include <cuda_fp16.h>
#include "ops_common.cuh"
#include "mma_common.cuh"                                 // mma16816, cp_async16, pack_half2

#define AM_ROWS 64       // query rows per block (4 warps x 16)
#define AM_TK 64         // keys per tile

template <int D>
__device__ __forceinline__ void attention_mma_body(
        const float* __restrict__ qkv, int q_stride, const __half* __restrict__ k_cache,
        const __half* __restrict__ v_cache, int n_ctx, int pos0, const int* __restrict__ pos_dev, int T, int n_heads,
        int n_kv, float scale, int window, const float* __restrict__ sinks, float* __restrict__ out) {
    constexpr int KS = D / 16, NT = AM_TK / 8, NV = D / 8, ST = D + 8;   // k-steps, key n-tiles, value n-tiles, row stride
    extern __shared__ __align__(16) __half am_smem[];                     // [2][K tile | V tile], rows of ST halves
    if (pos_dev) pos0 = pos_dev[0];                                      // (a captured prompt chunk: any start)
    const int G = n_heads / n_kv, h = blockIdx.x, rows = T * G;
    const int rb = (gridDim.y - 1 - blockIdx.y) * AM_ROWS;               // the latest tokens (most keys) first
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int last = min(rb + AM_ROWS, rows) - 1;
    const int lo = window_lo(pos0 + rb / G, window), hi = min(n_ctx, pos0 + last / G + 1);
    const size_t khead = (size_t)h * n_ctx;
    auto fetch = [&](int kt, int buf) {                                   // keys kt .. kt+63 into buffer buf
        __half* Ks = am_smem + buf * 2 * AM_TK * ST;
        __half* Vs = Ks + AM_TK * ST;
        for (int e = threadIdx.x; e < AM_TK * D / 8; e += 128) {
            const int key = e / (D / 8), c8 = (e % (D / 8)) * 8, ok = kt + key < hi;
            const size_t src = (khead + (ok ? kt + key : lo)) * D + c8;
            cp_async16(Ks + key * ST + c8, k_cache + src, ok ? 16 : 0);
            cp_async16(Vs + key * ST + c8, v_cache + src, ok ? 16 : 0);
        }
        asm volatile("cp.async.commit_group;");
    };
    if (lo < hi) fetch(lo, 0);
    // this thread's two rows (g and g + 8 of the warp's 16): token position, query head, validity
    int pr[2], qh[2];
    bool ok[2];
    unsigned qa[2][KS][4];                                                // q_hi, q_lo as A fragments
    const float qscale = scale * 1.4426950408889634f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = rb + warp * 16 + g + 8 * i;
        ok[i] = r < rows;
        const int rr = ok[i] ? r : rows - 1;
        pr[i] = pos0 + rr / G; qh[i] = h * G + rr % G;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {                                     // a_j: row g + 8 (j & 1), dims + 8 (j >> 1)
            const int i = j & 1, d = ks * 16 + 2 * t + 8 * (j >> 1);
            const float2 q = *reinterpret_cast<const float2*>(qkv + (size_t)(pr[i] - pos0) * q_stride + (size_t)qh[i] * D + d);
            const float x0 = q.x * qscale, x1 = q.y * qscale;
            const __half2 hi2 = __floats2half2_rn(x0, x1);
            const float2 back = __half22float2(hi2);
            qa[0][ks][j] = *reinterpret_cast<const unsigned*>(&hi2);
            qa[1][ks][j] = pack_half2(x0 - back.x, x1 - back.y);
        }
    }
    float o[NV][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < NV; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    int buf = 0;
    for (int kt = lo; kt < hi; kt += AM_TK, buf ^= 1) {
        if (kt + AM_TK < hi) { fetch(kt + AM_TK, buf ^ 1); asm volatile("cp.async.wait_group 1;"); }
        else asm volatile("cp.async.wait_group 0;");
        __syncthreads();
        const __half* Ks = am_smem + buf * 2 * AM_TK * ST;
        const __half* Vs = Ks + AM_TK * ST;
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {                             // B: K[key 8n + g][dims 16ks + 2t (+ 8)]
                const __half* kp = Ks + (n * 8 + g) * ST + ks * 16 + 2 * t;
                const unsigned b0 = *reinterpret_cast<const unsigned*>(kp), b1 = *reinterpret_cast<const unsigned*>(kp + 8);
                mma16816(s[n], qa[0][ks], b0, b1);
                mma16816(s[n], qa[1][ks], b0, b1);
            }
        }
        // mask, then the online softmax of rows g (c0, c1) and g + 8 (c2, c3)
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = c >> 1, k = kt + n * 8 + 2 * t + (c & 1);
                const bool vis = ok[i] && k < hi && k <= pr[i] && (window <= 0 || pr[i] - k < window);
                if (!vis) s[n][c] = NEG_INF;
                mx[i] = fmaxf(mx[i], s[n][c]);
            }
        float alpha[2], mu[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float mn = fmaxf(m[i], mx[i]);
            mu[i] = mn == NEG_INF ? 0.f : mn;                             // nothing visible yet: p = 0, not NaN
            alpha[i] = exp2f(m[i] - mu[i]);
            m[i] = mn;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) { s[n][c] = exp2f(s[n][c] - mu[c >> 1]); l[c >> 1] += s[n][c]; }
#pragma unroll
        for (int n = 0; n < NV; ++n) { o[n][0] *= alpha[0]; o[n][1] *= alpha[0]; o[n][2] *= alpha[1]; o[n][3] *= alpha[1]; }
        // O += P V: k-step kk of P = n-tiles 2kk, 2kk + 1 of S; B of value n-tiles 2j, 2j + 1 from one ldmatrix.x4.trans
#pragma unroll
        for (int kk = 0; kk < AM_TK / 16; ++kk) {
            const unsigned a[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                   pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int j = 0; j < NV / 2; ++j) {
                unsigned b[4];
                v_frags(b, Vs, ST, kk, j, lane);
                mma16816(o[2 * j], a, b[0], b[1]);
                mma16816(o[2 * j + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();                                                  // this buffer is refilled next-but-one
    }
    // the rows' sums over the quad, the sink, normalise, write out (T, n_heads * D)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        float f = 0.f;
        if (ok[i]) {
            const float sk = sinks ? sinks[qh[i]] * 1.4426950408889634f : NEG_INF;
            const float M = fmaxf(m[i], sk), em = exp2f(m[i] - M);
            f = em / (l[i] * em + (sinks ? exp2f(sk - M) : 0.f));
        }
        if (!ok[i]) continue;
        float* orow = out + (size_t)(pr[i] - pos0) * n_heads * D + (size_t)qh[i] * D;
#pragma unroll
        for (int n = 0; n < NV; ++n)
            *reinterpret_cast<float2*>(orow + n * 8 + 2 * t) = make_float2(o[n][2 * i] * f, o[n][2 * i + 1] * f);
    }
}

// The kernels (block (128,), grid (n_kv, ceil(T G / 64)), dynamic shared memory 512 (D + 8) bytes).
#define AM_ARGS const float* __restrict__ qkv, int q_stride, const __half* __restrict__ k_cache, \
    const __half* __restrict__ v_cache, int n_ctx, int pos0, const int* __restrict__ pos_dev, int T, int n_heads, \
    int n_kv, float scale, int window, const float* __restrict__ sinks, float* __restrict__ out
#define AM_PASS qkv, q_stride, k_cache, v_cache, n_ctx, pos0, pos_dev, T, n_heads, n_kv, scale, window, sinks, out
extern "C" __global__ void __launch_bounds__(128) attention_mma_64(AM_ARGS) { attention_mma_body<64>(AM_PASS); }
extern "C" __global__ void __launch_bounds__(128) attention_mma_96(AM_ARGS) { attention_mma_body<96>(AM_PASS); }
extern "C" __global__ void __launch_bounds__(128) attention_mma_128(AM_ARGS) { attention_mma_body<128>(AM_PASS); }
