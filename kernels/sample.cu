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

// sample_exp + sample_fast: the draw of `sample` without sorting the vocabulary. Only the most probable candidates are
// sorted: enough of them (SF_CAP at most) to hold every position the draw can need (the top-k / top-p cut and u
// times the kept mass), found from a histogram of the unnormalised probabilities e = exp((z - max z) / T).
// sample_exp (a grid; z: the penalised float64 logits, -inf where not allowed, as sample_logits leaves them): block b
// takes `per` consecutive ids, e_i = exp((z_i - m_b) / T) relative to its own maximum m_b (no grid-wide maximum needed
// first), and writes m_b, the sum of its e and its count of allowed ids to ws[3b..3b+2].
// sample_fast (one block of SF_NT threads; sample_exp's blocks span 2^per_log2 ids) rescales block b's e by
// exp((m_b - m) / T) (m = max z), declines at once when even e = 1 everywhere would need more than SF_CAP candidates
// (u S or top_p S > SF_CAP: a flat distribution), and:
//   1. sums them (S), counts and sums those with e >= min_p (the min-p cut: p >= min_p p_max with p_max = 1/S), and
//      makes a histogram of e by key (binade and 6 leading mantissa bits: a bucket's values lie within 1/64 of its
//      lower bound);
//   2. from the top bucket down, the first cut whose guaranteed mass (count x lower bound) covers max(u, top_p) S and
//      whose count covers min(top_k, n): the candidates are the ids with e in the buckets above it;
//   3. those gathered into shared memory, sorted by e descending (ties: lower id first, as engine.truncate), their
//      running sums, the cut and the draw as in `sample`.
// out[0] <- the id, out[1] <- 0, out[2] <- the number of candidates sorted. out[1] <- 1 when the draw cannot be made
// from at most SF_CAP candidates (a flat distribution, u near 1, nothing allowed, a cut landing past the candidates):
// the caller then runs the full sort (`sample`). It matches the Sampler up to float64 rounding (e is computed as
// exp((z - m_b)/T) exp((m_b - m)/T), sums in another order than numpy's).
#define SF_NT 1024
#define SF_CAP 4096
#define SF_BUCKETS 4096
#define SF_LOW ((1023LL - 63) << 6)        // key 0: e < 2^-63 (lower bound 0); e = 1 has key 63*64 = 4032
#define F64_NEG_INF (-__longlong_as_double(0x7ff0000000000000LL))

__device__ __forceinline__ int sf_key(double e) {
    const long long k = (__double_as_longlong(e) >> 46) - SF_LOW;
    return k < 0 ? 0 : (int)k;
}
__device__ __forceinline__ double sf_lower(int k) { return k == 0 ? 0.0 : __longlong_as_double((k + SF_LOW) << 46); }

