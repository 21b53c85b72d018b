// y[r] = sum_k W[r, k] * x[k] for a weight stored as GGUF Q5_0 blocks, read directly (no dequantised copy).
//
// Q5_0 block (22 bytes, 32 values): fp16 scale d, qh (4 bytes: bit j = fifth bit of value j), qs (16 bytes:
// the low nibble of qs[i] is value i, the high nibble value i + 16); value j = d * ((lo | hi << 4) - 16).
// One warp computes one row: lane j takes value j of every block (byte qs[j % 16], nibble j / 16, bit j of
// qh), so the warp reads each 22-byte block as one contiguous span and the scale as a broadcast. The
// partial sums meet in a warp shuffle reduction.
// Numpy reference: orcd.cuda_matvec.matvec_ref (dequantise with orcd.quants, then W @ x).
#include "matvec_common.cuh"

extern "C" __global__ void matvec_q5_0(const unsigned char* __restrict__ w,   // [rows, K/32] blocks of 22 bytes
                                       const float* __restrict__ x,           // [K]
                                       float* __restrict__ y,                 // [rows]
                                       int rows, int K) {
    int row, lane;
    if (!warp_row(rows, row, lane)) return;
    const int nb = K / 32;
    const unsigned char* blk = w + (size_t)row * nb * 22;
    const int byte = lane % 16, shift = (lane / 16) * 4;        // which nibble of which qs byte
    float acc = 0.f;
    for (int b = 0; b < nb; ++b, blk += 22) {
        const float d = half_at(blk);  // 2-byte aligned: 22 is even
        const int hi = (blk[2 + lane / 8] >> (lane % 8)) & 1;
        const int q = ((blk[6 + byte] >> shift) & 15) | (hi << 4);
        const float v = __fmul_rn(d, (float)(q - 16));           // exactly the dequantised value
        acc = fmaf(v, x[b * 32 + lane], acc);
    }
    warp_store_sum(acc, y, row, lane);
}
