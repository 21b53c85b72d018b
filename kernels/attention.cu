// Causal attention of fp32 queries over the fp16 KV cache, for decode (one token, keys split among blocks,
// flash-decoding) and for prefill (T tokens, each block all the keys its queries see).
//
// A block owns one KV head h and up to 8 "rows" (with rows * Dv <= 1024): query vectors of Gb query heads of
// h's group (GQA: query heads h*G .. h*G+G-1 share KV head h) times BQ tokens, so the K/V tiles it loads serve
// every row. The next tile's K and V are fetched into registers while the current one is computed. Per tile
// of 32 keys the block
//   1. copies K (32 x D) and V (32 x Dv) fp16 into shared memory with 16-byte loads (K rows padded by one
//      half2 so that lane j reading row j hits bank j),
//   2. warp r, lane j: score of row r against key j (fp32 dot product, times scale), -inf where the key is
//      masked (k > position, or position - k >= window); the warp updates its running max m and sum l
//      (online softmax) and stores p_j = exp(score - m) and the rescale factor exp(m_old - m),
//   3. every thread: its outputs (row, dv) acc = acc * rescale + sum_j p_j * V[j, dv] (index arithmetic hoisted
//      out of the loop: a division in it cost more than all the rest).
// Prefill (max_splits = 0) then divides by l (with the sink logit, if any) and writes out (T, n_heads * Dv).
// Decode (max_splits > 0, T = 1) splits the visible keys [lo, pos] among blockIdx.z (key_split) and writes
// each split's m, l and unnormalised acc into the workspace; attention_merge combines them. The position is
// read on the device, so one captured graph serves every step. At a short context (short_keys) one block per query
// head does it all instead (attend_short) and the merge passes the step on; up to short_splits times as many keys,
// attend_short's blocks split them and the merge combines those (short_split_keys). With skip_keys (decode, opt-in: the o product computes
// the attention itself, attention_stage.cuh) both kernels only pass the step on while at most that many keys are visible.
// Numpy reference: orcd.ops.attention.
#include "ops_common.cuh"

#define ATT_NT 256     // threads per block: 8 warps, one per row
#define ATT_MAXR 8     // rows per block
#define ATT_MAXO 4     // outputs per thread: rows * Dv <= ATT_NT * ATT_MAXO = 1024
#define ATT_PF 4       // 16-byte pieces of a K (and of a V) tile per thread: 32 keys x 256 dims / 8 / ATT_NT

// Decode, the merge fused (counters given): the splits of block group blockIdx.x count themselves done on
// counters[blockIdx.x]; the last one merges the group's query heads qh0 .. qh0 + nq - 1 exactly as attention_merge
// does (warp w: head qh0 + w), writes out, and sets the counter back to 0 for the next launch (or graph replay).
// The other splits' partial results are read past L1 (__ldcg): they were written by other SMs in this kernel.
__device__ __forceinline__ void merge_last(const float* ws, int* counters, int su, int n_heads, int Dv, int max_splits,
                                           int qh0, int nq, const float* __restrict__ sinks, float* __restrict__ out) {
    __shared__ int last;
    __threadfence();                                          // this split's m, l, acc: visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[blockIdx.x], 1) == su - 1;
    __syncthreads();
    if (!last) return;                                        // uniform over the block
    __threadfence();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp < nq) {
        const int qh = qh0 + warp;
        const float* ms = ws + (size_t)qh * max_splits;
        const float* ls = ws + (size_t)(n_heads + qh) * max_splits;
        const float* acc = ws + (size_t)2 * n_heads * max_splits + (size_t)qh * max_splits * Dv;
        float M = NEG_INF;
        for (int s = lane; s < su; s += 32) M = fmaxf(M, __ldcg(ms + s));
        M = warp_max(M);
        const float sk = sinks ? sinks[qh] : NEG_INF;
        M = fmaxf(M, sk);
        float L = 0.f, a[ATT_MAXO * 2];                       // Dv <= 256: 8 values per lane
#pragma unroll
        for (int i = 0; i < ATT_MAXO * 2; ++i) a[i] = 0.f;
        for (int s = 0; s < su; ++s) {
            const float w = expf(__ldcg(ms + s) - M);
            L = fmaf(w, __ldcg(ls + s), L);
#pragma unroll
            for (int i = 0; i < ATT_MAXO * 2; ++i)
                if (lane + 32 * i < Dv) a[i] = fmaf(w, __ldcg(acc + (size_t)s * Dv + lane + 32 * i), a[i]);
        }
        L += sinks ? expf(sk - M) : 0.f;
#pragma unroll
        for (int i = 0; i < ATT_MAXO * 2; ++i)
            if (lane + 32 * i < Dv) out[(size_t)qh * Dv + lane + 32 * i] = a[i] / L;
    }
    if (threadIdx.x == 0) counters[blockIdx.x] = 0;
}

