// Decode attention past a short context, on the tensor cores: a block per (KV head, split of the keys) computes every
// query head of the KV head's group at once (GQA: the G <= 8 query heads that share its keys are the rows of one
// mma tile), so each K/V row of the cache is read once a step — attend_short's splits (attention.cu) read it once per
// query head, G times. Measured first (Session 24, H200, Qwen2.5-0.5B layout at 4,096 keys, traced): 238 blocks of
// attend_short took 6.7 µs from the first wait to the last block done, though each block's own phases took 3.4: its
// 128-register blocks did not all fit beside the product before, and their G-fold reads queued behind each other.
//
// Block (AG_W warps) of KV head blockIdx.x, split blockIdx.y of the visible keys [lo, pos] (key_split, at least
// AG_KEYS keys a split): AG_KEYS keys at a time, K and V rows copied with cp.async into shared memory — the first
// AG_KEYS before the wait for the kernel before (rows of earlier steps; this token's row is not among them) — and
// warp w takes the 32 keys from 32 w:
//   S = Q K^T   rows: the group's query heads (row g < G; rows G .. 15 zero), 4 n-tiles of 8 keys x 4 k-steps;
//               q is fp32: split into fp16 q_hi + q_lo, two products (scores as exact as fp32 q against the fp16
//               cache, as attention_mma.cu does); q pre-scaled by `scale`.
//   softmax     online, row g = lane / 4 in c0, c1 of each n-tile (the quad's 4 lanes share it: two shuffles).
//   O += P V    P's accumulators are the A operand of the next mma (n-tiles 2k, 2k + 1 = k-step k), split as well
//               into p_hi + p_lo (fp16), so p keeps fp32's precision; V's B operand by ldmatrix.trans.
// Then the warps' (m, l, O) are combined in shared memory and the split's m, l and unnormalised output go to the
// workspace. The splits are merged (the sink added) by attention_merge (attention.cu), a launch of its own, or, with
// counters given, by the last of the KV head's blocks to finish (merge_splits: measured slower, off). With RoPE fused
// (cos_t given) q and the token's key are rotated here and the split that holds the position writes its key and value
// to the caches (the work of rope_kv), as the attention kernel does. Heads of D = Dv = 64 (orcd.cuda_ops.gqa_heads);
// sm_80 or later.
// Numpy reference: orcd.ops.attention.
#include <cuda_fp16.h>
#include "ops_common.cuh"
#include "mma_common.cuh"                                 // mma16816, cp_async16, pack_half2

#define AG_D 64                  // head dim, D = Dv
#ifndef AG_W
#define AG_W 8                   // warps of a block: 2, 4 or 8 (orcd.cuda_ops.GQA_WARPS gives -DAG_W)
#endif
#define AG_KEYS (32 * AG_W)      // keys of a block at a time; a split has at least this many (orcd.cuda_ops.GQA_KEYS)
#define AG_ST (AG_D + 8)         // a K or V row in shared memory, in halves (padded: a quad's B loads hit distinct banks)

// fp32 pair -> fp16 pair (hi) and the fp16 pair of what rounding left (lo): hi + lo is the pair to ~2^-22
__device__ __forceinline__ void split_half2(float x0, float x1, unsigned& hi, unsigned& lo) {
    const __half2 h = __floats2half2_rn(x0, x1);
    const float2 b = __half22float2(h);
    hi = *reinterpret_cast<const unsigned*>(&h);
    lo = pack_half2(x0 - b.x, x1 - b.y);
}

