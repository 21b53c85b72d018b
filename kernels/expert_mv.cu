// expert_mv: the routed MXFP4 expert products of one token (gpt-oss decode), written for them alone.
// Numpy reference: orcd.cuda_matvec.expert_linear_ref (the same numbers as the generic matvec_v2 with tMXFP4P: the
// 16-bit pair-layout staged x, the same integer sums per 32-value block; only the block's power of two is applied
// differently, which is exact, see below).
//
// y[p R + r] = row r of W_m[ids[j]] . x_j for part p = j nm + m (j < k chosen experts, m < nm matrices: gate and up,
// or down alone), x_j = x + j K (per_expert_x) or x. Each matrix: E experts of R rows of K/32 17-byte blocks,
// `stride` bytes apart.
//
// Why a kernel of its own: the generic matvec is bound by its instructions on these shapes (Nsight Compute: ~200
// warp-level instructions per 17-byte block counted per thread, 0.67 issued per scheduler per cycle, DRAM at 24 %).
// Here every instruction that is not the dot product is taken out of the loop:
//  - a warp's unit of work is a row pair of one part; lane l takes blocks l, l + 32, l + 64 of both rows (K = 2880:
//    90 blocks, one pass), so all its loads are one base address plus constants, issued together (30 words in
//    flight per lane), and each staged x word read from shared memory serves both rows;
//  - the block's scale 2^(e-128) is one table lookup: T[e] = 2^(e-96) from shared memory, the row's sum multiplied by
//    2^-32 once at the end (powers of two: exact; 2^(e-96) stays a normal float for every e < 224 without the two
//    factors tMXFP4::scaled needs against flush-to-zero; e >= 224, weights of 2^96 and more, would be inf);
//  - the row sums of a pair are reduced together: the first shuffle exchanges the two rows' sums, so 5 shuffles
//    reduce both.
#include "matvec_v2.cuh"
using namespace mv;

#define EMV_NW 16              // warps per CTA
#define EMV_J 3                // blocks per lane per pass over a row pair (32 EMV_J blocks: K up to 3072 in one pass)

// Each staged x: the pair layout of matvec_v2 (smem_layout<XS<16, true>>), in its own region of `region` bytes.
__device__ __forceinline__ XS<16, true> emv_xs(unsigned char* base, int region, int j, int K) {
    return smem_layout<XS<16, true>>(reinterpret_cast<int4*>(base + (size_t)j * region), K, true);
}

// The sums of one block of each row against the staged x (16-bit codes, pair layout: word i of the codes meets the
// block's 16-byte slot i), as tMXFP4P::dot computes them, each x load shared by the two rows.
__device__ __forceinline__ void emv_dot2(const tMXFP4::Raw& a, const tMXFP4::Raw& b, const int4* xb, u32 m0, int& sa,
                                         int& sb) {
    sa = 0; sb = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int4 v = xb[i];
        const u32 an = a.q[i] ^ 0x88888888u, bn = b.q[i] ^ 0x88888888u;
        const u32 a0 = mxfp4_pairs(a.q[i], an, m0), a1 = mxfp4_pairs(a.q[i] >> 16, an >> 16, m0);
        const u32 b0 = mxfp4_pairs(b.q[i], bn, m0), b1 = mxfp4_pairs(b.q[i] >> 16, bn >> 16, m0);
        sa = __dp2a_lo(v.x, (int)a0, sa); sa = __dp2a_hi(v.y, (int)a0, sa);
        sa = __dp2a_lo(v.z, (int)a1, sa); sa = __dp2a_hi(v.w, (int)a1, sa);
        sb = __dp2a_lo(v.x, (int)b0, sb); sb = __dp2a_hi(v.y, (int)b0, sb);
        sb = __dp2a_lo(v.z, (int)b1, sb); sb = __dp2a_hi(v.w, (int)b1, sb);
    }
}

// One row's sums (a single-row unit, see `pairs` below): the pair-layout matvec's own.
__device__ __forceinline__ int emv_dot1(const tMXFP4::Raw& a, const int4* xb, u32 m0) { return tMXFP4P::isum(a, xb, m0); }

