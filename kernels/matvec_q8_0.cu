// y[r] = sum_k W[r, k] * x[k] for a weight stored as GGUF Q8_0 blocks, read directly (no dequantised copy).
//
// Q8_0 block (34 bytes, 32 values): fp16 scale d, then 32 int8 codes q; value = d * q.
// A row of K values is K/32 consecutive blocks. One warp computes one row: lane j takes code j of every
// block, so each block is read by the warp as 32 consecutive bytes (coalesced) and the scale is a
// broadcast. The partial sums meet in a warp shuffle reduction.
// Numpy reference: orcd.cuda.matvec_q8_0_ref (dequantise with orcd.quants, then W @ x).
#include <cuda_fp16.h>

extern "C" __global__ void matvec_q8_0(const unsigned char* __restrict__ w,   // [rows, K/32] blocks of 34 bytes
                                       const float* __restrict__ x,           // [K]
                                       float* __restrict__ y,                 // [rows]
                                       int rows, int K) {
    const int warps_per_block = blockDim.x / 32;
    const int row = blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int nb = K / 32;
    const unsigned char* blk = w + (size_t)row * nb * 34;
    float acc = 0.f;
    for (int b = 0; b < nb; ++b, blk += 34) {
        const float d = __half2float(*reinterpret_cast<const __half*>(blk));  // 2-byte aligned: 34 is even
        const float q = (float)(signed char)blk[2 + lane];
        acc += d * q * x[b * 32 + lane];
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[row] = acc;
}
