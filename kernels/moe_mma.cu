// A prompt's expert products on the tensor cores, straight from the MXFP4 blocks (gpt-oss's prefill).
//
// After the router, the T·k (token, expert) pairs of a prompt chunk are sorted by expert (orcd.cuda_moe.moe_groups):
// expert e owns a run of rows of X (R x K, fp16, one row per pair). moe_mma computes, for every run,
//   Y[r, n] = sum_k X[r, k] W_e[n, k] + bias[e, n]        (W_e: expert e's rows x K weights, MXFP4 blocks of 32 k)
// for n < rows, and, with a second weight tensor W2 (gate and up of the same experts), Y[r, rows + n] from W2 and
// bias2 in the same launch. No dequantised copy of the experts is written: each block dequantises the 64 x 64 tile of
// weights it needs into shared memory, to the fp16 values dequant_mxfp4_f16 writes (so the products equal cuBLAS's on
// that copy up to the order of the sums), and multiplies it with 64 rows of X by mma.sync m16n8k16 (fp32 sums).
//
// Grid: x = the run tiles (`tiles`: int4 {expert, first row, rows <= BM, 0}, a run cut into tiles of BM rows),
// y = the 64-column tiles of W (then of W2). BM = 64 (moe_mma_64, 128 threads) or 128 (moe_mma_128, 256 threads):
// warp w computes the 32 x 32 corner (w / 2, w % 2) of the BM x 64 output tile (a warp whose rows are all past the
// run skips its products). Per step of 64 k (two MXFP4 blocks per weight row): X's tile comes by cp.async and the
// next step's weight bytes are loaded into registers while this step's tiles are multiplied; both double-buffered.
// Needs sm_80; K a multiple of 64, rows a multiple of 64 (orcd.cuda_moe.moe_mma checks). Numpy reference:
// orcd.cuda_moe.moe_mma_ref.
#include <cuda_fp16.h>
#include "mma_common.cuh"

#define MM_T 64          // rows of X, columns of W, and k per step of a block's tile
#define MM_S (MM_T + 8)  // shared-memory row stride in halves (144 bytes: ldmatrix rows land on distinct banks)

typedef unsigned char u8;

// The 17-byte MXFP4 block at p as its exponent and 16 code bytes (4 words): the four aligned words from p rounded
// down to 4 bytes, then the o + 1 bytes of the block that remain (o = p mod 4); nothing past the block is read.
struct Mx4 { unsigned e, q[4]; };
__device__ __forceinline__ Mx4 load_mx4(const u8* p) {
    const size_t a = reinterpret_cast<size_t>(p);
    const unsigned* w = reinterpret_cast<const unsigned*>(a & ~(size_t)3);
    const unsigned o = (unsigned)(a & 3);
    unsigned v[5];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = __ldg(w + i);
    const u8* t = reinterpret_cast<const u8*>(w + 4);
    v[4] = o == 3 ? __ldg(w + 4) : o == 0 ? (unsigned)__ldg(t) : o == 1 ? (unsigned)__ldg(t) | (unsigned)__ldg(t + 1) << 8
         : (unsigned)__ldg(t) | (unsigned)__ldg(t + 1) << 8 | (unsigned)__ldg(t + 2) << 16;
    Mx4 m; m.e = (v[0] >> (8 * o)) & 0xffu;
#pragma unroll
    for (int i = 0; i < 4; ++i) m.q[i] = __funnelshift_rc(v[i], v[i + 1], 8 * o + 8);
    return m;
}

// E2M1 code c (doubled values 0 1 2 3 4 6 8 12, bit 3 the sign; code 8 is +0) as a float.
__device__ __forceinline__ float e2m1(unsigned c) {
    const int m = c & 7, v = ((m < 4 ? 0x03020100 : 0x0C080604) >> (8 * (m & 3))) & 0xff;
    return (float)((c & 8) ? -v : v);
}