template <typename F> __device__ __forceinline__ F warp_scan_incl(F v) {     // inclusive prefix over the lanes
    const int lane = threadIdx.x & 31;
    for (int off = 1; off < 32; off <<= 1) { const F o = __shfl_up_sync(0xffffffffu, v, off); if (lane >= off) v += o; }
    return v;
}
// Exclusive prefix over the block (thread order); `red` a __shared__ array of 32 values.
template <typename F> __device__ __forceinline__ F block_scan_excl(F v, F* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const F incl = warp_scan_incl(v);
    __syncthreads();
    if (lane == 31) red[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        const F w = lane < (int)(blockDim.x >> 5) ? red[lane] : F(0);
        red[lane] = warp_scan_incl(w) - w;
    }
    __syncthreads();
    return red[warp] + incl - v;
}
__device__ __forceinline__ double block_max_f64(double v, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : F64_NEG_INF;
    for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
__device__ __forceinline__ bool sf_before(double ea, int ia, double eb, int ib) { return ea > eb || (ea == eb && ia < ib); }

extern "C" __global__ void sample_exp(const double* __restrict__ z, int V, int per, double inv_t, double* __restrict__ e,
                                      double* __restrict__ ws) {
    wait_primary();
    __shared__ double redd[32];
    __shared__ int redi[32];
    const int a = blockIdx.x * per, b = min(a + per, V);
    double mb = F64_NEG_INF;
    for (int i = a + threadIdx.x; i < b; i += blockDim.x) mb = fmax(mb, z[i]);
    mb = block_max_f64(mb, redd);
    double s = 0.0; int c = 0;
    for (int i = a + threadIdx.x; i < b; i += blockDim.x) {
        const double v = z[i];
        const double x = v > F64_NEG_INF ? exp((v - mb) * inv_t) : 0.0;
        e[i] = x; s += x; c += v > F64_NEG_INF;
    }
    s = block_sum(s, redd); c = block_sum(c, redi);
    if (threadIdx.x == 0) { ws[3 * blockIdx.x] = mb; ws[3 * blockIdx.x + 1] = s; ws[3 * blockIdx.x + 2] = (double)c; }
}

extern "C" __global__ void __launch_bounds__(SF_NT) sample_fast(const double* __restrict__ eb, const double* __restrict__ ws,
                                                                int nblocks, int per_log2, int V, double inv_t, int top_k,
                                                                double top_p, double min_p, double u, int* __restrict__ out) {
    wait_primary();
    extern __shared__ double sf_smem[];
    double* ce = sf_smem;                                              // [SF_CAP] e, then the running sums
    int* cid = reinterpret_cast<int*>(ce + SF_CAP);                    // [SF_CAP] their ids
    int* hist = cid + SF_CAP;                                          // [SF_BUCKETS]
    double* scale = reinterpret_cast<double*>(hist + SF_BUCKETS);      // [nblocks] exp((m_b - m) / T)
    __shared__ double redd[32];
    __shared__ int redi[32], cut_s, count_s;
    const int tid = threadIdx.x;
    for (int i = tid; i < SF_BUCKETS; i += SF_NT) hist[i] = 0;
    double m = F64_NEG_INF, s = 0.0;
    for (int b = tid; b < nblocks; b += SF_NT) m = fmax(m, ws[3 * b]);
    m = block_max_f64(m, redd);
    int c = 0;
    for (int b = tid; b < nblocks; b += SF_NT) {
        const double mb = ws[3 * b], f = mb > F64_NEG_INF ? exp((mb - m) * inv_t) : 0.0;
        scale[b] = f; s += ws[3 * b + 1] * f; c += (int)ws[3 * b + 2];
    }
    const double S = block_sum(s, redd);
    const int n = block_sum(c, redi);                                  // (block_sum's barriers publish scale[])
    // Each e is at most 1, so the draw needs at least u S candidates (top_p S for the top-p cut): decline a flat
    // distribution now, before its histogram (whose buckets would then be few and contended).
    if (n == 0 || fmax(u, top_p < 1.0 ? top_p : 0.0) * S > SF_CAP) {
        if (tid == 0) { out[0] = -1; out[1] = 1; out[2] = n == 0 ? 0 : SF_CAP + 1; }
        return;
    }
    double sm = 0.0; int cm = 0;                                       // 1. min-p sums and the histogram
    for (int i = tid; i < V; i += SF_NT) {
        const double e = eb[i] * scale[i >> per_log2];
        if (min_p > 0.0 && e >= min_p) { sm += e; ++cm; }
        if (e > 0.0) atomicAdd(&hist[sf_key(e)], 1);
    }
    const double Sm = block_sum(sm, redd);
    cm = block_sum(cm, redi);
    // 2. the cut: thread t holds buckets SF_BUCKETS-1-4t .. SF_BUCKETS-4-4t (top down)
    const double need_mass = fmax(u, top_p < 1.0 ? top_p : 0.0) * S * (1.0 + 1e-9);
    const int need_count = max(top_k > 0 ? min(top_k, n) : 0, 1);
    int lc = 0; double lm = 0.0;
    for (int j = 0; j < 4; ++j) { const int k = SF_BUCKETS - 1 - 4 * tid - j; lc += hist[k]; lm += hist[k] * sf_lower(k); }
    int pc = block_scan_excl(lc, redi); double pm = block_scan_excl(lm, redd);
    if (tid == 0) cut_s = 0;
    __syncthreads();
    for (int j = 0; j < 4; ++j) {
        const int k = SF_BUCKETS - 1 - 4 * tid - j;
        pc += hist[k]; pm += hist[k] * sf_lower(k);
        if (k > 0 && pm >= need_mass && pc >= need_count) { atomicMax(&cut_s, k); break; }
    }
    __syncthreads();
    const int cut = cut_s;                                             // 0: no cut above the tail bucket will do
    if (cut == 0) { if (tid == 0) { out[0] = -1; out[1] = 1; out[2] = n; } return; }
    int cn = 0;
    for (int i = tid; i < SF_BUCKETS; i += SF_NT) cn += i >= cut ? hist[i] : 0;
    cn = block_sum(cn, redi);
    if (cn > SF_CAP) { if (tid == 0) { out[0] = -1; out[1] = 1; out[2] = cn; } return; }
    if (tid == 0) count_s = 0;                                         // 3. gather, sort, running sums, draw
    __syncthreads();
    for (int i = tid; i < V; i += SF_NT) {
        const double e = eb[i] * scale[i >> per_log2];
        if (e > 0.0 && sf_key(e) >= cut) {
            const int slot = atomicAdd(&count_s, 1);
            if (slot < cn) { ce[slot] = e; cid[slot] = i; }
        }
    }
    __syncthreads();
    if (count_s != cn) { if (tid == 0) { out[0] = -1; out[1] = 1; out[2] = cn; } return; }   // uniform
    int P = 2; while (P < cn) P <<= 1;
    for (int i = cn + tid; i < P; i += SF_NT) { ce[i] = -1.0; cid[i] = 0x7fffffff; }
    __syncthreads();
    for (int k = 2; k <= P; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = tid; i < P; i += SF_NT) {
                const int l = i ^ j;
                if (l > i && ((i & k) == 0) != sf_before(ce[i], cid[i], ce[l], cid[l])) {
                    const double te = ce[i]; ce[i] = ce[l]; ce[l] = te;
                    const int ti = cid[i]; cid[i] = cid[l]; cid[l] = ti;
                }
            }
            __syncthreads();
        }
    // running sums: thread t sums its run of consecutive candidates, then adds the block's prefix
    const int run_n = (cn + SF_NT - 1) / SF_NT, a = min(tid * run_n, cn), b = min(a + run_n, cn);
    double run = 0.0;
    for (int i = a; i < b; ++i) run += ce[i];
    double pre = block_scan_excl(run, redd);
    for (int i = a; i < b; ++i) { pre += ce[i]; ce[i] = pre; }
    __syncthreads();
    const double* cs = ce;
    int keep = top_k > 0 ? min(top_k, n) : n;
    bool ok = true;
    if (top_p < 1.0) {
        ok = cs[cn - 1] >= top_p * S || (top_k > 0 && min(top_k, n) <= cn);   // the cut lies among the candidates
        c = 0;
        for (int i = tid; i < cn; i += SF_NT) c += cs[i] < top_p * S;
        keep = min(keep, block_sum(c, redi) + 1);
    }
    if (min_p > 0.0) keep = min(keep, cm);
    keep = max(keep, 1);
    const double K = keep <= cn ? cs[keep - 1] : (min_p > 0.0 && keep == cm ? Sm : S);
    ok = ok && (keep <= cn || keep == n || (min_p > 0.0 && keep == cm));
    const double target = u * K;
    c = 0;
    for (int i = tid; i < cn; i += SF_NT) c += cs[i] <= target;
    c = block_sum(c, redi);
    ok = ok && (c < cn || keep <= cn);
    const int k = min(c, keep - 1);
    if (tid == 0) { out[0] = ok ? cid[k] : -1; out[1] = ok ? 0 : 1; out[2] = cn; }
}