// A warp's unit of work: work item w is row pair w (w < pairs), else one row of pair
// pairs + (w - pairs) / 2. skip: the missing half of an odd R's last pair.
struct EmvUnit { const u8* row0; const u8* row1; int p, j, r0; bool single, two, skip; };
__device__ __forceinline__ int emv_pair(int w, int pairs) { return w < pairs ? w : pairs + ((w - pairs) >> 1); }   // w's pair
template <bool CG>
__device__ __forceinline__ EmvUnit emv_unit(int w, int pairs, int upp, int nm, int R, int nb, const u8* w0, const u8* w1,
                                            const int* __restrict__ ids, long long stride) {
    EmvUnit U;
    U.single = w >= pairs;
    const int u = emv_pair(w, pairs);
    U.p = u / upp; U.j = U.p / nm;
    U.r0 = 2 * (u - U.p * upp) + (U.single ? (w - pairs) & 1 : 0);
    U.skip = U.r0 >= R;
    U.two = !U.single && U.r0 + 1 < R;
    if (U.skip) return U;
    const int e = CG ? __ldcg(ids + U.j) : ids[U.j];                // CG: read before the wait (see expert_mv_fixed)
    U.row0 = (U.p - U.j * nm == 0 ? w0 : w1) + (size_t)e * (size_t)stride + (size_t)U.r0 * (nb * 17);
    U.row1 = U.two ? U.row0 + nb * 17 : U.row0;                     // the first row again: its sum discarded
    return U;
}

