// Choosing the next token on the GPU: the argmax (greedy; two passes, capture-safe) and the pieces of the
// sampling chain of orcd.engine.Sampler that are not plain cupy array operations.
//
// argmax_blocks_*: block b reduces a grid-strided share of the allowed ids to its best (value, id) in the
// workspace; argmax_final_*: one block reduces those to out[0]. "Best" is the larger value, ties to the lower
// id (numpy's argmax); ids with allowed[i] == 0 never win; out[0] = -1 when nothing is allowed. NaN never wins.
// sample_logits: z = allowed ? (double)logits : -inf. sample_penalties: orcd.engine.apply_penalties on z.
// sample: given the allowed probabilities sorted descending (ties by lower id) and their cumulative sums, the
// cut of engine.truncate (top-k, top-p, min-p) and the draw: the first kept candidate whose cumulative
// probability exceeds u times the kept total.
#include "ops_common.cuh"

#define SAMPLE_NT 256
#define NO_ID 0x7fffffff

template <typename F> struct Best { F v; int i; };

template <typename F> __device__ __forceinline__ Best<F> better(Best<F> a, Best<F> b) {
    if (a.i == NO_ID) return b;
    if (b.i == NO_ID) return a;
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

template <typename F> __device__ Best<F> block_best(Best<F> x) {
    __shared__ F sv[32];
    __shared__ int si[32];
    for (int off = 16; off > 0; off >>= 1) {
        Best<F> o{__shfl_xor_sync(0xffffffffu, x.v, off), __shfl_xor_sync(0xffffffffu, x.i, off)};
        x = better(x, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sv[warp] = x.v; si[warp] = x.i; }
    __syncthreads();
    if (warp == 0) {
        x = lane < nw ? Best<F>{sv[lane], si[lane]} : Best<F>{F(0), NO_ID};
        for (int off = 16; off > 0; off >>= 1) {
            Best<F> o{__shfl_xor_sync(0xffffffffu, x.v, off), __shfl_xor_sync(0xffffffffu, x.i, off)};
            x = better(x, o);
        }
    }
    return x;                             // valid in thread 0
}

template <typename F> __device__ void argmax_blocks(const F* v, const unsigned char* allowed, int n, F* ws_v, int* ws_i) {
    Best<F> b{F(0), NO_ID};
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        if (!allowed || allowed[i]) b = better(b, Best<F>{v[i], i});
    b = block_best(b);
    if (threadIdx.x == 0) { ws_v[blockIdx.x] = b.v; ws_i[blockIdx.x] = b.i; }
}

template <typename F> __device__ void argmax_final(const F* ws_v, const int* ws_i, int nb, int* out) {
    Best<F> b{F(0), NO_ID};
    for (int i = threadIdx.x; i < nb; i += blockDim.x) b = better(b, Best<F>{ws_v[i], ws_i[i]});
    b = block_best(b);
    if (threadIdx.x == 0) out[0] = b.i == NO_ID ? -1 : b.i;
}

extern "C" __global__ void argmax_blocks_f32(const float* v, const unsigned char* allowed, int n, float* ws_v, int* ws_i) {
    wait_primary(); trigger_dependents();
    argmax_blocks(v, allowed, n, ws_v, ws_i);
}
extern "C" __global__ void argmax_blocks_f64(const double* v, const unsigned char* allowed, int n, double* ws_v, int* ws_i) {
    wait_primary(); trigger_dependents();
    argmax_blocks(v, allowed, n, ws_v, ws_i);
}
extern "C" __global__ void argmax_final_f32(const float* ws_v, const int* ws_i, int nb, int* out) {
    wait_primary(); trigger_dependents();
    argmax_final(ws_v, ws_i, nb, out);
}
extern "C" __global__ void argmax_final_f64(const double* ws_v, const int* ws_i, int nb, int* out) {
    wait_primary(); trigger_dependents();
    argmax_final(ws_v, ws_i, nb, out);
}

extern "C" __global__ void sample_logits(const float* __restrict__ logits, const unsigned char* __restrict__ allowed,
                                         double* __restrict__ z, int n) {
    wait_primary();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) z[i] = allowed[i] ? (double)logits[i] : -__longlong_as_double(0x7ff0000000000000LL);
}

// x = x <= 0 ? x * repetition : x / repetition; then - count * frequency - (count > 0) * presence (in this order).
extern "C" __global__ void sample_penalties(double* __restrict__ z, const int* __restrict__ ids,
                                            const double* __restrict__ counts, int m, int n,
                                            double repetition, double presence, double frequency) {
    wait_primary();
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= m) return;
    const int id = ids[e];
    if (id < 0 || id >= n) return;
    const double c = counts[e], x = z[id];
    const double r = x <= 0.0 ? x * repetition : x / repetition;
    z[id] = (r - c * frequency) - (c > 0.0 ? 1.0 : 0.0) * presence;
}

// One block. ps: probabilities sorted descending (the n allowed ids first), cs: their running sums, order: the
// ids in that order. out[0] <- the drawn id.
extern "C" __global__ void sample(const double* __restrict__ ps, const double* __restrict__ cs,
                                  const long long* __restrict__ order, const unsigned char* __restrict__ allowed,
                                  int V, int top_k, double top_p, double min_p, double u, int* __restrict__ out) {
    wait_primary();
    __shared__ int red[32];
    int c = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) c += allowed[i] != 0;
    const int n = block_sum(c, red);                                   // allowed ids
    int keep = top_k > 0 ? min(top_k, n) : n;
    if (top_p < 1.0) {                                                 // searchsorted(cumsum, top_p, 'left') + 1
        c = 0;
        for (int i = threadIdx.x; i < n; i += blockDim.x) c += cs[i] < top_p;
        keep = min(keep, block_sum(c, red) + 1);
    }
    if (min_p > 0.0) {                                                 // count_nonzero(ps >= min_p * ps[0])
        const double thr = min_p * ps[0];
        c = 0;
        for (int i = threadIdx.x; i < n; i += blockDim.x) c += ps[i] >= thr;
        keep = min(keep, block_sum(c, red));
    }
    keep = max(keep, 1);
    const double target = u * cs[keep - 1];                            // searchsorted(cs, u * cs[-1], 'right')
    c = 0;
    for (int i = threadIdx.x; i < keep; i += blockDim.x) c += cs[i] <= target;
    const int k = min(block_sum(c, red), keep - 1);
    if (threadIdx.x == 0) out[0] = (int)order[k];
}