// Decode at a short context (at most short_keys visible keys; a kernel argument, uniform over the grid): block b of
// the grid (linear index) < n_heads computes query head b alone and writes its normalised output, so attention_merge
// only passes the step on. Heads of DH = 32 or 64 dims (D = Dv: orcd.cuda_ops.short_keys_for), a template argument:
// this path is latency-bound, and its time after the wait grows with the bytes of code it runs for the first time
// on the SM (a 20-key step measured ~0.23 us per KB: instruction fetch), so the code is kept short — no runtime
// head-dim branches, one p and V read per 4 keys. Warp w takes the key tiles w, w + 8, ... of [lo, base]; lane j holds
// key 32t + j: its K and V rows (DH/8 16-byte pieces each) are loaded into registers with every load in flight at
// once — the first tile's before the wait (rows of earlier steps; the kernel before writes only this token's) — its
// score against q (fp32 in shared memory, rotated as it is loaded), the warp's online softmax, then its V row and
// p_j go to the warp's tile in shared memory and lane l sums its dims (2l, 2l + 1 of 64; l of 32) over the tile's
// keys, four keys a step (rows past the last key are zeros, their p 0). The token's own key and value are the split
// path's: rotated, rounded to fp16 (the group's first head writes them to the caches). The 8 warps' (m, l, acc) are
// merged in shared memory with the sink, as attention_merge merges splits.
// With short_splits > 1 it also takes up to short_splits * short_keys keys: block b = query head b % n_heads, split
// s = b / n_heads of the keys (key_split: at most short_splits splits of at least short_keys keys, so each warp has
// one tile of them); one split writes the normalised output as above, several write their (m, l, acc) into the
// workspace for attention_merge, as the split path does. Only the last split holds the token's own key.
// The RoPE angles and the sink are read before the wait as well, and the token's q, k, v all at once after it.
// Dynamic shared memory: ATS_W * 32 * (DH + 8) halves (the V tiles, rows padded), the warps' sums [ATS_W, DH], their
// p [ATS_W, 32] and q [DH] floats, k, v [2 DH] halves (Python mirror: orcd.cuda_ops._attn_short_smem). `sync` is the
// kernel's wait for the kernel before.
#define ATS_W 8        // warps of a short-context block
// The most visible keys attend_short takes (in splits, short_splits > 1), or the split kernels beyond.
__device__ __forceinline__ int short_split_keys(int short_keys, int short_splits) { return short_keys * max(short_splits, 1); }
__device__ __forceinline__ int short_head() { return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); }

// Diagnostics, compiled in only with -DORCD_TRACE (ORCD_TRACE=1: orcd.cuda.kernel_options; read by
// scripts/step_timeline.py --trace): thread 0 of each attend_short block stamps the global timer (ns) when the block
// starts (0), when its wait for the kernel before returns (1), when the token's q, k, v are in shared memory (2), when
// its warp's key tiles are done (3), when the warps' sums are in shared memory (4) and when it is done (5), then
// appends [block, splits, t0 .. t5] to att_trace.
#ifdef ORCD_TRACE
#define ATT_TRACE_CAP 16384
extern "C" {                                                // unmangled: RawModule.get_global finds them by name
__device__ unsigned long long att_trace[ATT_TRACE_CAP][8];
__device__ unsigned int att_trace_n;
}
#define ATT_STAMP(i) do { if (threadIdx.x == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(att_t[i])); } while (0)
#else
#define ATT_STAMP(i) do {} while (0)
#endif