// WHOLE: every block may be read as the 5 aligned words covering it (the matrices' bytes per expert, R K/32 17, end on
// a 4-byte boundary: the bytes read past a block are the next block's or the next row's); else the predicated tail.
template <bool WHOLE>
__device__ __forceinline__ void expert_mv_body(const u8* __restrict__ w0, const u8* __restrict__ w1, int nm,
                                               const int* __restrict__ ids, long long stride, int k, int R, int K,
                                               const float* __restrict__ x, int per_expert_x, float* __restrict__ y,
                                               const int4* __restrict__ staged, int pairs) {
    extern __shared__ int4 emv_smem[];
    __shared__ float T[256];
    unsigned char* base = reinterpret_cast<unsigned char*>(emv_smem);
    const int nx = per_expert_x ? k : 1;
    const int region = ((144 * ((K / 32 + 1) / 2) + 127) & ~127) + K / 8 + K / 4 + 15 & ~15;   // smem_layout's size
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");            // ids and x come from the kernels before
#endif
    if (threadIdx.x < 256) T[threadIdx.x] = threadIdx.x < 224 ? __uint_as_float((threadIdx.x + 31) << 23) : __int_as_float(0x7f800000);
    if (staged)                                                     // emv_stage wrote the regions: copy them
        for (int i = threadIdx.x; i < nx * region / 16; i += EMV_NW * 32) emv_smem[i] = staged[i];
    else                                                            // quantise x here, as matvec_v2 does
        for (int j = 0; j < nx; ++j) {
            const XS<16, true> xs = emv_xs(base, region, j, K);
            float ss0 = 0.f;                                  // (IN_X: no sum of squares)
            stage_q8<EMV_NW * 32, 16, true, IN_X>(x + (size_t)j * K, K, const_cast<int*>(xs.q), const_cast<float*>(xs.d),
                                                   const_cast<int*>(xs.s16), nullptr, ss0, 0);
        }
    __syncthreads();
    const int lane = threadIdx.x & 31, nb = K / 32;
    const int upp = (R + 1) / 2, units = k * nm * upp;
    const int warps = gridDim.x * EMV_NW;
    const u32 m0 = emv_xs(base, region, 0, K).t0;
    // Work items: the first `pairs` row pairs (units) one per warp, then each remaining pair as two single rows — so
    // that a last, partial round of pairs (down: 5,760 pairs over 4,224 warps) becomes one round of half the work.
    const int items = pairs + 2 * (units - pairs);
    for (int w = blockIdx.x * EMV_NW + (threadIdx.x >> 5); w < items; w += warps) {
        const EmvUnit U = emv_unit<false>(w, pairs, upp, nm, R, nb, w0, w1, ids, stride);   // uniform over the warp
        if (U.skip) continue;                                       // the missing half of an odd R's last pair
        const bool single = U.single, two = U.two;
        const int p = U.p, j = U.j, r0 = U.r0;
        const u8 *row0 = U.row0, *row1 = U.row1;
        const XS<16, true> xs = emv_xs(base, region, per_expert_x ? j : 0, K);
        float acc0 = 0.f, acc1 = 0.f;
        if (single) {
            for (int c0 = 0; c0 < nb; c0 += 32 * EMV_J) {
                tMXFP4::Raw ra[EMV_J];
#pragma unroll
                for (int t = 0; t < EMV_J; ++t) ra[t] = tMXFP4::load_words<WHOLE>(row0, min(c0 + 32 * t + lane, nb - 1));
#pragma unroll
                for (int t = 0; t < EMV_J; ++t) {
                    const int c = c0 + 32 * t + lane, cc = min(c, nb - 1);
                    const int sa = emv_dot1(ra[t], reinterpret_cast<const int4*>(xs.q) + pl_slot(cc), m0);
                    acc0 = fmaf((float)sa * T[ra[t].e], c < nb ? xs.d[cc] : 0.f, acc0);
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
            if (lane == 0) y[(size_t)p * R + r0] = acc0 * 2.3283064365386963e-10f;   // 2^-32
            continue;
        }
        for (int c0 = 0; c0 < nb; c0 += 32 * EMV_J) {
            // Lanes past the row's last block load that block again and add it times 0: no branch, no zeroing
            // (with K = 2880 that is lanes 26-31 in the third column of blocks). Without a second row, the "second
            // row" is the first again, its sum discarded.
            tMXFP4::Raw ra[EMV_J], rb[EMV_J];
#pragma unroll
            for (int t = 0; t < EMV_J; ++t) {
                const int c = min(c0 + 32 * t + lane, nb - 1);
                ra[t] = tMXFP4::load_words<WHOLE>(row0, c);
                rb[t] = tMXFP4::load_words<WHOLE>(row1, c);
            }
#pragma unroll
            for (int t = 0; t < EMV_J; ++t) {
                const int c = c0 + 32 * t + lane, cc = min(c, nb - 1);
                int sa, sb;
                emv_dot2(ra[t], rb[t], reinterpret_cast<const int4*>(xs.q) + pl_slot(cc), m0, sa, sb);
                const float d = c < nb ? xs.d[cc] : 0.f;
                acc0 = fmaf((float)sa * T[ra[t].e], d, acc0);
                acc1 = fmaf((float)sb * T[rb[t].e], d, acc1);
            }
        }
        // lanes 0-15 end with row r0's sum, lanes 16-31 with row r0 + 1's
        const bool hi = lane & 16;
        float v = (hi ? acc1 : acc0) + __shfl_xor_sync(0xffffffffu, hi ? acc0 : acc1, 16);
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        const int r = r0 + (hi ? 1 : 0);
        if ((lane & 15) == 0 && (!hi || two)) y[(size_t)p * R + r] = v * 2.3283064365386963e-10f;   // 2^-32
    }
}

#define EMV_ARGS const u8* __restrict__ w0, const u8* __restrict__ w1, int nm, const int* __restrict__ ids, long long stride, \
                 int k, int R, int K, const float* __restrict__ x, int per_expert_x, float* __restrict__ y,            \
                 const int4* __restrict__ staged, int pairs
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 2) expert_mv(EMV_ARGS) {
    expert_mv_body<true>(w0, w1, nm, ids, stride, k, R, K, x, per_expert_x, y, staged, pairs);
}
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 2) expert_mv_tail(EMV_ARGS) {
    expert_mv_body<false>(w0, w1, nm, ids, stride, k, R, K, x, per_expert_x, y, staged, pairs);
}

