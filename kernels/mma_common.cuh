// What the tensor-core kernels share (attention_mma.cu, moe_mma.cu; sm_80 and later): the fp16 mma.sync m16n8k16
// with fp32 accumulation, ldmatrix, cp.async, and packing two floats into a half2 register.
//
// mma16816 fragment layout (lane = 4 g + t, g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major)  a0: rows g, k 2t..2t+1   a1: row g + 8   a2: row g, k + 8   a3: row g + 8, k + 8
//   B (16 x 8, "col": n-major, k contiguous)   b0: n g, k 2t..2t+1   b1: k + 8
//   C (16 x 8, fp32)  c0, c1: row g, n 2t, 2t + 1   c2, c3: row g + 8
#pragma once
#include <cuda_fp16.h>

__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
}

__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 matrices of 16-bit values from shared memory: lanes 8j .. 8j+7 give the row addresses of matrix j,
// register j receives it (each lane: row lane / 4, values 2 (lane % 4), + 1).
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* smem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

// The B operands of P V for k-step kk (keys 16 kk .. 16 kk + 15) and value n-tiles 2j, 2j + 1 from a row-major V tile
// in shared memory (rows of `st` halves): one ldmatrix.x4.trans; b[0], b[1] for n-tile 2j, b[2], b[3] for 2j + 1.
__device__ __forceinline__ void v_frags(unsigned (&b)[4], const __half* V, int st, int kk, int j, int lane) {
    const int mi = lane / 8, key = kk * 16 + (mi & 1) * 8 + lane % 8, dv = (2 * j + (mi >> 1)) * 8;
    const unsigned addr = (unsigned)__cvta_generic_to_shared(V + key * st + dv);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(addr));
}

// 16 bytes global -> shared, asynchronously; `n` = 16 copies them, 0 writes zeros (rows past the range).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int n) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(s), "l"(gmem), "r"(n));
}