// Values [16 h, 16 h + 16) of the block (h = 0: the low nibbles of its 16 code bytes, 1: the high ones) as fp16 into
// dst[0..15], each __float2half_rn(t * 2^(e-128)) as dequant_mxfp4_f16 writes it.
// Fast path, for 99 <= e <= 128 (a scale 2^(e-128) from 2^-29 to 1: every real weight): an E2M1 code s e1 e0 m, its
// bits moved to fp16's sign (15), the low exponent bits (11, 10) and the top mantissa bit (9), is an fp16 number of
// exactly its value times 2^-14 (exponent 0 is E2M1's subnormal, 0.5, as fp16's: 2^-15); the doubled table value t is
// then that number times 2^15, and t * 2^(e-128) one fp16 multiply by the normal 2^(e-113) — a single rounding, as the
// reference's (HMUL2 keeps subnormal results). Code 8 (sign, no magnitude) keeps +0 as ggml's table: the sign bit is
// kept only where the magnitude is not 0. 3 instructions per value where the float path takes ~8 and an I2F each
// (a quarter-rate conversion). Numpy mirror: orcd.cuda_moe.mxfp4_f16_bits_ref.
__device__ __forceinline__ unsigned e2m1x2_half2(unsigned t) {            // t: two codes, in bits 0-3 and 16-19
    const unsigned sign = (t << 12) & ((t & 0x00070007u) + 0x7fff7fffu) & 0x80008000u;
    return ((t << 9) & 0x0e000e00u) | sign;
}
__device__ __forceinline__ void mx4_half_to_half(const Mx4& m, int h, __half* dst) {
    unsigned v[8];
    const int sx = (int)m.e - 113;
    if (sx >= -14 && sx <= 15) {
        const __half2 s2 = __half2half2(__ushort_as_half((unsigned short)((sx + 15) << 10)));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned x = (m.q[i] >> (4 * h)) & 0x0f0f0f0fu;       // the 4 codes of bytes 4i .. 4i+3
            const unsigned a = e2m1x2_half2(__byte_perm(x, 0, 0x4140)), b = e2m1x2_half2(__byte_perm(x, 0, 0x4342));
            const __half2 pa = __hmul2(*reinterpret_cast<const __half2*>(&a), s2);
            const __half2 pb = __hmul2(*reinterpret_cast<const __half2*>(&b), s2);
            v[2 * i] = *reinterpret_cast<const unsigned*>(&pa); v[2 * i + 1] = *reinterpret_cast<const unsigned*>(&pb);
        }
    } else {                                                    // any e: exact in fp32, then rounded (e < 2: signed 0)
        const float s = m.e >= 2 ? __uint_as_float((m.e - 1) << 23) : 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int b = 0; b < 4; b += 2) {
                const unsigned q0 = (m.q[i] >> (8 * b + 4 * h)) & 15, q1 = (m.q[i] >> (8 * b + 8 + 4 * h)) & 15;
                v[2 * i + b / 2] = pack_half2(e2m1(q0) * s, e2m1(q1) * s);
            }
    }
    uint4* o = reinterpret_cast<uint4*>(dst);
    o[0] = make_uint4(v[0], v[1], v[2], v[3]); o[1] = make_uint4(v[4], v[5], v[6], v[7]);
}