// expert_mv_k2880: the same products for K = 2880 (gpt-oss) with x staged by emv_stage, in 40 registers, so that three
// CTAs of 16 warps share an SM: 6,336 warps for the down products' 5,760 row pairs, one round instead of two (or of
// split_last's one and a half). K a compile-time constant frees the registers its arithmetic held; the three blocks of
// a lane (90 = 32 + 32 + 26) are fetched two slots ahead, a slot's words loaded again as soon as the slot before is
// summed (20 words in flight per lane, against 30: the same per SM, with half as many warps again). The words are
// kept as loaded and shifted into their block where used, so that no shift waits on a load in flight.
template <bool WHOLE> __device__ __forceinline__ void emv_load5(u32 (&w)[5], const u8* row, int c) {
    const size_t a = reinterpret_cast<size_t>(row + c * 17);
    const u8* base = reinterpret_cast<const u8*>(a & ~(size_t)3);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = ld32(base + 4 * i);
    const u8* t = base + 16;
    const u32 o = (u32)(a & 3);
    w[4] = WHOLE ? ld32(t) : ld8(t) | ld8_if(t + 1, o >= 1) << 8 | ld8_if(t + 2, o >= 2) << 16 | ld8_if(t + 3, o >= 3) << 24;
}
__device__ __forceinline__ tMXFP4::Raw emv_shift5(const u32 (&w)[5], u32 o) {   // o: the block's address & 3
    tMXFP4::Raw r; r.e = (w[0] >> (8 * o)) & 0xffu;
#pragma unroll
    for (int i = 0; i < 4; ++i) r.q[i] = __funnelshift_rc(w[i], w[i + 1], 8 * o + 8);
    return r;
}

// A unit's first two slots of words (the third is loaded as the first is used): row r0's, and r0 + 1's if TWO.
template <bool WHOLE, int KC, bool TWO>
__device__ __forceinline__ void emv_slots01(const EmvUnit& U, u32 (&wa)[2][5], u32 (&wb)[2][5], int lane) {
    constexpr int nb = KC / 32, NS = (nb + 31) / 32;
#pragma unroll
    for (int t = 0; t < 2 && t < NS; ++t) {
        const int c = min(32 * t + lane, nb - 1);
        emv_load5<WHOLE>(wa[t], U.row0, c);
        if (TWO) emv_load5<WHOLE>(wb[t], U.row1, c);
    }
}

