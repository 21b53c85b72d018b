// y[r] = sum_k W[r, k] * x[k] for a weight stored as GGUF Q4_K blocks, read directly (no dequantised copy).
//
// Q4_K super-block (144 bytes, 256 values): fp16 d, fp16 dmin, scales (12 bytes packing eight 6-bit scales
// sc[s] and eight 6-bit mins m[s], one per sub-block s of 32 values), qs (128 bytes of nibbles). Byte
// qs[32c + l] holds value l of sub-block 2c in its low nibble and value l of sub-block 2c + 1 in its high
// nibble; value = (d * sc[s]) * q - dmin * m[s].
// Scale unpacking (a = scales[0:4], b = scales[4:8], c = scales[8:12]):
//   s < 4:  sc = a[s] & 63,                         m = b[s] & 63
//   s >= 4: sc = (c[s-4] & 15) | (a[s-4] >> 6) << 4, m = (c[s-4] >> 4) | (b[s-4] >> 6) << 4
// One warp computes one row: lane l takes byte l of each of the four 32-byte chunks of qs, i.e. value l of
// all eight sub-blocks, so each chunk is read by the warp as 32 consecutive bytes (coalesced); d, dmin and
// the scales are broadcasts. The partial sums meet in a warp shuffle reduction.
// Numpy reference: orcd.cuda_matvec.matvec_ref (dequantise with orcd.quants, then W @ x).
#include "matvec_common.cuh"

__device__ __forceinline__ void q4_k_scale_min(const unsigned char* sc12, int s, int& sc, int& m) {
    if (s < 4) { sc = sc12[s] & 63; m = sc12[s + 4] & 63; }
    else {
        sc = (sc12[s + 4] & 15) | ((sc12[s - 4] >> 6) << 4);
        m  = (sc12[s + 4] >> 4) | ((sc12[s] >> 6) << 4);
    }
}

extern "C" __global__ void matvec_q4_k(const unsigned char* __restrict__ w,   // [rows, K/256] blocks of 144 bytes
                                       const float* __restrict__ x,           // [K]
                                       float* __restrict__ y,                 // [rows]
                                       int rows, int K) {
    int row, lane;
    if (!warp_row(rows, row, lane)) return;
    const int nb = K / 256;
    const unsigned char* blk = w + (size_t)row * nb * 144;
    float acc = 0.f;
    for (int b = 0; b < nb; ++b, blk += 144) {
        const float d = half_at(blk);        // 144 is even: aligned
        const float dmin = half_at(blk + 2);
        const unsigned char* scales = blk + 4;
        const unsigned char* qs = blk + 16;
        const float* xb = x + b * 256;
        for (int c = 0; c < 4; ++c) {
            const int byte = qs[32 * c + lane];
            for (int h = 0; h < 2; ++h) {                       // low nibble: sub-block 2c, high: 2c + 1
                const int s = 2 * c + h;
                int sc, m;
                q4_k_scale_min(scales, s, sc, m);
                const int q = (byte >> (4 * h)) & 15;
                // (d*sc)*q - dmin*m, each step rounded as in the numpy reference
                const float v = __fsub_rn(__fmul_rn(__fmul_rn(d, (float)sc), (float)q), __fmul_rn(dmin, (float)m));
                acc = fmaf(v, xb[32 * s + lane], acc);
            }
        }
    }
    warp_store_sum(acc, y, row, lane);
}