template <int DH, class Sync>
__device__ __forceinline__ void attend_short(
        const float* __restrict__ qkv, const __half* k_cache, const __half* v_cache, int n_ctx, int base, int lo,
        int n_heads, int n_kv, float scale, const float* __restrict__ sinks, float* __restrict__ out,
        const float* rc, const float* rs, int rope_dim, int neox, __half* k_new, __half* v_new, float* smem,
        int short_keys, int short_splits, float* __restrict__ ws, int max_splits, Sync sync) {
    constexpr int NP = DH / 8, VS = DH + 8;                   // 16-byte pieces of a row; a V row in the tile, padded
    const int b = short_head(), qh = b % n_heads, G = n_heads / n_kv, h = qh / G, tid = threadIdx.x, warp = tid / 32,
              lane = tid % 32;
#ifdef ORCD_TRACE
    unsigned long long att_t[6];
#endif
    ATT_STAMP(0);
    int kb = lo, ke = base + 1, su = 1;                       // this block's keys [kb, ke)
    if (short_splits > 0) key_split(lo, base + 1, short_splits, short_keys / 32, b / n_heads, kb, ke, su);
    if (b / n_heads >= su) return;
    const int last = ke - 1;                                  // the block's last key (base: the token's own, last split)
    const size_t khead = (size_t)h * n_ctx;
    const bool rope = rc != nullptr, own_here = rope && last == base;
    __half* vt = reinterpret_cast<__half*>(smem) + warp * 32 * VS;     // this warp's V tile [32, VS] (no bank conflict)
    float* wacc = smem + ATS_W * 16 * VS;                              // the warps' sums [ATS_W, DH], after the V tiles
    float* pw = wacc + ATS_W * DH + warp * 32;                         // this warp's p [32]
    float* qs = wacc + ATS_W * (DH + 32);
    __half* kn = reinterpret_cast<__half*>(qs + DH);                   // 16-byte aligned: DH % 8 == 0
    __half* vn = kn + DH;
    __shared__ float wm[ATS_W], wl[ATS_W];
    uint4 kr[NP], vr[NP];
    const int kt0 = kb + 32 * warp;
    const bool early = kt0 + lane < base && kt0 + lane <= last;   // a row of this split an earlier step wrote
    short_rows(kr, vr, early, k_cache + (khead + kt0 + lane) * DH, v_cache + (khead + kt0 + lane) * DH);
    // before the wait too: what no kernel of the step writes — thread d's RoPE pair and angle (as rope_value), the sink
    const bool rot = rope && tid < rope_dim;
    int i0 = tid, i1 = tid;
    float cd = 1.f, sd = 0.f;
    if (rot) {
        const int half = rope_dim / 2, i = neox ? (tid < half ? tid : tid - half) : tid / 2;
        i0 = neox ? i : 2 * i; i1 = neox ? i + half : 2 * i + 1;
        cd = rc[i]; sd = rs[i];
    }
    const float sk = sinks && su == 1 ? sinks[qh] : NEG_INF;  // several splits: attention_merge adds the sink
    sync();
    ATT_STAMP(1);
    // the token's q (and, in the last split, its k and v): every load issued before any is used
    if (tid < DH) {
        const float* qx = qkv + (size_t)qh * DH;
        const float* kx = qkv + (size_t)n_heads * DH + (size_t)h * DH;
        const float* vx = qkv + (size_t)(n_heads + n_kv) * DH + (size_t)h * DH;
        float q0 = qx[i0], q1 = qx[i1], k0 = 0.f, k1 = 0.f, v0 = 0.f, y0, y1;
        if (own_here) { k0 = kx[i0]; k1 = kx[i1]; v0 = vx[tid]; }
        if (rot) { rope_pair(q0, q1, cd, sd, y0, y1); q0 = tid == i0 ? y0 : y1; }
        qs[tid] = q0;
        if (own_here) {
            if (rot) { rope_pair(k0, k1, cd, sd, y0, y1); k0 = tid == i0 ? y0 : y1; }
            const __half kh = __float2half_rn(k0), vh = __float2half_rn(v0);
            kn[tid] = kh; vn[tid] = vh;
            if (qh % G == 0) { k_new[(khead + base) * DH + tid] = kh; v_new[(khead + base) * DH + tid] = vh; }
        }
    }
    __syncthreads();
    ATT_STAMP(2);
    float m = NEG_INF, l = 0.f, a0 = 0.f, a1 = 0.f;           // a0, a1: this lane's dims of the warp's sum
    const float4* q4 = reinterpret_cast<const float4*>(qs);
    for (int kt = kt0; kt <= last; kt += 32 * ATS_W) {        // uniform over the warp
        const int k = kt + lane;
        if (kt != kt0 || !early) {                            // the first tile's rows not loaded before the wait, the rest
            const bool own = own_here && k == base;
            short_rows(kr, vr, k <= last, own ? kn : k_cache + (khead + k) * DH, own ? vn : v_cache + (khead + k) * DH);
        }
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int c = 0; c < NP; ++c) key_piece_dot(kr[c], q4 + 2 * c, s0, s1);
        const float sc = k <= last ? (s0 + s1) * scale : NEG_INF;
        const float mnew = fmaxf(m, warp_max(sc));            // lane 0's key kt <= last is visible: mnew is finite
        const float p = __expf(sc - mnew), alpha = __expf(m - mnew);   // exp(-inf) = 0: no key, or no tile before
        l = l * alpha + p;                                    // this lane's share; summed over the warp at the end
        m = mnew;
        a0 *= alpha; a1 *= alpha;
        __syncwarp();                                         // the previous tile's reads of vt and pw are done
        pw[lane] = p;
#pragma unroll
        for (int c = 0; c < NP; ++c) reinterpret_cast<uint4*>(vt + lane * VS)[c] = vr[c];
        __syncwarp();
        const int n4 = min(32, last + 4 - kt) / 4;             // 4-key steps over the tile's keys
#pragma unroll 1                                              // (the compiler unrolled it: 3x the code)
        for (int j = 0; j < 4 * n4; j += 4) {
            const float4 p4 = *reinterpret_cast<const float4*>(pw + j);
            const float pj[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (DH == 64) {
                    const float2 v = __half22float2(reinterpret_cast<const __half2*>(vt + (j + i) * VS)[lane]);
                    a0 = fmaf(pj[i], v.x, a0); a1 = fmaf(pj[i], v.y, a1);
                } else {
                    a0 = fmaf(pj[i], __half2float(vt[(j + i) * VS + lane]), a0);
                }
            }
        }
    }
    ATT_STAMP(3);
    l = warp_sum(l);
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
    if (DH == 64) reinterpret_cast<float2*>(wacc + warp * DH)[lane] = make_float2(a0, a1);
    else wacc[warp * DH + lane] = a0;
    __syncthreads();
    ATT_STAMP(4);
    const int s = b / n_heads;
    if (tid < DH) {
        float M = sk;
#pragma unroll
        for (int w = 0; w < ATS_W; ++w) M = fmaxf(M, wm[w]);
        float L = __expf(sk - M), o = 0.f;                    // (no sink: exp(-inf) = 0)
#pragma unroll
        for (int w = 0; w < ATS_W; ++w) {
            const float e = __expf(wm[w] - M);                // a warp without keys: 0
            L = fmaf(e, wl[w], L); o = fmaf(e, wacc[w * DH + tid], o);
        }
        if (su > 1) ws[(size_t)2 * n_heads * max_splits + ((size_t)qh * max_splits + s) * DH + tid] = o;
        else out[(size_t)qh * DH + tid] = o / L;
        if (su > 1 && tid == 0) { ws[qh * max_splits + s] = M; ws[(n_heads + qh) * max_splits + s] = L; }
    }