// A warp's unit of expert_mv_fixed: its sums and y <- its row or rows. LOADED: the first two slots are in wa (and wb)
// already (PRE); else they are loaded here, first.
template <bool WHOLE, int KC, bool LOADED>
__device__ __forceinline__ void emv_unit_run(const EmvUnit& U, u32 (&wa)[2][5], u32 (&wb)[2][5], const XS<16, true>& xs,
                                             const float* T, u32 m0, int lane, int R, float* __restrict__ y) {
    constexpr int nb = KC / 32, NS = (nb + 31) / 32;
    const int p = U.p, r0 = U.r0;
    const u32 oa = (u32)reinterpret_cast<size_t>(U.row0) & 3u, ob = (u32)reinterpret_cast<size_t>(U.row1) & 3u;
    float acc0 = 0.f, acc1 = 0.f;
    if (U.single) {
        if (!LOADED) emv_slots01<WHOLE, KC, false>(U, wa, wb, lane);
#pragma unroll
        for (int t = 0; t < NS; ++t) {
            const int c = 32 * t + lane, cc = min(c, nb - 1);
            const tMXFP4::Raw a = emv_shift5(wa[t & 1], (oa + (u32)cc) & 3u);   // (row + 17 c) & 3
            const int sa = emv_dot1(a, reinterpret_cast<const int4*>(xs.q) + pl_slot(cc), m0);
            acc0 = fmaf((float)sa * T[a.e], c < nb ? xs.d[cc] : 0.f, acc0);
            if (t + 2 < NS) emv_load5<WHOLE>(wa[t & 1], U.row0, min(32 * (t + 2) + lane, nb - 1));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
        if (lane == 0) y[(size_t)p * R + r0] = acc0 * 2.3283064365386963e-10f;   // 2^-32
        return;
    }
    if (!LOADED) emv_slots01<WHOLE, KC, true>(U, wa, wb, lane);
#pragma unroll
    for (int t = 0; t < NS; ++t) {
        const int c = 32 * t + lane, cc = min(c, nb - 1);
        const tMXFP4::Raw a = emv_shift5(wa[t & 1], (oa + (u32)cc) & 3u), b = emv_shift5(wb[t & 1], (ob + (u32)cc) & 3u);
        int sa, sb;
        emv_dot2(a, b, reinterpret_cast<const int4*>(xs.q) + pl_slot(cc), m0, sa, sb);
        const float d = c < nb ? xs.d[cc] : 0.f;
        acc0 = fmaf((float)sa * T[a.e], d, acc0);
        acc1 = fmaf((float)sb * T[b.e], d, acc1);
        if (t + 2 < NS) {                                       // the slot two ahead, into the words just used
            const int c2 = min(32 * (t + 2) + lane, nb - 1);
            emv_load5<WHOLE>(wa[t & 1], U.row0, c2);
            emv_load5<WHOLE>(wb[t & 1], U.row1, c2);
        }
    }
    const bool hi = lane & 16;                                  // as expert_mv_body
    float v = (hi ? acc1 : acc0) + __shfl_xor_sync(0xffffffffu, hi ? acc0 : acc1, 16);
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((lane & 15) == 0 && (!hi || U.two)) y[(size_t)p * R + r0 + (hi ? 1 : 0)] = v * 2.3283064365386963e-10f;
}

// PRE (expert_mv_k2880p): before griddepcontrol.wait, each warp reads its unit's expert id and loads the unit's first
// two slots, so that their DRAM round trip overlaps the end of the kernel before and this one's staging. One unit per
// warp, so only where the grid covers every item (the down products; ExpertMV launches it only so). Only x may then
// come from the kernel before: the ids must be complete when this kernel starts. In the MoE they are: the kernel before
// is emv_stage, which lets this one launch only once its own wait has returned (gate|up complete, hence top-k
// complete, whose writes gate|up waited for); the id is read past L1 (__ldcg), which may hold a copy from an earlier
// step.
// (It replaces Session 12's EARLY, expert_mv_k2880e, which asked L2 for the same bytes by prefetch.global.L2: PRE is
// faster alone, 8.6 against 8.8 µs, and costs a gpt-oss step less, 35-38 against 52 µs; see 06d.)
//
// XF (expert_mv_k2880x): x (fp32, one for all experts: gate|up) quantised in each CTA, as expert_mv does, in place of
// the copy of emv_stage's regions.
template <bool WHOLE, int KC, bool PRE, bool XF = false>
__device__ __forceinline__ void expert_mv_fixed(const u8* __restrict__ w0, const u8* __restrict__ w1, int nm,
                                                const int* __restrict__ ids, long long stride, int k, int R,
                                                int per_expert_x, float* __restrict__ y, const int4* __restrict__ staged,
                                                int pairs, const float* __restrict__ x = nullptr) {
    constexpr int nb = KC / 32;                                   // blocks per row
    constexpr int region = ((144 * ((nb + 1) / 2) + 127) & ~127) + KC / 8 + KC / 4 + 15 & ~15;
    extern __shared__ int4 emv_smem[];
    __shared__ float T[256];
    unsigned char* base = reinterpret_cast<unsigned char*>(emv_smem);
    const int nx = per_expert_x ? k : 1;
    const int lane = threadIdx.x & 31;
    const int upp = (R + 1) / 2, units = k * nm * upp, items = pairs + 2 * (units - pairs);
    u32 wa0[2][5], wb0[2][5];                                       // PRE: the first unit's first two slots
    EmvUnit U0{};
    bool go = false;
    if constexpr (PRE) {
        const int w = blockIdx.x * EMV_NW + (threadIdx.x >> 5);
        if (w < items) {
            U0 = emv_unit<true>(w, pairs, upp, nm, R, nb, w0, w1, ids, stride);
            go = !U0.skip;
            if (go && U0.single) emv_slots01<WHOLE, KC, false>(U0, wa0, wb0, lane);
            else if (go) emv_slots01<WHOLE, KC, true>(U0, wa0, wb0, lane);
        }
    }
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");            // ids (without PRE) and the staged x come from before
#endif
    if (threadIdx.x < 256) T[threadIdx.x] = threadIdx.x < 224 ? __uint_as_float((threadIdx.x + 31) << 23) : __int_as_float(0x7f800000);
    if constexpr (XF) {
        const XS<16, true> xs = emv_xs(base, region, 0, KC);
        float ss0 = 0.f;
        stage_q8<EMV_NW * 32, 16, true, IN_X>(x, KC, const_cast<int*>(xs.q), const_cast<float*>(xs.d),
                                              const_cast<int*>(xs.s16), nullptr, ss0, 0);
    } else {
        // Only the regions this CTA reads: with one round of work items (the grid covers them all), those of the
        // experts from its first item's to its last's (items run expert by expert) — gpt-oss's down: one of four.
        int i0 = 0, i1 = nx * region / 16;
        if (per_expert_x && gridDim.x * EMV_NW >= items) {
            const auto expert = [&](int w) { return emv_pair(w, pairs) / upp / nm; };   // emv_unit's j
            const int wf = blockIdx.x * EMV_NW, wl = min(items, wf + EMV_NW) - 1;
            if (wf <= wl) { i0 = expert(wf) * (region / 16); i1 = (expert(wl) + 1) * (region / 16); }
        }
        if constexpr (PRE) {                                        // (one load at a time: its registers are spent)
#pragma unroll 1
            for (int i = i0 + threadIdx.x; i < i1; i += EMV_NW * 32) emv_smem[i] = staged[i];
        } else
            for (int i = i0 + threadIdx.x; i < i1; i += EMV_NW * 32) emv_smem[i] = staged[i];
    }
    __syncthreads();
    // XF: the MXFP4 table's first word opaque to the compiler, as smem_layout makes it (there from K, a constant here):
    // else ptxas, at 40 registers, makes the constant again before most PRMTs that read it, 81 of the 655 instructions
    // of a row pair (sm_90). Gate|up 387 -> 384 µs a gpt-oss step; the down products, the same way, 214 -> 217 (H200,
    // Session 27: not the instructions, then, but the latency of their loads sets their time). The predicated
    // kernel would spill.
    const u32 m0 = WHOLE && XF ? 0x03020100u | (threadIdx.x & ((u32)R >> 31)) : emv_xs(base, region, 0, KC).t0;
    if constexpr (PRE) {
        if (go) emv_unit_run<WHOLE, KC, true>(U0, wa0, wb0, emv_xs(base, region, per_expert_x ? U0.j : 0, KC), T, m0, lane, R, y);
        // (and no more: a loop after it would spill 48 bytes)
    } else
        for (int w = blockIdx.x * EMV_NW + (threadIdx.x >> 5); w < items; w += gridDim.x * EMV_NW) {   // (split_last, as expert_mv_body)
            const EmvUnit U = emv_unit<false>(w, pairs, upp, nm, R, nb, w0, w1, ids, stride);
            if (U.skip) continue;
            u32 wa[2][5], wb[2][5];
            emv_unit_run<WHOLE, KC, false>(U, wa, wb, emv_xs(base, region, per_expert_x ? U.j : 0, KC), T, m0, lane, R, y);
        }
}

extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 3) expert_mv_k2880(EMV_ARGS) {
    expert_mv_fixed<true, 2880, false>(w0, w1, nm, ids, stride, k, R, per_expert_x, y, staged, pairs);
}
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 3) expert_mv_k2880_tail(EMV_ARGS) {
    expert_mv_fixed<false, 2880, false>(w0, w1, nm, ids, stride, k, R, per_expert_x, y, staged, pairs);
}
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 3) expert_mv_k2880x(EMV_ARGS) {
    expert_mv_fixed<true, 2880, false, true>(w0, w1, nm, ids, stride, k, R, 0, y, staged, pairs, x);
}
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 3) expert_mv_k2880x_tail(EMV_ARGS) {
    expert_mv_fixed<false, 2880, false, true>(w0, w1, nm, ids, stride, k, R, 0, y, staged, pairs, x);
}
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 3) expert_mv_k2880p(EMV_ARGS) {
    expert_mv_fixed<true, 2880, true>(w0, w1, nm, ids, stride, k, R, per_expert_x, y, staged, pairs);
}
extern "C" __global__ void __launch_bounds__(EMV_NW * 32, 3) expert_mv_k2880p_tail(EMV_ARGS) {
    expert_mv_fixed<false, 2880, true>(w0, w1, nm, ids, stride, k, R, per_expert_x, y, staged, pairs);
}

