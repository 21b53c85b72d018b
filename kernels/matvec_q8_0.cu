// y[r] = sum_k W[r, k] * x[k] for a weight stored as GGUF Q8_0 blocks, read directly (no dequantised copy).
//
// Q8_0 block (34 bytes, 32 values): fp16 scale d, then 32 int8 codes q; value = d * q.
// A row of K values is K/32 consecutive blocks. One warp computes one row: lane j takes code j of every
// block, so each block is read by the warp as 32 consecutive bytes (coalesced) and the scale is a
// broadcast. The partial sums meet in a warp shuffle reduction.
// Numpy reference: orcd.cuda_matvec.matvec_ref (dequantise with orcd.quants, then W @ x).
#include "matvec_common.cuh"

extern "C" __global__ void matvec_q8_0(const unsigned char* __restrict__ w,   // [rows, K/32] blocks of 34 bytes
                                       const float* __restrict__ x,           // [K]
                                       float* __restrict__ y,                 // [rows]
                                       int rows, int K) {
    int row, lane;
    if (!warp_row(rows, row, lane)) return;
    const int nb = K / 32;
    const unsigned char* blk = w + (size_t)row * nb * 34;
    float acc = 0.f;
    for (int b = 0; b < nb; ++b, blk += 34) {
        const float d = half_at(blk);  // 2-byte aligned: 34 is even
        const float q = (float)(signed char)blk[2 + lane];
        acc += d * q * x[b * 32 + lane];
    }
    warp_store_sum(acc, y, row, lane);
}