#ifdef ORCD_TRACE
    ATT_STAMP(5);
    if (tid == 0) {
        const unsigned i = atomicAdd(&att_trace_n, 1u);
        if (i < ATT_TRACE_CAP) {
            att_trace[i][0] = (unsigned long long)b; att_trace[i][1] = (unsigned long long)su;
            for (int j = 0; j < 6; ++j) att_trace[i][2 + j] = att_t[j];
        }
    }
#endif
}

// attend_short for heads of D = Dv = 32 or 64 dims (orcd.cuda_ops.short_keys_for lets no other layout get here), the
// RoPE angles at the position `base` (cos_t null: no RoPE fused).
template <class Sync>
__device__ __forceinline__ void short_heads(
        int D, const float* __restrict__ qkv, const __half* k_cache, const __half* v_cache, int n_ctx, int base, int lo,
        int n_heads, int n_kv, float scale, const float* __restrict__ sinks, float* __restrict__ out,
        const float* cos_t, const float* sin_t, int rope_dim, int neox, __half* k_new, __half* v_new, float* smem,
        int short_keys, int short_splits, float* __restrict__ ws, int max_splits, Sync sync) {
    const float* rc = cos_t ? cos_t + (size_t)base * (rope_dim / 2) : nullptr;
    const float* rs = cos_t ? sin_t + (size_t)base * (rope_dim / 2) : nullptr;
    if (D == 64) attend_short<64>(qkv, k_cache, v_cache, n_ctx, base, lo, n_heads, n_kv, scale, sinks, out, rc, rs,
                                  rope_dim, neox, k_new, v_new, smem, short_keys, short_splits, ws, max_splits, sync);
    else attend_short<32>(qkv, k_cache, v_cache, n_ctx, base, lo, n_heads, n_kv, scale, sinks, out, rc, rs,
                          rope_dim, neox, k_new, v_new, smem, short_keys, short_splits, ws, max_splits, sync);
}

