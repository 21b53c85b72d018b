// y[r] = sum_k W[r, k] * x[k] for a weight stored as GGUF Q6_K blocks, read directly (no dequantised copy).
//
// Q6_K super-block (210 bytes, 256 values) in two halves of 128 values: ql (128 bytes of low nibbles),
// qh (64 bytes of 2-bit highs), scales (16 int8, one per 16 values), fp16 d at byte 208.
// In half h (values 128h + 32g + l, g = 0..3, l = 0..31):
//   low nibble:  g = 0: ql[64h + l] & 15,  g = 1: ql[64h + 32 + l] & 15,
//                g = 2: ql[64h + l] >> 4,  g = 3: ql[64h + 32 + l] >> 4
//   high 2 bits: (qh[32h + l] >> 2g) & 3
//   value = (d * scales[(128h + 32g + l) / 16]) * ((low | high << 4) - 32)
// One warp computes one row: lane l takes value l of each of the eight groups of 32, reading ql and qh as
// runs of 32 consecutive bytes (coalesced); d and the scales are broadcasts. Warp shuffle reduction.
// Numpy reference: orcd.cuda_matvec.matvec_ref (dequantise with orcd.quants, then W @ x).
#include "matvec_common.cuh"

extern "C" __global__ void matvec_q6_k(const unsigned char* __restrict__ w,   // [rows, K/256] blocks of 210 bytes
                                       const float* __restrict__ x,           // [K]
                                       float* __restrict__ y,                 // [rows]
                                       int rows, int K) {
    int row, lane;
    if (!warp_row(rows, row, lane)) return;
    const int nb = K / 256;
    const unsigned char* blk = w + (size_t)row * nb * 210;
    float acc = 0.f;
    for (int b = 0; b < nb; ++b, blk += 210) {
        const unsigned char* ql = blk;
        const unsigned char* qh = blk + 128;
        const signed char* scales = reinterpret_cast<const signed char*>(blk + 192);
        const float d = half_at(blk + 208);  // 210 and 208 even: aligned
        const float* xb = x + b * 256;
        for (int h = 0; h < 2; ++h) {
            const int hb = qh[32 * h + lane];
            const int l0 = ql[64 * h + lane], l1 = ql[64 * h + 32 + lane];
            for (int g = 0; g < 4; ++g) {
                const int low = ((g & 1) ? l1 : l0) >> (4 * (g >> 1)) & 15;
                const int q = (low | ((hb >> (2 * g)) & 3) << 4) - 32;
                const int idx = 128 * h + 32 * g + lane;
                const float v = __fmul_rn(__fmul_rn(d, (float)scales[idx / 16]), (float)q);  // (d*sc)*q
                acc = fmaf(v, xb[idx], acc);
            }
        }
    }
    warp_store_sum(acc, y, row, lane);
}
