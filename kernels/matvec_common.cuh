// What every matrix-vector kernel of orcd shares: one warp computes one row of y = W x.
// A launch has blockDim.x = 32 * warps_per_block threads and ceil(rows / warps_per_block) blocks.
#pragma once
#include <cuda_fp16.h>

// The row this warp computes and this thread's lane; false for the spare warps of the last block.
__device__ __forceinline__ bool warp_row(int rows, int& row, int& lane) {
    row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    lane = threadIdx.x % 32;
    return row < rows;
}

// Sum the 32 lanes' partial sums (shuffle tree) and let lane 0 write y[row].
__device__ __forceinline__ void warp_store_sum(float acc, float* __restrict__ y, int row, int lane) {
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[row] = acc;
}

// The fp16 scale at the start of a block (blocks of even size keep it 2-byte aligned).
__device__ __forceinline__ float half_at(const unsigned char* p) {
    return __half2float(*reinterpret_cast<const __half*>(p));
}