// emv_stage: the staged input of expert_mv, made once instead of in every CTA: the nx regions (region bytes each,
// smem_layout<XS<16, true>>'s layout: pair-layout codes, block scales, half-block code sums) of x, quantised as
// matvec_v2's stage_q8 does (16-bit codes, d = max|v| / 32767 per 32 values, codes rint(v / d)). One warp per 32 values.
// act = 0: v = x[j K + i] (x: nx K values). act = 1: v = swiglu_oai(gate + bg[ids[j]], up + bu[ids[j]]) of
// x = gu (nx rows of [gate (K) | up (K)]), exactly as moe_act computes it; a (if not null) <- v as well (moe_act's
// output). So the down projection's input costs one kernel for all CTAs, not a quantisation pass in each of them.
extern "C" __global__ void emv_stage(const float* __restrict__ x, const int* __restrict__ ids, const float* __restrict__ bg,
                                     const float* __restrict__ bu, int nx, int K, int act, unsigned char* __restrict__ staged,
                                     int region, float* __restrict__ a) {
    // The kernel after it (the down products) may launch once this one's wait has returned — not before: the ids it may
    // read before its own wait (expert_mv_k2880p) are then complete (see expert_mv_fixed); its x, this kernel's
    // output, it reads after that wait, which waits for this whole grid.
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    const int lane = threadIdx.x & 31, nb = K / 32;
    const int w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (w >= nx * nb) return;                                       // uniform over the warp
    const int j = w / nb, b = w - j * nb, i = 32 * b + lane;
    float v;
    if (act) {
        const size_t e = (size_t)ids[j];
        const float g = x[(size_t)j * 2 * K + i] + (bg ? bg[e * K + i] : 0.f);
        const float u = x[(size_t)j * 2 * K + K + i] + (bu ? bu[e * K + i] : 0.f);
        v = swiglu_oai(g, u);
    } else v = x[(size_t)j * K + i];
    if (a) a[(size_t)j * K + i] = v;
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float dd = amax / 32767.f;                                // IEEE division, as stage_q8 and numpy
    const int q = dd > 0.f ? __float2int_rn(v / dd) : 0;
    int s = q;                                                      // the code sums of the two 16-value halves
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int qh = __shfl_down_sync(0xffffffffu, q, 16);            // lane n < 16: the code of value n + 16
    const XS<16, true> xs = smem_layout<XS<16, true>>(reinterpret_cast<int4*>(staged + (size_t)j * region), K, true);
    if (lane < 16) const_cast<int*>(xs.q)[4 * pl_slot(b) + lane] = (int)(((u32)q & 0xffffu) | (u32)qh << 16);
    if (lane == 0) { const_cast<float*>(xs.d)[b] = dd; const_cast<int*>(xs.s16)[2 * b] = s; }
    if (lane == 16) const_cast<int*>(xs.s16)[2 * b + 1] = s;
}