// Decode in a graph captured for a short context (orcd.cuda_ops.DecodeAttention(merge=False)): attend_short's blocks
// alone, one per query head — not the attention kernel's grid of split blocks with its split path's code. At most
// short_keys keys are visible whenever it runs (the caller's contract); past that, or past the cache, it leaves out
// as it is. The arguments are the attention kernel's, for one token.
extern "C" __global__ void __launch_bounds__(256) attention_short(
        const float* __restrict__ qkv, const __half* __restrict__ k_cache, const __half* __restrict__ v_cache, int n_ctx,
        const int* __restrict__ pos_dev, int n_heads, int n_kv, int D, float scale, int window,
        const float* __restrict__ sinks, float* __restrict__ out, const float* __restrict__ cos_t,
        const float* __restrict__ sin_t, int rope_dim, int neox, __half* k_new, __half* v_new, int short_keys) {
    extern __shared__ float smem[];
    const int base = pos_dev[0], lo = window_lo(base, window);
    auto sync = [] { wait_primary(); trigger_dependents(); };
    if (base >= n_ctx || base + 1 - lo > short_keys) { sync(); return; }   // uniform
    short_heads(D, qkv, k_cache, v_cache, n_ctx, base, lo, n_heads, n_kv, scale, sinks, out, cos_t, sin_t, rope_dim,
                neox, k_new, v_new, smem, short_keys, 0, nullptr, 0, sync);
}

