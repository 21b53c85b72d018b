// Decode attention and the o product in one kernel, for a short context: what the attention kernel (attend_short)
// and the o product (matvec_v2, + residual) do as two dependent launches, x += W_o attention(q, K, V) (+ b_o).
// Every CTA computes the attention of every query head — a warp per head and key split, each as attend_short's warps
// do it (the K and V rows of a tile of 32 keys in registers, the first tile's loaded before the wait; an online
// softmax; V through the warp's tile in shared memory) — then its rows of the o product: a warp per row, a lane per
// 32-value block of weights (at most 32: n_heads Dv <= 1024), loaded before the wait and dequantised as ggml does.
// The attention is repeated in each CTA (a few KB of cache from L2); what it saves is a kernel boundary and the o
// product's staging. The first CTA writes the token's rotated key and value into the caches.
// Numpy reference: orcd.cuda_ops.attn_o_ref (rope_kv_ref, attention_ref, then the product and the residual).
#include "ops_common.cuh"

typedef unsigned short u16;
typedef unsigned int u32;

#define AO_WORDS 17    // 16-bit words of the largest weight block (Q8_0: 34 bytes); blocks are 2-byte aligned
enum { AO_Q4_0 = 2, AO_Q4_1 = 3, AO_Q5_0 = 6, AO_Q5_1 = 7, AO_Q8_0 = 8 };   // GGML type ids (orcd.cuda_ops.ATTN_O_TYPES)

__device__ __forceinline__ int ao_bytes(int t) {
    return t == AO_Q4_0 ? 18 : t == AO_Q4_1 ? 20 : t == AO_Q5_0 ? 22 : t == AO_Q5_1 ? 24 : 34;
}
__device__ __forceinline__ float ao_h(u16 v) { return __half2float(__ushort_as_half(v)); }

// Σ_i w_i x_i over one block of weights (raw: its 16-bit words; x: 32 floats, shared memory), w as ggml dequantises
// it: d q (Q8_0), d (q - 8) (Q4_0), d (q - 16) (Q5_0), d q + m (Q4_1, Q5_1); value i < 16 the low nibble of byte i,
// value i + 16 its high nibble, Q5's fifth bits from qh.
template <int T>
__device__ __forceinline__ float ao_dot(const u16 (&r)[AO_WORDS], const float* x) {
    const float d = ao_h(r[0]);
    float s = 0.f;
    if constexpr (T == AO_Q8_0) {
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            s = fmaf((float)(signed char)(r[1 + j] & 255), x[2 * j], s);
            s = fmaf((float)(signed char)(r[1 + j] >> 8), x[2 * j + 1], s);
        }
        return d * s;
    } else {
        constexpr bool m1 = T == AO_Q4_1 || T == AO_Q5_1, q5 = T == AO_Q5_0 || T == AO_Q5_1;
        constexpr int o = m1 ? 2 : 1, qs = o + (q5 ? 2 : 0);   // words before qh (Q5), before qs
        constexpr float off = m1 ? 0.f : q5 ? 16.f : 8.f;
        const u32 qh = q5 ? (u32)r[o] | (u32)r[o + 1] << 16 : 0u;
        float sx = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const u32 w2 = r[qs + j];
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                const int i = 2 * j + b, byte = (w2 >> (8 * b)) & 255;
                const int lo = (byte & 15) | (int)((qh >> i) & 1u) << 4, hi = (byte >> 4) | (int)((qh >> (i + 16)) & 1u) << 4;
                s = fmaf((float)lo - off, x[i], s);
                s = fmaf((float)hi - off, x[i + 16], s);
                if (m1) sx += x[i] + x[i + 16];
            }
        }
        return m1 ? fmaf(d, s, ao_h(r[1]) * sx) : d * s;
    }
}

__device__ __forceinline__ float ao_block_dot(const u16 (&r)[AO_WORDS], int t, const float* x) {
    switch (t) {                                              // uniform over the grid
    case AO_Q4_0: return ao_dot<AO_Q4_0>(r, x);
    case AO_Q4_1: return ao_dot<AO_Q4_1>(r, x);
    case AO_Q5_0: return ao_dot<AO_Q5_0>(r, x);
    case AO_Q5_1: return ao_dot<AO_Q5_1>(r, x);
    default: return ao_dot<AO_Q8_0>(r, x);
    }
}

