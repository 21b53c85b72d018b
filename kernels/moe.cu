// Mixture of experts on the device (gpt-oss), with the chosen experts as data in device memory, so that one captured
// graph serves every token. Numpy references: orcd.cuda_moe.moe_topk_ref, moe_act_ref, moe_combine_ref.
//
// moe_topk: one warp per token row of router logits (T, E): the k largest (ties: the lower id first, as a stable
//   sort of -logits; NaN counts as -inf), ids (T, k) int32 best first, and weights (T, k) = softmax over those k.
// moe_act: slot j of the k chosen experts: gu row j = [gate (n) | up (n)] of expert ids[j], plus that expert's biases
//   bg/bu (E, n), through gpt-oss's clamped SwiGLU -> a (k, n).
// moe_combine: out (d) = sum_j wts[j] * (y row j + bd row ids[j]); y (k, d) = the chosen experts' down projections.
// moe_sort: a prompt's (token, slot) pairs grouped by expert, and the row tiles of moe_mma, on the device (below).
#include "ops_common.cuh"

extern "C" __global__ void moe_topk(const float* __restrict__ logits, int T, int E, int k, int* __restrict__ ids,
                                    float* __restrict__ wts) {
    wait_primary();
    trigger_dependents();
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= T) return;                                       // uniform over the warp
    const float* z = logits + (size_t)row * E;
    unsigned taken = 0u;                                        // bit i: this lane's i-th id (lane + 32 i) is taken
    float top[8];
    for (int j = 0; j < k; ++j) {
        float bv = NEG_INF; int bi = E;                         // E: none yet
        for (int i = 0, e = lane; e < E; ++i, e += 32) {
            if (taken >> i & 1u) continue;
            float v = z[e]; if (v != v) v = NEG_INF;
            if (bi == E || v > bv) { bv = v; bi = e; }          // ascending e: ties keep the lower id
        }
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (oi != E && (bi == E || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
        }
        if (bi == E) bi = 0;                                    // fewer than k ids (k > E: refused by the launcher)
        if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
        top[j] = bv;
        if (lane == 0) ids[(size_t)row * k + j] = bi;
    }
    if (lane == 0) {
        const float m = top[0];                                 // the largest (kept: top[0] is overwritten)
        float s = 0.f;
        for (int j = 0; j < k; ++j) { top[j] = expf(top[j] - m); s += top[j]; }
        for (int j = 0; j < k; ++j) wts[(size_t)row * k + j] = top[j] / s;
    }
}

extern "C" __global__ void moe_act(const float* __restrict__ gu, const int* __restrict__ ids, const float* __restrict__ bg,
                                   const float* __restrict__ bu, int k, int n, float* __restrict__ a) {
    wait_primary();
    trigger_dependents();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= k * n) return;
    const int j = i / n, c = i % n;
    const size_t e = (size_t)ids[j];
    const float g = gu[(size_t)j * 2 * n + c] + (bg ? bg[e * n + c] : 0.f);
    const float u = gu[(size_t)j * 2 * n + n + c] + (bu ? bu[e * n + c] : 0.f);
    a[i] = swiglu_oai(g, u);
}

extern "C" __global__ void moe_combine(const float* __restrict__ y, const int* __restrict__ ids,
                                       const float* __restrict__ wts, const float* __restrict__ bd, int k, int d,
                                       float* __restrict__ out) {
    wait_primary();
    trigger_dependents();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float s = 0.f;
    for (int j = 0; j < k; ++j) s += wts[j] * (y[(size_t)j * d + c] + (bd ? bd[(size_t)ids[j] * d + c] : 0.f));
    out[c] = s;
}

// moe_sort: a prompt's T·k = N (token, slot) pairs grouped by expert on the device, as orcd.cuda_moe.moe_groups and
// moe_tiles compute them on the host: order (N) the flat indices t·k + j by expert (ascending within one: a stable
// counting sort), experts (N) their expert ids, counts (E), and tiles (max_tiles int4 {expert, first row, rows <= bm, 0},
// the runs cut into tiles of bm rows, the rest {0, 0, 0, 0}: moe_mma skips a tile of no rows). One warp: the
// counts with shared atomics, the offsets by a running sum, then 32 pairs at a time: the lanes holding the same
// expert (__match_any_sync) take consecutive places after that expert's earlier pairs. Shared memory: 2 E ints.
// No host synchronisation follows: the product's grid is sized for max_tiles = ceil(N / bm) + E.
extern "C" __global__ void moe_sort(const int* __restrict__ ids, int N, int E, int bm, int* __restrict__ order,
                                    int* __restrict__ experts, int* __restrict__ counts, int4* __restrict__ tiles,
                                    int max_tiles) {
    wait_primary();
    trigger_dependents();
    extern __shared__ int ms_smem[];
    int* cnt = ms_smem;                                         // [E] counts, then the running place of each expert
    int* off = ms_smem + E;                                     // [E] where each expert's run starts
    const int lane = threadIdx.x;
    for (int e = lane; e < E; e += 32) cnt[e] = 0;
    __syncwarp();
    for (int i = lane; i < N; i += 32) atomicAdd(&cnt[ids[i]], 1);
    __syncwarp();
    int run = 0, tile = 0;                                      // running sums of rows and of tiles, over experts
    for (int e0 = 0; e0 < E; e0 += 32) {                       // 32 experts at a time: an inclusive warp scan
        const int e = e0 + lane, c = e < E ? cnt[e] : 0, nt = (c + bm - 1) / bm;
        int sc = c, st = nt;
        for (int o = 1; o < 32; o <<= 1) {
            const int a = __shfl_up_sync(0xffffffffu, sc, o), b = __shfl_up_sync(0xffffffffu, st, o);
            if (lane >= o) { sc += a; st += b; }
        }
        const int start = run + sc - c, t0 = tile + st - nt;
        if (e < E) {
            off[e] = start; counts[e] = c;
            for (int m = 0; m < nt; ++m) tiles[t0 + m] = make_int4(e, start + m * bm, min(bm, c - m * bm), 0);
        }
        run += __shfl_sync(0xffffffffu, sc, 31); tile += __shfl_sync(0xffffffffu, st, 31);
    }
    for (int t = tile + lane; t < max_tiles; t += 32) tiles[t] = make_int4(0, 0, 0, 0);
    __syncwarp();
    for (int e = lane; e < E; e += 32) cnt[e] = 0;             // now each expert's places taken so far
    __syncwarp();
    for (int i0 = 0; i0 < N; i0 += 32) {
        const int i = i0 + lane;
        const int e = i < N ? ids[i] : -1;
        const unsigned same = __match_any_sync(0xffffffffu, e);
        const int before = __popc(same & ((1u << lane) - 1u));   // lanes of this group with the same expert, earlier
        if (i < N) {
            const int p = off[e] + cnt[e] + before;
            order[p] = i; experts[p] = e;
        }
        __syncwarp();
        if (i < N && before == 0) cnt[e] += __popc(same);       // the group's first lane of each expert
        __syncwarp();
    }
}