extern "C" __global__ void __launch_bounds__(256, 2) attention(
        const float* __restrict__ qkv, int q_stride,          // q of token t, head qh: qkv[t*q_stride + qh*D]
        const __half* __restrict__ k_cache, const __half* __restrict__ v_cache, int n_ctx,
        const int* __restrict__ pos_dev, int pos0, int T,     // token t is at pos_dev[0] + t (if given) or pos0 + t
        int n_heads, int n_kv, int D, int Dv, float scale, int window,
        int Gb, int BQ,                                       // rows of a block: BQ tokens x Gb query heads
        const float* __restrict__ sinks,                      // [n_heads] or null
        float* __restrict__ out,                              // prefill: [T, n_heads * Dv]; decode with counters: [n_heads * Dv]
        float* __restrict__ ws, int max_splits, int min_tiles,  // decode: m, l [n_heads, max_splits], acc [.., Dv]
        int* __restrict__ counters,                           // decode: null (attention_merge follows), or [gridDim.x]
        const float* __restrict__ cos_t, const float* __restrict__ sin_t, int rope_dim, int neox,  // decode: RoPE fused
        __half* k_new, __half* v_new,                         // (cos_t given): this token's k, v go there (the caches)
        int skip_keys,                                        // decode: at most this many visible keys: the o product
                                                              // computes the attention (attention_stage.cuh), not this
        int short_keys,                                       // decode: at most this many (and more than skip_keys):
                                                              // attend_short, the merge passes the step on
        int short_splits) {                                   // > 1: attend_short up to short_splits * short_keys keys
                                                              // too, in that many splits (short_split_keys)
    const int G = n_heads / n_kv, nz = gridDim.x / n_kv;      // nz blocks of up to Gb heads per KV head
    const int h = blockIdx.x / nz, g0 = (blockIdx.x % nz) * Gb, gcount = min(Gb, G - g0);
    const int t0 = blockIdx.y * BQ, tcount = min(BQ, T - t0), R = Gb * BQ;
    const int base = pos_dev ? pos_dev[0] : pos0;
    if (pos_dev && base + 1 - window_lo(base, window) <= skip_keys) { pass_through(); return; }   // uniform
    const int lo = window_lo(base + t0, window), hi = min(n_ctx, base + t0 + tcount);  // (clamped: memory safety)
    const bool shrt = pos_dev && T == 1 && max_splits > 0 && base + 1 - lo <= short_split_keys(short_keys, short_splits)
                      && base < n_ctx;                        // uniform
    if (shrt && short_head() >= n_heads * max(short_splits, 1)) return;   // attend_short: a block per query head (split)
    auto sync = [] { wait_primary(); trigger_dependents(); };   // the kernel before is done; the next may launch
    extern __shared__ float smem[];
    if (shrt) {
        short_heads(D, qkv, k_cache, v_cache, n_ctx, base, lo, n_heads, n_kv, scale, sinks, out, cos_t, sin_t, rope_dim,
                    neox, k_new, v_new, smem, short_keys, short_splits, ws, max_splits, sync);
        return;
    }
    int kb = lo, ke = hi, su = 1;
    if (max_splits > 0 && !shrt) {
        key_split(lo, hi, max_splits, min_tiles, blockIdx.z, kb, ke, su);
        if ((int)blockIdx.z >= su) return;                    // attention_merge reads splits < su only
    }
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int kstride = (D + 2) / 2;                          // K row in shared memory, in half2
    float* Qs = smem;                                         // [R, D]
    float* Ps = Qs + R * D;                                   // [ATT_MAXR, ATT_TK]
    float* fac = Ps + ATT_MAXR * ATT_TK;                      // [ATT_MAXR]
    __half2* Ks = reinterpret_cast<__half2*>(fac + ATT_MAXR); // [ATT_TK, kstride]
    __half* Vs = reinterpret_cast<__half*>(Ks + ATT_TK * kstride);  // [ATT_TK, Dv], 16-byte aligned

    // the next tile is fetched into registers while the current one is computed: piece e = tid + i*ATT_NT of a
    // tile is halves 8e .. 8e+7 of its K (V) rows, contiguous in the cache; ksoff: where it goes in the padded Ks
    const size_t khead = (size_t)h * n_ctx;
    uint4 kr[ATT_PF], vr[ATT_PF];
    int ksoff[ATT_PF];
#pragma unroll
    for (int i = 0; i < ATT_PF; ++i) {
        const int e = tid + i * ATT_NT;
        ksoff[i] = e < ATT_TK * D / 8 ? e / (D / 8) * kstride + e % (D / 8) * 4 : -1;
    }
    auto fetch = [&](int kt) {
        const int nk = min(ATT_TK, ke - kt);
        const __half* kg = k_cache + (khead + kt) * D;
        const __half* vg = v_cache + (khead + kt) * Dv;
#pragma unroll
        for (int i = 0; i < ATT_PF; ++i) {
            const int e8 = (tid + i * ATT_NT) * 8;
            kr[i] = e8 < nk * D ? *reinterpret_cast<const uint4*>(kg + e8) : make_uint4(0, 0, 0, 0);
            vr[i] = e8 < nk * Dv ? *reinterpret_cast<const uint4*>(vg + e8)
                                 : make_uint4(0, 0, 0, 0);    // zero rows past the keys: 0 * V, never 0 * garbage
        }
    };
    // Launched with PDL, this block may run before RoPE (the kernel before) has written q and this token's key and
    // value. The cache rows of earlier positions were written by earlier steps, and the position by the step's
    // bookkeeping: decode fetches its first tile before waiting when that tile holds no key of this token.
    // With RoPE fused (decode, cos_t given) the kernel before is the qkv product, which writes no cache row: the first
    // tile is always fetched early (this token's row, if in it, is patched in shared memory below).
    const bool rope = cos_t != nullptr;
    const bool early = pos_dev && (rope || min(kb + ATT_TK, ke) <= base);
    if (early) fetch(kb);
    sync();
    if (!early) fetch(kb);
    // RoPE fused: q is rotated as it is loaded. The block whose split holds this token's position rotates the token's
    // key (KV head h), keeps it and the value in shared memory for its tile, and (the first block of the group) writes
    // both to the caches for the steps after — the work of rope_kv, whose launch this saves.
    __shared__ float knew[256], vnew[256];                    // D, Dv <= 256
    const float* rc = rope ? cos_t + (size_t)base * (rope_dim / 2) : nullptr;
    const float* rs = rope ? sin_t + (size_t)base * (rope_dim / 2) : nullptr;
    const bool has_new = rope && kb <= base && base < ke;     // uniform over the block
    if (has_new) {
        const float* kx = qkv + (size_t)n_heads * D + (size_t)h * D;
        const float* vx = qkv + (size_t)(n_heads + n_kv) * D + (size_t)h * Dv;
        for (int d = tid; d < D; d += ATT_NT) {
            const float y = rope_value(kx, d, rc, rs, rope_dim, neox);
            knew[d] = y;
            if (g0 == 0) k_new[(khead + base) * D + d] = __float2half_rn(y);
        }
        for (int d = tid; d < Dv; d += ATT_NT) {
            vnew[d] = vx[d];
            if (g0 == 0) v_new[(khead + base) * Dv + d] = __float2half_rn(vx[d]);
        }
    }
    for (int e = tid; e < R * D; e += ATT_NT) {
        const int r = e / D, d = e % D, qi = r / Gb, gi = r % Gb;
        const float* qh = qkv + (size_t)(t0 + qi) * q_stride + (h * G + g0 + gi) * D;
        Qs[e] = (qi < tcount && gi < gcount) ? (rope ? rope_value(qh, d, rc, rs, rope_dim, neox) : qh[d]) : 0.f;
    }
    // warp `warp` owns row `warp`: its token, head, position, running max and (per lane) running sum
    const int qi = warp / Gb, gi = warp % Gb;
    const bool row_ok = warp < R && qi < tcount && gi < gcount;
    const int pr = base + t0 + qi;
    float m = NEG_INF, l = 0.f;
    // this thread's outputs o = tid + i*ATT_NT: row prow[i] (-1: none), value dim vcol[i] (divisions hoisted here)
    float acc[ATT_MAXO];
    int prow[ATT_MAXO], vcol[ATT_MAXO];
#pragma unroll
    for (int i = 0; i < ATT_MAXO; ++i) {
        const int o = tid + i * ATT_NT;
        acc[i] = 0.f;
        prow[i] = o < R * Dv ? o / Dv : -1;
        vcol[i] = o < R * Dv ? o % Dv : 0;
    }

    for (int kt = kb; kt < ke; kt += ATT_TK) {
        const int nk = min(ATT_TK, ke - kt);
        if (kt != kb) __syncthreads();                        // the previous tile is done with Ks, Vs, Ps
#pragma unroll
        for (int i = 0; i < ATT_PF; ++i) {
            const int e = tid + i * ATT_NT;
            if (ksoff[i] >= 0) {
                const __half2* hu = reinterpret_cast<const __half2*>(&kr[i]);
                __half2* dst = Ks + ksoff[i];
                dst[0] = hu[0]; dst[1] = hu[1]; dst[2] = hu[2]; dst[3] = hu[3];
            }
            if (e * 8 < ATT_TK * Dv) *reinterpret_cast<uint4*>(Vs + e * 8) = vr[i];
        }
        __syncthreads();
        if (has_new && base >= kt && base < kt + ATT_TK) {    // this tile holds the token's own key and value
            const int j = base - kt;
            for (int d2 = tid; d2 < D / 2; d2 += ATT_NT) Ks[j * kstride + d2] = __floats2half2_rn(knew[2 * d2], knew[2 * d2 + 1]);
            for (int d = tid; d < Dv; d += ATT_NT) Vs[j * Dv + d] = __float2half_rn(vnew[d]);
            __syncthreads();
        }
        if (kt + ATT_TK < ke) fetch(kt + ATT_TK);
        if (warp < R) {
            const int k = kt + lane;
            float sc = NEG_INF;
            if (row_ok && lane < nk && k <= pr && (window <= 0 || pr - k < window)) {
                const float2* q2 = reinterpret_cast<const float2*>(Qs + warp * D);
                const __half2* k2 = Ks + lane * kstride;
                float a0 = 0.f, a1 = 0.f;
#pragma unroll 8
                for (int d2 = 0; d2 < D / 2; ++d2) {
                    const float2 kf = __half22float2(k2[d2]), qf = q2[d2];
                    a0 = fmaf(qf.x, kf.x, a0);
                    a1 = fmaf(qf.y, kf.y, a1);
                }
                sc = (a0 + a1) * scale;
            }
            const float mnew = fmaxf(m, warp_max(sc));
            const float p = sc == NEG_INF ? 0.f : expf(sc - mnew);
            const float alpha = m == NEG_INF ? 0.f : expf(m - mnew);
            l = l * alpha + p;                                // this lane's share; summed over the warp at the end
            m = mnew;
            Ps[warp * ATT_TK + lane] = p;
            if (lane == 0) fac[warp] = alpha;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < ATT_MAXO; ++i)
            if (prow[i] >= 0) acc[i] *= fac[prow[i]];
#pragma unroll 4
        for (int j = 0; j < ATT_TK; ++j) {                    // rows past nk: p = 0 and V = 0
#pragma unroll
            for (int i = 0; i < ATT_MAXO; ++i)
                if (prow[i] >= 0) acc[i] = fmaf(Ps[prow[i] * ATT_TK + j], __half2float(Vs[j * Dv + vcol[i]]), acc[i]);
        }
    }
    // finish: prefill normalises (sink included), decode leaves m, l for the merge
    if (warp < R) l = warp_sum(l);
    __syncthreads();
    if (row_ok && lane == 0) {
        const int qh = h * G + g0 + gi;
        if (max_splits > 0) {
            ws[qh * max_splits + blockIdx.z] = m;
            ws[(n_heads + qh) * max_splits + blockIdx.z] = l;
            fac[warp] = 1.f;
        } else {
            const float sk = sinks ? sinks[qh] : NEG_INF;
            const float M = fmaxf(m, sk);
            const float em = m == NEG_INF ? 0.f : expf(m - M);
            const float L = l * em + (sinks ? expf(sk - M) : 0.f);
            fac[warp] = em / L;
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < ATT_MAXO; ++i) {
        if (prow[i] >= 0) {
            const int r = prow[i], dv = vcol[i], ri = r / Gb, rg = r % Gb;
            if (ri < tcount && rg < gcount) {
                const int qh = h * G + g0 + rg;
                if (max_splits > 0) ws[(size_t)2 * n_heads * max_splits + ((size_t)qh * max_splits + blockIdx.z) * Dv + dv] = acc[i];
                else out[(size_t)(t0 + ri) * n_heads * Dv + qh * Dv + dv] = acc[i] * fac[r];
            }
        }
    }
    if (max_splits > 0 && counters) merge_last(ws, counters, su, n_heads, Dv, max_splits, h * G + g0, gcount, sinks, out);
}

// Decode: combine the splits of query head blockIdx.x, dims 32*blockIdx.y .. (as the attention kernel split the keys:
// attend_short's splits up to short_split_keys, the split kernels' beyond): M = max(m_s, sink),
// w_s = exp(m_s - M), out = sum_s w_s acc_s / (sum_s w_s l_s + exp(sink - M)). Every warp finds M and the
// denominator itself (lanes over the splits, shuffles: no barrier), then adds the splits s = w mod 8 of its dims, so
// each thread has several independent loads in flight; one barrier, and warp 0 sums the 8 parts.
extern "C" __global__ void attention_merge(const float* __restrict__ ws, const int* __restrict__ pos_dev,
                                           int n_heads, int Dv, int n_ctx, int window, int max_splits, int min_tiles,
                                           const float* __restrict__ sinks, float* __restrict__ out, int skip_keys,
                                           int short_keys, int short_splits) {
    const int p0 = pos_dev[0];                                // (written before this step's graph)
    if (p0 + 1 - window_lo(p0, window) <= skip_keys) { pass_through(); return; }   // see attention's skip_keys
    wait_primary();
    trigger_dependents();
    __shared__ float part[8][32];
    const int qh = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32, p = pos_dev[0];
    int kb, ke, su;
    const int lo = window_lo(p, window), hi = min(n_ctx, p + 1);
    const bool shrt = hi - lo <= short_split_keys(short_keys, short_splits);
    key_split(lo, hi, shrt ? short_splits : max_splits, shrt ? short_keys / ATT_TK : min_tiles, 0, kb, ke, su);
    const float* ms = ws + (size_t)qh * max_splits;
    const float* ls = ws + (size_t)(n_heads + qh) * max_splits;
    const float* acc = ws + (size_t)2 * n_heads * max_splits + (size_t)qh * max_splits * Dv;
    const float sk = sinks ? sinks[qh] : NEG_INF;
    float M = NEG_INF;
    for (int s = lane; s < su; s += 32) M = fmaxf(M, ms[s]);
    M = fmaxf(warp_max(M), sk);
    float lsum = 0.f;
    for (int s = lane; s < su; s += 32) lsum = fmaf(expf(ms[s] - M), ls[s], lsum);
    const float L = warp_sum(lsum) + (sinks ? expf(sk - M) : 0.f);
    const int dv = blockIdx.y * 32 + lane;
    float a = 0.f;
    if (dv < Dv) {
#pragma unroll 8
        for (int s = warp; s < su; s += 8) a = fmaf(expf(ms[s] - M), acc[(size_t)s * Dv + dv], a);
    }
    part[warp][lane] = a;
    __syncthreads();
    if (warp == 0 && dv < Dv) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < 8; ++w) t += part[w][lane];
        out[(size_t)qh * Dv + dv] = t / L;
    }
}
