// y[r] = sum_k W[r, k] * x[k] for a weight stored as GGUF MXFP4 blocks, read directly (no dequantised copy).
//
// MXFP4 block (17 bytes, 32 values): an E8M0 exponent byte e, then qs (16 bytes of E2M1 codes; the low
// nibble of qs[i] is value i, the high nibble value i + 16); value = MXFP4_VALUES[q] * 2^(e - 128), with
// 2^(e - 128) built bit for bit as ggml_e8m0_to_fp32_half (subnormal for e < 2).
// One warp computes one row: lane j takes value j of every block (byte qs[j % 16], nibble j / 16), so the
// warp reads each 17-byte block as one contiguous span and e as a broadcast (byte reads only: 17 is odd).
// Numpy reference: orcd.cuda_matvec.matvec_ref (dequantise with orcd.quants, then W @ x).
#include "matvec_common.cuh"

__constant__ float MXFP4_VALUES[16] = {0.f, 1.f, 2.f, 3.f, 4.f, 6.f, 8.f, 12.f,
                                       0.f, -1.f, -2.f, -3.f, -4.f, -6.f, -8.f, -12.f};

__device__ __forceinline__ float e8m0_to_f32_half(unsigned int e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}

extern "C" __global__ void matvec_mxfp4(const unsigned char* __restrict__ w,   // [rows, K/32] blocks of 17 bytes
                                        const float* __restrict__ x,           // [K]
                                        float* __restrict__ y,                 // [rows]
                                        int rows, int K) {
    int row, lane;
    if (!warp_row(rows, row, lane)) return;
    const int nb = K / 32;
    const unsigned char* blk = w + (size_t)row * nb * 17;
    const int byte = lane % 16, shift = (lane / 16) * 4;
    float acc = 0.f;
    for (int b = 0; b < nb; ++b, blk += 17) {
        const float d = e8m0_to_f32_half(blk[0]);
        const float v = __fmul_rn(d, MXFP4_VALUES[(blk[1 + byte] >> shift) & 15]);   // exactly the dequantised value
        acc = fmaf(v, x[b * 32 + lane], acc);
    }
    warp_store_sum(acc, y, row, lane);
}