// The kernel body for WM warps along the rows (tiles of 32 WM rows of X) and 2 along the 64 columns: 64 WM threads.
// Per step, the 64 x 64 weight tile is 128 MXFP4 blocks; S = 64 WM / 128 threads share one block (S = 1: all of it;
// S = 2: half each).
template <int WM>
__device__ __forceinline__ void moe_mma_body(
        const u8* __restrict__ W, const u8* __restrict__ W2, long long expert_bytes, int rows, int K,
        const __half* __restrict__ X, const int4* __restrict__ tiles, float* __restrict__ Y, int ldy,
        const float* __restrict__ bias, const float* __restrict__ bias2, __half* smem) {
    constexpr int NT = 64 * WM, BM = 32 * WM, S = NT / 128;
    __half* xs = smem;                                          // [2][BM * MM_S]
    __half* ws = smem + 2 * BM * MM_S;                          // [2][MM_T * MM_S]
    const int4 tile = tiles[blockIdx.x];
    const int e = tile.x, r0 = tile.y, nr = tile.z;
    if (nr == 0) return;                                        // a padding tile (moe_sort sizes the grid for the most)
    const int ny = rows / MM_T, second = (int)blockIdx.y >= ny, n0 = ((int)blockIdx.y - (second ? ny : 0)) * MM_T;
    const u8* wb = (second ? W2 : W) + (size_t)e * (size_t)expert_bytes;
    const float* b = second ? bias2 : bias;
    const size_t row_bytes = (size_t)(K / 32) * 17;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wm = warp >> 1, wn = warp & 1;
    const int blk = tid / S, part = tid % S;                    // this thread's weight block of the step (and its half)
    const u8* wrow = wb + (size_t)(n0 + blk / 2) * row_bytes + (blk & 1) * 17;
    const int wofs = (blk / 2) * MM_S + (blk & 1) * 32 + part * 16;
    const bool busy = wm * 32 < nr;                             // uniform over the warp: it has rows of the tile
    const int nk = K / MM_T;

    auto fetch_x = [&](int kt, int buf) {                       // BM rows x 64 halves: 4 x 16 bytes per thread
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int c = tid + NT * i, r = c >> 3, c8 = (c & 7) * 8, ok = r < nr;
            cp_async16(&xs[buf * BM * MM_S + r * MM_S + c8], X + (size_t)(r0 + (ok ? r : 0)) * K + kt * MM_T + c8, ok ? 16 : 0);
        }
        asm volatile("cp.async.commit_group;");
    };
    auto dequant = [&](const Mx4& m, int buf) {
        if (S == 1) { mx4_half_to_half(m, 0, &ws[buf * MM_T * MM_S + wofs]); mx4_half_to_half(m, 1, &ws[buf * MM_T * MM_S + wofs + 16]); }
        else mx4_half_to_half(m, part, &ws[buf * MM_T * MM_S + wofs]);
    };
    fetch_x(0, 0);
    Mx4 m = load_mx4(wrow);
    dequant(m, 0);

    float acc[2][4][4] = {};
    for (int kt = 0; kt < nk; ++kt) {
        const int buf = kt & 1;
        const bool more = kt + 1 < nk;
        if (more) { fetch_x(kt + 1, buf ^ 1); m = load_mx4(wrow + (size_t)(kt + 1) * 2 * 17); }
        if (more) asm volatile("cp.async.wait_group 1;"); else asm volatile("cp.async.wait_group 0;");
        __syncthreads();                                        // this step's X and W tiles are in shared memory
        if (busy) {
            const __half* xb = xs + buf * BM * MM_S;
            const __half* wt = ws + buf * MM_T * MM_S;
#pragma unroll
            for (int ks = 0; ks < MM_T / 16; ++ks) {
                unsigned a[2][4], bf[2][4];
                const int j = lane / 8, r = lane % 8;
#pragma unroll
                for (int i = 0; i < 2; ++i)                     // A: rows wm*32 + 16i .., matrices (rows +8 (j&1), k +8 (j>>1))
                    ldmatrix_x4(a[i], &xb[(wm * 32 + 16 * i + (j & 1) * 8 + r) * MM_S + ks * 16 + (j >> 1) * 8]);
#pragma unroll
                for (int p = 0; p < 2; ++p)                     // B: columns wn*32 + 16p .., matrices (k +8 (j&1), n +8 (j>>1))
                    ldmatrix_x4(bf[p], &wt[(wn * 32 + 16 * p + (j >> 1) * 8 + r) * MM_S + ks * 16 + (j & 1) * 8]);
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int q = 0; q < 4; ++q)
                        mma16816(acc[i][q], a[i], bf[q >> 1][2 * (q & 1)], bf[q >> 1][2 * (q & 1) + 1]);
            }
        }
        if (more) dequant(m, buf ^ 1);
        __syncthreads();                                        // before the next step overwrites the other buffers
    }
    if (!busy) return;
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int n = n0 + wn * 32 + 8 * q + 2 * t;
            const float b0 = b ? b[(size_t)e * rows + n] : 0.f, b1 = b ? b[(size_t)e * rows + n + 1] : 0.f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = wm * 32 + 16 * i + g + 8 * h;
                if (r < nr)
                    *reinterpret_cast<float2*>(Y + (size_t)(r0 + r) * ldy + (second ? rows : 0) + n) =
                        make_float2(acc[i][q][2 * h] + b0, acc[i][q][2 * h + 1] + b1);
            }
        }
}

// moe_mma_64: tiles of 64 rows, 128 threads, 36,864 bytes of static shared memory (the first version).
// moe_mma_128: tiles of 128 rows, 256 threads, 55,296 bytes of dynamic shared memory: each dequantised weight tile
// serves twice the rows (a prompt of 512 tokens gives each of 32 experts ~64 rows: one tile where the first version
// cut most runs into a full tile and a nearly empty one, each dequantising the same weights).
#define MOE_MMA_ARGS const u8* __restrict__ W, const u8* __restrict__ W2, long long expert_bytes, int rows, int K, \
        const __half* __restrict__ X, const int4* __restrict__ tiles, float* __restrict__ Y, int ldy,          \
        const float* __restrict__ bias, const float* __restrict__ bias2
extern "C" __global__ void __launch_bounds__(128) moe_mma_64(MOE_MMA_ARGS) {
    __shared__ __align__(16) __half smem[2 * (64 + MM_T) * MM_S];
    moe_mma_body<2>(W, W2, expert_bytes, rows, K, X, tiles, Y, ldy, bias, bias2, smem);
}
extern "C" __global__ void __launch_bounds__(256) moe_mma_128(MOE_MMA_ARGS) {
    extern __shared__ __align__(16) __half mm_smem[];          // 2 * (128 + 64) * MM_S halves
    moe_mma_body<4>(W, W2, expert_bytes, rows, K, X, tiles, Y, ldy, bias, bias2, mm_smem);
}
