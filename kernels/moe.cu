// Mixture of experts on the device (gpt-oss), with the chosen experts as data in device memory, so that one captured
// graph serves every token. Numpy references: orcd.cuda_moe.moe_topk_ref, moe_act_ref, moe_combine_ref.
//
// moe_topk: one warp per token row of router logits (T, E): the k largest (ties: the lower id first, as a stable
//   sort of -logits; NaN counts as -inf), ids (T, k) int32 best first, and weights (T, k) = softmax over those k.
// moe_act: slot j of the k chosen experts: gu row j = [gate (n) | up (n)] of expert ids[j], plus that expert's biases
//   bg/bu (E, n), through gpt-oss's clamped SwiGLU -> a (k, n).
// moe_combine: out (d) = sum_j wts[j] * (y row j + bd row ids[j]); y (k, d) = the chosen experts' down projections.
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