// Head vector src (D floats, global) rotated at this position (lane's pair i = lane: c, sn; rope_dim / 2 <= 32) and
// stored: f32 into df, or rounded to fp16 into dh (and the cache row ch, when given). Dims >= rope_dim as they are.
__device__ __forceinline__ void ao_rope_store(const float* src, int D, int rope_dim, int neox, bool rot, float c, float sn,
                                              float* df, __half* dh, __half* ch) {
    const int lane = threadIdx.x & 31, half = rope_dim / 2;
    auto put = [&](int d, float y) {
        if (df) df[d] = y;
        else { const __half h = __float2half_rn(y); dh[d] = h; if (ch) ch[d] = h; }
    };
    if (rot) {
        if (lane < half) {
            const int i0 = neox ? lane : 2 * lane, i1 = neox ? lane + half : 2 * lane + 1;
            float y0, y1;
            rope_pair(src[i0], src[i1], c, sn, y0, y1);
            put(i0, y0); put(i1, y1);
        }
        for (int d = rope_dim + lane; d < D; d += 32) put(d, src[d]);
    } else for (int d = lane; d < D; d += 32) put(d, src[d]);
}

// Dynamic shared memory (Python mirror: orcd.cuda_ops.attn_o_smem): the warps' V tiles [NW, 32, Dv + 8] f16 | q
// [n_heads, D] f32 | the attention output, 32-value blocks padded to 33 floats (a lane a block reads no bank twice;
// the region rounded up to 4 floats) |
// the warps' sums [NW, Dv] f32 | this token's k [n_kv, D] and v [n_kv, Dv] f16 | the warps' m, l [NW] f32.
// Launch: NW = S n_heads warps (S splits of the keys a head), rows_per_cta = NW rows of the product a CTA.
extern "C" __global__ void __launch_bounds__(512, 1) attn_o(
        const float* __restrict__ qkv, __half* k_cache, __half* v_cache, int n_ctx, const int* __restrict__ pos_dev,
        int n_heads, int n_kv, int D, int Dv, float scale, int window, const float* __restrict__ sinks,
        const float* __restrict__ cos_t, const float* __restrict__ sin_t, int rope_dim, int neox,
        const unsigned char* __restrict__ w, int wtype, int rows, const float* __restrict__ bias, float* x) {
    extern __shared__ float smem[];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, NW = blockDim.x >> 5;
    const int S = NW / n_heads, G = n_heads / n_kv, qh = warp % n_heads, s = warp / n_heads, kh = qh / G;
    const int vs = Dv + 8, nb = n_heads * Dv / 32;
    __half* vt = reinterpret_cast<__half*>(smem) + (size_t)warp * 32 * vs;
    float* qs = smem + (size_t)NW * 16 * vs;
    float* ob = qs + n_heads * D;                             // the output, blocks of 33
    float* wacc = ob + (nb * 33 + 3) / 4 * 4;                 // (16-byte aligned: kn below is read 16 bytes at a time)
    __half* kn = reinterpret_cast<__half*>(wacc + NW * Dv);
    __half* vn = kn + n_kv * D;
    float* wm = reinterpret_cast<float*>(vn + n_kv * Dv);
    float* wl = wm + NW;
    // before the wait: what no kernel of this step writes — this CTA's weight blocks, the first tile's cached rows,
    // the RoPE angles and the sink
    const int row = blockIdx.x * NW + warp;
    const bool has = row < rows && lane < nb;
    u16 raw[AO_WORDS];
    if (has) {
        const int B = ao_bytes(wtype);
        const u16* src = reinterpret_cast<const u16*>(w + ((size_t)row * nb + lane) * B);
#pragma unroll
        for (int i = 0; i < AO_WORDS; ++i) raw[i] = 2 * i < B ? __ldg(src + i) : (u16)0;
    }
    const int p = pos_dev[0], lo = window_lo(p, window);
    const size_t khead = (size_t)kh * n_ctx;
    uint4 kr[ATS_P], vr[ATS_P];
    const int kt0 = lo + 32 * s;
    const bool early = kt0 + lane < p;                        // a row an earlier step wrote
    short_rows(kr, vr, early, k_cache + (khead + kt0 + lane) * D, v_cache + (khead + kt0 + lane) * Dv, D, Dv);
    const bool rot = cos_t != nullptr;
    float c = 1.f, sn = 0.f;
    if (rot && lane < rope_dim / 2) { c = cos_t[(size_t)p * (rope_dim / 2) + lane]; sn = sin_t[(size_t)p * (rope_dim / 2) + lane]; }
    const float sk = sinks ? sinks[qh] : NEG_INF;
    wait_primary();                                          // q|k|v written
    trigger_dependents();
    // the token's q (each head's first warp), and its k and v (each group's first warp; the first CTA writes the caches)
    if (s == 0) {
        ao_rope_store(qkv + (size_t)qh * D, D, rope_dim, neox, rot, c, sn, qs + qh * D, nullptr, nullptr);
        if (qh % G == 0) {
            const bool wr = blockIdx.x == 0;
            ao_rope_store(qkv + (size_t)(n_heads + kh) * D, D, rope_dim, neox, rot, c, sn, nullptr, kn + kh * D,
                          wr ? k_cache + (khead + p) * D : nullptr);
            ao_rope_store(qkv + (size_t)(n_heads + n_kv) * D + (size_t)kh * Dv, Dv, 0, 0, false, 1.f, 0.f, nullptr,
                          vn + kh * Dv, wr ? v_cache + (khead + p) * Dv : nullptr);
        }
    }
    __syncthreads();
    // the warp's keys: tiles s, s + S, ... of [lo, p], as attend_short's warps take theirs
    const int nv = Dv / 32;
    float m = NEG_INF, l = 0.f, acc[2] = {0.f, 0.f};
    const float4* q4 = reinterpret_cast<const float4*>(qs + qh * D);
    for (int kt = kt0; kt <= p; kt += 32 * S) {               // uniform over the warp
        const int k = kt + lane;
        if (kt != kt0 || !early) {
            const bool own = k == p;
            short_rows(kr, vr, k <= p, own ? kn + kh * D : k_cache + (khead + k) * D,
                       own ? vn + kh * Dv : v_cache + (khead + k) * Dv, D, Dv);
        }
        float sc = NEG_INF;
        if (k <= p) {
            float a0 = 0.f, a1 = 0.f;
#pragma unroll
            for (int cc = 0; cc < ATS_P; ++cc)
                if (cc < D / 8) key_piece_dot(kr[cc], q4 + 2 * cc, a0, a1);
            sc = (a0 + a1) * scale;
        }
        const float mnew = fmaxf(m, warp_max(sc));            // lane 0's key kt <= p is visible: mnew is finite
        const float pr = sc == NEG_INF ? 0.f : expf(sc - mnew);
        const float alpha = m == NEG_INF ? 0.f : expf(m - mnew);
        l = l * alpha + pr;
        m = mnew;
        acc[0] *= alpha; acc[1] *= alpha;
        __syncwarp();                                         // the previous tile's reads of vt are done
#pragma unroll
        for (int cc = 0; cc < ATS_P; ++cc)
            if (cc < Dv / 8) reinterpret_cast<uint4*>(vt + lane * vs)[cc] = vr[cc];
        __syncwarp();
        const int nk = min(32, p + 1 - kt);
#pragma unroll 8
        for (int j = 0; j < nk; ++j) {
            const float pj = __shfl_sync(0xffffffffu, pr, j);
            acc[0] = fmaf(pj, __half2float(vt[j * vs + lane]), acc[0]);
            if (nv > 1) acc[1] = fmaf(pj, __half2float(vt[j * vs + lane + 32]), acc[1]);
        }
    }
    l = warp_sum(l);
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
    wacc[warp * Dv + lane] = acc[0];
    if (nv > 1) wacc[warp * Dv + lane + 32] = acc[1];
    __syncthreads();
    // each head's splits merged with its sink (attend_short's merge): the output into ob
    if (s == 0) {
        float M = sk;
        for (int t = 0; t < S; ++t) M = fmaxf(M, wm[qh + t * n_heads]);
        float L = sk == NEG_INF ? 0.f : expf(sk - M), o0 = 0.f, o1 = 0.f;
        for (int t = 0; t < S; ++t) {
            const int wt = qh + t * n_heads;
            const float e = wm[wt] == NEG_INF ? 0.f : expf(wm[wt] - M);
            L = fmaf(e, wl[wt], L);
            o0 = fmaf(e, wacc[wt * Dv + lane], o0);
            if (nv > 1) o1 = fmaf(e, wacc[wt * Dv + lane + 32], o1);
        }
        const int f0 = qh * Dv + lane;                        // flat index of the output value, then its padded slot
        ob[f0 / 32 * 33 + f0 % 32] = o0 / L;
        if (nv > 1) { const int f1 = f0 + 32; ob[f1 / 32 * 33 + f1 % 32] = o1 / L; }
    }
    __syncthreads();
    // this CTA's rows of the product: warp = row, lane = block; the residual and the bias added as matvec_v2 adds them
    if (row < rows) {                                         // uniform over the warp
        float part = has ? ao_block_dot(raw, wtype, ob + lane * 33) : 0.f;
        part = warp_sum(part);
        if (lane == 0) {
            float v = part;
            if (bias) v += bias[row];
            v += x[row];
            x[row] = v;
        }
    }
}
