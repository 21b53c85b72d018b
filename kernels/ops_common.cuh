// What the non-matvec kernels of orcd share: warp and block reductions, -inf, and the split of a key range
// among the blocks of a decode attention (used by both attention kernels, so they agree on it).
// Block reductions assume blockDim.x is a multiple of 32 (at most 1024) and that every thread calls them.
#pragma once
#include <cuda_fp16.h>

#define NEG_INF (__int_as_float(0xff800000))

template <typename F> __device__ __forceinline__ F warp_sum(F v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// Sum over the block; every thread gets the result. `red` is a __shared__ array of 32 values.
template <typename F> __device__ __forceinline__ F block_sum(F v, F* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();                      // `red` may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_sum(lane < nw ? red[lane] : F(0));
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

// gpt-oss's clamped SwiGLU (numpy: orcd.ops.swiglu_oai): g = min(g, 7), u = clamp(u, -7, 7), g*sigmoid(1.702 g)*(u + 1).
__device__ __forceinline__ float swiglu_oai(float g, float u) {
    const float gc = fminf(g, 7.f), uc = fminf(fmaxf(u, -7.f), 7.f);
    return gc * sigmoidf(1.702f * gc) * (uc + 1.f);
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;                      // sqrt(2 / pi)
    return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
}

// The gated activations of a feed-forward block, of one (gate, up) pair (orcd.cuda_ops.ACT_KINDS): 0 swiglu
// silu(g)·u, 1 geglu gelu(g)·u, 2 swiglu_oai. The act kernel and a matvec staging its input (Linear(..., act=)) both
// use it, so they round alike.
__device__ __forceinline__ float gated_act(int kind, float g, float u) {
    if (kind == 0) return g * sigmoidf(g) * u;
    if (kind == 1) return gelu_tanh(g) * u;
    return swiglu_oai(g, u);
}

// Keys per attention tile: one lane of a warp per key.
#define ATT_TK 32

// Flash-decoding split of the keys [lo, hi) among at most max_splits blocks, each at least min_tiles tiles
// (when there are that many keys): chunks of a whole number of tiles, `su` of them, all non-empty. Split s covers
// [kb, ke) (empty when s >= su).
__device__ __forceinline__ void key_split(int lo, int hi, int max_splits, int min_tiles, int s, int& kb, int& ke,
                                          int& su) {
    const int L = hi - lo, min_keys = ATT_TK * max(1, min_tiles);
    su = min(max_splits, (L + min_keys - 1) / min_keys);
    if (su < 1) su = 1;
    int chunk = (L + su - 1) / su;
    chunk = (chunk + ATT_TK - 1) / ATT_TK * ATT_TK;
    su = (L + chunk - 1) / chunk;
    kb = lo + s * chunk;
    ke = min(hi, kb + chunk);
}

// Whether this block is the last of `n` to count itself done on `counter` (uniform over the block; every thread calls
// it): each block's global writes before the call are visible to the last block once it has fenced (__threadfence)
// after the call. For a merge done by the last split to finish, which then sets the counter back to 0.
__device__ __forceinline__ bool last_to_finish(int* counter, int n) {
    __shared__ int last;
    __threadfence();                                          // this block's results: visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1) == n - 1;
    __syncthreads();
    return last;
}

// The keys a query at position p sees: [lo, p] (window > 0: only keys with p - k < window).
__device__ __forceinline__ int window_lo(int p, int window) { return window > 0 ? max(0, p - window + 1) : 0; }

// A lane's key in a tile of a short-context decode attention (attend_short, attn_o): its K and V rows into registers
// (from the caches, or the token's own from shared memory), zeros where there is no key (go false). NP pieces of 16
// bytes hold a row; D, Dv (by default all of them) say how many of them are the row's.
#define ATS_P 8        // 16-byte pieces of a K or V row (D, Dv <= 64) in attn_o
template <int NP>
__device__ __forceinline__ void short_rows(uint4 (&kr)[NP], uint4 (&vr)[NP], bool go, const __half* krow,
                                           const __half* vrow, int D = NP * 8, int Dv = NP * 8) {
#pragma unroll
    for (int p = 0; p < NP; ++p) {
        kr[p] = go && p < D / 8 ? reinterpret_cast<const uint4*>(krow)[p] : make_uint4(0, 0, 0, 0);
        vr[p] = go && p < Dv / 8 ? reinterpret_cast<const uint4*>(vrow)[p] : make_uint4(0, 0, 0, 0);
    }
}

// A lane's score against one 16-byte piece of its key (8 halves) and the 8 fp32 values of q at q8: two sums, even
// dimensions into s0 and odd into s1, each in the order of the dimensions (attend_short and attn_o round alike).
__device__ __forceinline__ void key_piece_dot(const uint4& k, const float4* q8, float& s0, float& s1) {
    const __half2* hv = reinterpret_cast<const __half2*>(&k);
    const float4 qa = q8[0], qb = q8[1];
    const float2 f0 = __half22float2(hv[0]), f1 = __half22float2(hv[1]);
    const float2 f2 = __half22float2(hv[2]), f3 = __half22float2(hv[3]);
    s0 = fmaf(qa.x, f0.x, s0); s1 = fmaf(qa.y, f0.y, s1);
    s0 = fmaf(qa.z, f1.x, s0); s1 = fmaf(qa.w, f1.y, s1);
    s0 = fmaf(qb.x, f2.x, s0); s1 = fmaf(qb.y, f2.y, s1);
    s0 = fmaf(qb.z, f3.x, s0); s1 = fmaf(qb.w, f3.y, s1);
}

// One rotated pair of RoPE, x0' = x0 c - x1 s, x1' = x0 s + x1 c, each rounding spelled out (no fused multiply-add):
// rope_kv and the attention with RoPE fused round alike.
__device__ __forceinline__ void rope_pair(float x0, float x1, float c, float s, float& y0, float& y1) {
    y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

// Value d of one head x (D values) rotated at the angles c, s (rope_dim / 2 each): pairs (i, i + rope_dim/2) (NEOX)
// or (2i, 2i + 1); dims >= rope_dim as they are.
__device__ __forceinline__ float rope_value(const float* x, int d, const float* c, const float* s, int rope_dim, int neox) {
    if (d >= rope_dim) return x[d];
    const int half = rope_dim / 2, i = neox ? (d < half ? d : d - half) : d / 2;
    const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
    float y0, y1;
    rope_pair(x[i0], x[i1], c[i], s[i], y0, y1);
    return d == i0 ? y0 : y1;
}

// Programmatic dependent launch (PDL), the waiting side: with the launch attribute (orcd.cuda.load_kernel with
// ORCD_PDL_ALL=1, and every v2 matvec), this kernel may start while the one before it in the stream still runs;
// griddepcontrol.wait blocks until that kernel has completed and its writes are visible. Every kernel of the files in
// orcd.cuda.PDL_FILES calls it before it reads anything an earlier kernel may have written. Without the attribute
// it returns at once.
__device__ __forceinline__ void wait_primary() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Programmatic dependent launch, the triggering side: let the next kernel in the stream start now, if it was launched
// with programmatic stream serialization: it may prefetch what no earlier kernel writes (a matvec its weights), then
// waits (griddepcontrol.wait) for this whole grid to complete before it touches anything this grid writes. Called
// after wait_primary, so that at most the running kernel and the next one are resident: a chain of triggered kernels
// would otherwise fill the GPU with blocks waiting on each other. Compiled in only with -DORCD_EARLY_TRIGGER
// (orcd.cuda.kernel_options adds it when ORCD_EARLY_TRIGGER=1 or ORCD_PDL_ALL=1); without it, a PDL-launched kernel
// after these starts when their last block has exited.
__device__ __forceinline__ void trigger_dependents() {
#if defined(ORCD_EARLY_TRIGGER) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// A kernel with nothing to do in this step (decode attention whose o product computes it: attention_stage.cuh) lets
// the next kernel launch at once, then still waits for the one before before it exits: the kernel after it, which
// waits only for this one, then also sees everything the earlier kernels wrote.
__device__ __forceinline__ void pass_through() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