// The last of KV head blockIdx.x's su blocks to count itself done merges the splits of its G query heads (as
// attention_merge does: M = max(m_s, sink), w_s = exp(m_s - M) / (sum_s exp(m_s - M) l_s + exp(sink - M)),
// out = sum_s w_s acc_s), and sets the counter back to 0 for the next launch. Warp r finds head r's weights (lanes over
// the splits: shuffles), then thread (part, dd) sums splits part, part + AG_W / 2, ... of dim dd of every head, all
// loads in flight at once, and the parts are added in shared memory. `sm`: shared memory for G su weights and the
// parts [AG_W / 2, 8, AG_D]. The other blocks' partial results are read past L1 (__ldcg): other SMs wrote them.
// Off by default (orcd.cuda_ops.GQA_FUSED): measured slower than attention_merge's own launch (H200, Qwen2.5-0.5B
// layout at 4,096 keys: a step of 705.2 µs against 642.1; a first version, a thread a head for the weights and a thread
// a dim for the sums, 709.8 against 641.5) — a fence, an atomic and two rounds of loads on the last block's path.
__device__ __forceinline__ void merge_splits(const float* ws, int* counters, int su, int n_heads, int G, int max_splits,
                                             const float* __restrict__ sinks, float* __restrict__ out, float* sm) {
    constexpr int P = AG_W / 2;                               // parts of the splits: AG_W * 32 threads = P x 64 dims
    if (!last_to_finish(&counters[blockIdx.x], su)) return;   // uniform over the block
    __threadfence();
    const int h = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    float* sw = sm;                                           // [G, su]
    float* part = sm + ((G * su + 3) & ~3);                   // [P, 8, AG_D]
    for (int r = warp; r < G; r += AG_W) {
        const int qh = h * G + r;
        const float sk = sinks ? sinks[qh] : NEG_INF;
        float M = sk;
        for (int s = lane; s < su; s += 32) M = fmaxf(M, __ldcg(ws + (size_t)qh * max_splits + s));
        M = warp_max(M);
        float L = 0.f;
        for (int s = lane; s < su; s += 32) {
            const float w = expf(__ldcg(ws + (size_t)qh * max_splits + s) - M);
            sw[r * su + s] = w;
            L = fmaf(w, __ldcg(ws + (size_t)(n_heads + qh) * max_splits + s), L);
        }
        L = warp_sum(L) + (sinks ? expf(sk - M) : 0.f);
        __syncwarp();
        for (int s = lane; s < su; s += 32) sw[r * su + s] /= L;
    }
    __syncthreads();
    const int dd = tid % AG_D, pt = tid / AG_D;
    const float* acc = ws + (size_t)2 * n_heads * max_splits + (size_t)h * G * max_splits * AG_D + dd;
    float o[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 2
    for (int s = pt; s < su; s += P) {
#pragma unroll
        for (int r = 0; r < 8; ++r)
            if (r < G) o[r] = fmaf(sw[r * su + s], __ldcg(acc + ((size_t)r * max_splits + s) * AG_D), o[r]);
    }
#pragma unroll
    for (int r = 0; r < 8; ++r) part[(pt * 8 + r) * AG_D + dd] = o[r];
    __syncthreads();
    for (int e = tid; e < G * AG_D; e += blockDim.x) {
        float v = 0.f;
#pragma unroll
        for (int q = 0; q < P; ++q) v += part[(q * 8 + e / AG_D) * AG_D + e % AG_D];
        out[(size_t)h * G * AG_D + e] = v;
    }
    if (tid == 0) counters[h] = 0;
}

extern "C" __global__ void __launch_bounds__(32 * AG_W) attention_gqa(
        const float* __restrict__ qkv, __half* k_cache, __half* v_cache, int n_ctx, const int* __restrict__ pos_dev,
        int n_heads, int n_kv, float scale, int window,
        float* __restrict__ ws, int max_splits,               // m, l [n_heads, max_splits], acc [.., AG_D]
        const float* __restrict__ cos_t, const float* __restrict__ sin_t, int rope_dim, int neox,  // null: no RoPE
        int skip_keys,                                        // at most this many visible keys: only pass the step on
        int* __restrict__ counters,                           // [n_kv], zeros: the last split merges (null: the
        const float* __restrict__ sinks, float* __restrict__ out) {   // merge kernel does), the sink, out [n_heads, AG_D]
    extern __shared__ __align__(16) __half ag_smem[];
    __half* Ks = ag_smem;                                     // [AG_KEYS, AG_ST]
    __half* Vs = Ks + AG_KEYS * AG_ST;                        // [AG_KEYS, AG_ST]
    float* qs = reinterpret_cast<float*>(Vs + AG_KEYS * AG_ST);   // [8, AG_D]: the group's q, rotated, scaled
    float* wo = reinterpret_cast<float*>(ag_smem);            // after the keys: the warps' O [AG_W, 8, AG_D] (over Ks)
    __shared__ float wm[AG_W][8], wl[AG_W][8];
    const int base = pos_dev[0], lo = window_lo(base, window);
    if (base + 1 - lo <= skip_keys || base >= n_ctx) { pass_through(); return; }   // uniform
    int kb, ke, su;
    key_split(lo, base + 1, max_splits, AG_KEYS / ATT_TK, blockIdx.y, kb, ke, su);
    if ((int)blockIdx.y >= su) return;                        // attention_merge reads splits < su only
    const int h = blockIdx.x, G = n_heads / n_kv, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const size_t khead = (size_t)h * n_ctx;
    auto fetch = [&](int kt) {                                // keys kt .. kt + AG_KEYS - 1; zeros past ke; not base's
        for (int e = tid; e < AG_KEYS * AG_D / 8; e += 32 * AG_W) {
            const int r = e / (AG_D / 8), c8 = e % (AG_D / 8) * 8, k = kt + r;
            if (k == base) continue;                          // this token's row: written below, from qkv or the cache
            const int n = k < ke ? 16 : 0;
            const size_t src = (khead + (n ? k : kb)) * AG_D + c8;
            cp_async16(Ks + r * AG_ST + c8, k_cache + src, n);
            cp_async16(Vs + r * AG_ST + c8, v_cache + src, n);
        }
        asm volatile("cp.async.commit_group;");
    };
    fetch(kb);
    // before the wait too: this thread's dim d of q (and of the token's key), its RoPE pair and angle
    const bool rope = cos_t != nullptr;
    const int d = tid % AG_D;
    int i0 = d, i1 = d;
    float cd = 1.f, sd = 0.f;
    if (rope && d < rope_dim) {
        const int half = rope_dim / 2, i = neox ? (d < half ? d : d - half) : d / 2;
        i0 = neox ? i : 2 * i; i1 = neox ? i + half : 2 * i + 1;
        cd = cos_t[(size_t)base * half + i]; sd = sin_t[(size_t)base * half + i];
    }
    wait_primary();
    trigger_dependents();
    auto rot = [&](const float* x) {                          // dim d of head x, rotated as rope_kv rotates it
        if (!rope || d >= rope_dim) return x[d];
        float y0, y1;
        rope_pair(x[i0], x[i1], cd, sd, y0, y1);
        return d == i0 ? y0 : y1;
    };
    for (int r = tid / AG_D; r < 8; r += 32 * AG_W / AG_D)    // q rows 0..7: query head h G + r, zeros past G
        qs[r * AG_D + d] = r < G ? rot(qkv + (size_t)(h * G + r) * AG_D) * scale : 0.f;
    // the token's own key and value (the last split): rotated from qkv and written to the caches (RoPE fused), or as
    // rope_kv wrote them before this kernel
    const bool own = ke == base + 1 && tid < AG_D;
    __half kh = __float2half_rn(0.f), vh = kh;
    if (own) {
        const size_t at = (khead + base) * AG_D + d;
        if (rope) {
            kh = __float2half_rn(rot(qkv + (size_t)(n_heads + h) * AG_D));
            vh = __float2half_rn(qkv[(size_t)(n_heads + n_kv + h) * AG_D + d]);
            k_cache[at] = kh; v_cache[at] = vh;
        } else { kh = k_cache[at]; vh = v_cache[at]; }
    }
    float m = NEG_INF, l = 0.f, o[AG_D / 8][4];               // row g's running max, sum (this lane's), output
#pragma unroll
    for (int n = 0; n < AG_D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    unsigned qa[2][AG_D / 16][4];                             // A of q_hi, q_lo: row g, dims 16 ks + 2t (+ 8); rows g + 8: 0
    for (int kt = kb; kt < ke; kt += AG_KEYS) {
        if (kt != kb) { __syncthreads(); fetch(kt); }         // every warp is done with the keys before
        if (own && base - kt < AG_KEYS) { Ks[(base - kt) * AG_ST + d] = kh; Vs[(base - kt) * AG_ST + d] = vh; }
        asm volatile("cp.async.wait_group 0;" ::: "memory");
        __syncthreads();
        if (kt == kb) {
#pragma unroll
            for (int ks = 0; ks < AG_D / 16; ++ks) {
                const float2 x = *reinterpret_cast<const float2*>(qs + g * AG_D + ks * 16 + 2 * t);
                const float2 y = *reinterpret_cast<const float2*>(qs + g * AG_D + ks * 16 + 2 * t + 8);
                split_half2(x.x, x.y, qa[0][ks][0], qa[1][ks][0]);
                split_half2(y.x, y.y, qa[0][ks][2], qa[1][ks][2]);
                qa[0][ks][1] = qa[0][ks][3] = qa[1][ks][1] = qa[1][ks][3] = 0u;
            }
        }
        const int k0 = kt + 32 * warp;                        // this warp's 32 keys
        if (k0 >= ke) continue;                               // uniform over the warp
        const __half* Kw = Ks + 32 * warp * AG_ST;
        const __half* Vw = Vs + 32 * warp * AG_ST;
        float s[4][4];
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < AG_D / 16; ++ks) {          // B: K[key 8n + g][dims 16 ks + 2t (+ 8)]
                const __half* kp = Kw + (n * 8 + g) * AG_ST + ks * 16 + 2 * t;
                const unsigned b0 = *reinterpret_cast<const unsigned*>(kp), b1 = *reinterpret_cast<const unsigned*>(kp + 8);
                mma16816(s[n], qa[0][ks], b0, b1);
                mma16816(s[n], qa[1][ks], b0, b1);
            }
        }
        float mx = NEG_INF;                                   // row g: keys past ke masked
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                if (k0 + n * 8 + 2 * t + c >= ke) s[n][c] = NEG_INF;
                mx = fmaxf(mx, s[n][c]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m, mx);                        // key k0 is visible: finite
        const float alpha = __expf(m - mn);                   // (no keys before: exp(-inf) = 0)
        m = mn; l *= alpha;
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) { s[n][c] = __expf(s[n][c] - mn); l += s[n][c]; }
#pragma unroll
        for (int n = 0; n < AG_D / 8; ++n) { o[n][0] *= alpha; o[n][1] *= alpha; }
        // O += P V: k-step kk of P = n-tiles 2kk, 2kk + 1 of S (rows g + 8: 0); B of value n-tiles 2j, 2j + 1 from one
        // ldmatrix.x4.trans of the row-major V tile
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            unsigned ph[4] = {0u, 0u, 0u, 0u}, pl[4] = {0u, 0u, 0u, 0u};
            split_half2(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
            split_half2(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
#pragma unroll
            for (int j = 0; j < AG_D / 16; ++j) {
                unsigned b[4];
                v_frags(b, Vw, AG_ST, kk, j, lane);
                mma16816(o[2 * j], ph, b[0], b[1]);
                mma16816(o[2 * j], pl, b[0], b[1]);
                mma16816(o[2 * j + 1], ph, b[2], b[3]);
                mma16816(o[2 * j + 1], pl, b[2], b[3]);
            }
        }
    }
    // the warps' (m, l, O) of each row -> the split's, in the workspace (a warp without keys: m = -inf, l = 0, O = 0)
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    __syncthreads();                                          // every warp is done with Ks, Vs: wo goes over them
    if (t == 0) { wm[warp][g] = m; wl[warp][g] = l; }
#pragma unroll
    for (int n = 0; n < AG_D / 8; ++n)
        *reinterpret_cast<float2*>(wo + (warp * 8 + g) * AG_D + n * 8 + 2 * t) = make_float2(o[n][0], o[n][1]);
    __syncthreads();
    const int s = blockIdx.y;
    for (int e = tid; e < G * AG_D; e += 32 * AG_W) {
        const int r = e / AG_D, dd = e % AG_D, qh = h * G + r;
        float M = NEG_INF;
#pragma unroll
        for (int w = 0; w < AG_W; ++w) M = fmaxf(M, wm[w][r]);
        float L = 0.f, O = 0.f;
#pragma unroll
        for (int w = 0; w < AG_W; ++w) {
            const float f = __expf(wm[w][r] - M);
            L = fmaf(f, wl[w][r], L); O = fmaf(f, wo[(w * 8 + r) * AG_D + dd], O);
        }
        ws[(size_t)2 * n_heads * max_splits + ((size_t)qh * max_splits + s) * AG_D + dd] = O;
        if (dd == 0) { ws[qh * max_splits + s] = M; ws[(n_heads + qh) * max_splits + s] = L; }
    }
    if (counters) merge_splits(ws, counters, su, n_heads, G, max_splits, sinks, out, reinterpret_cast<float*>(ag_smem));
}
