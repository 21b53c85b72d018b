// Dequantise GGUF blocks on the device, bit for bit as orcd.quants.dequantize (every rounding spelled out:
// __fmul_rn/__fadd_rn/__fsub_rn, so no fused multiply-add changes a result; CuPy compiles with -ftz=true, so the
// one place where an operand can be subnormal, MXFP4's scale 2^(e-128) for e < 2, is computed with integers).
//
// dequant     out[r, k] = scale * W[src(r), k] as float32  (scale = 1: exactly the dequantised value)
// dequant_f16 the same, rounded to float16 (round to nearest even, as numpy's astype)
// src(r) = ids[r] when ids is given (an embedding lookup), else r. A row id outside [0, rows) gives NaNs.
// One thread per output value; a warp writes 32 consecutive values (coalesced) and reads its block's header
// as a broadcast. The block type is a runtime argument: this runs once per prefill (or per token for an
// embedding row), not in the decode loop, so one kernel for all twelve types is the simpler choice; the exception
// is dequant_mxfp4_f16 (one thread per MXFP4 block), for the 0.8 G values of gpt-oss's experts a prompt dequantises
// per layer.
// Numpy reference: orcd.quants.dequantize.
#include <cuda_fp16.h>

typedef unsigned char u8;

// MXFP4's code c (E2M1, doubled: 0 1 2 3 4 6 8 12, bit 3 the sign) from two packed words, not a __constant__ table:
// lanes of a warp look up different codes, and the constant cache serialises different addresses.
__device__ __forceinline__ float dq_e2m1(unsigned c) {
    const int m = c & 7, v = ((m < 4 ? 0x03020100 : 0x0C080604) >> (8 * (m & 3))) & 0xff;
    return (float)((c & 8) ? -v : v);                         // code 8 is +0, as in ggml's table (not -0)
}

// t * 2^(e-128), MXFP4's value of E8M0 exponent e and code value t, exactly as numpy computes it in float32.
__device__ __forceinline__ float dq_mxfp4(unsigned e, float t) {
    if (e >= 2) return __fmul_rn(__uint_as_float((e - 1) << 23), t);   // 2^(e-128) normal: exact (or inf)
    // 2^(e-128) is subnormal, which CuPy's -ftz=true would flush: build t * 2^(e-128) = M * 2^-149 from integers
    // (exact, as numpy's product), subnormal when M < 2^23, else re-biased from float(M).
    const unsigned M = (unsigned)fabsf(t) << (e + 21);
    const unsigned bits = M < 0x800000u ? M : __float_as_uint((float)M) - (149u << 23);
    return __uint_as_float(bits | (t < 0.f ? 0x80000000u : 0u));
}

__device__ __forceinline__ float dq_half(const u8* p) { return __half2float(__ushort_as_half((unsigned short)(p[0] | p[1] << 8))); }

// Q4_K/Q5_K: 6-bit scale and min of sub-block s (orcd.quants.unpack_k_scales).
__device__ __forceinline__ void dq_k_scale_min(const u8* sc, int s, int& d, int& m) {
    if (s < 4) { d = sc[s] & 63; m = sc[s + 4] & 63; }
    else { d = (sc[s + 4] & 15) | (sc[s - 4] >> 6) << 4; m = (sc[s + 4] >> 4) | (sc[s] >> 6) << 4; }
}

// Value k of a row stored as `type` blocks.
__device__ float dq_value(const u8* row, int type, int k) {
    switch (type) {
    case 0: return reinterpret_cast<const float*>(row)[k];                                         // F32
    case 1: return dq_half(row + 2 * k);                                                           // F16
    case 30: return __uint_as_float((unsigned)(row[2 * k] | row[2 * k + 1] << 8) << 16);            // BF16
    case 2: {                                                                                      // Q4_0
        const u8* b = row + (k / 32) * 18; const int j = k % 32;
        const int q = ((b[2 + j % 16] >> (4 * (j / 16))) & 15) - 8;
        return __fmul_rn(dq_half(b), (float)q);
    }
    case 3: {                                                                                      // Q4_1
        const u8* b = row + (k / 32) * 20; const int j = k % 32;
        const int q = (b[4 + j % 16] >> (4 * (j / 16))) & 15;
        return __fadd_rn(__fmul_rn(dq_half(b), (float)q), dq_half(b + 2));
    }
    case 6: {                                                                                      // Q5_0
        const u8* b = row + (k / 32) * 22; const int j = k % 32;
        const int q = (((b[6 + j % 16] >> (4 * (j / 16))) & 15) | ((b[2 + j / 8] >> (j % 8)) & 1) << 4) - 16;
        return __fmul_rn(dq_half(b), (float)q);
    }
    case 7: {                                                                                      // Q5_1
        const u8* b = row + (k / 32) * 24; const int j = k % 32;
        const int q = ((b[8 + j % 16] >> (4 * (j / 16))) & 15) | ((b[4 + j / 8] >> (j % 8)) & 1) << 4;
        return __fadd_rn(__fmul_rn(dq_half(b), (float)q), dq_half(b + 2));
    }
    case 8: {                                                                                      // Q8_0
        const u8* b = row + (k / 32) * 34;
        return __fmul_rn(dq_half(b), (float)(signed char)b[2 + k % 32]);
    }
    case 39: {                                                                                     // MXFP4
        const u8* b = row + (k / 32) * 17; const int j = k % 32;
        return dq_mxfp4(b[0], dq_e2m1((b[1 + j % 16] >> (4 * (j / 16))) & 15));
    }
    case 12: case 13: {                                                                            // Q4_K, Q5_K
        const bool q5 = type == 13;
        const u8* b = row + (k / 256) * (q5 ? 176 : 144); const int s = (k % 256) / 32, l = k % 32;
        int sc, m; dq_k_scale_min(b + 4, s, sc, m);
        int q = (b[(q5 ? 48 : 16) + 32 * (s / 2) + l] >> (4 * (s % 2))) & 15;
        if (q5) q |= ((b[16 + l] >> s) & 1) << 4;
        const float D = __fmul_rn(dq_half(b), (float)sc), DM = __fmul_rn(dq_half(b + 2), (float)m);
        return __fsub_rn(__fmul_rn(D, (float)q), DM);
    }
    case 14: {                                                                                     // Q6_K
        const u8* b = row + (k / 256) * 210; const int v = k % 256, h = v / 128, g = (v % 128) / 32, l = v % 32;
        const int lo = (b[64 * h + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 15;
        const int hi = (b[128 + 32 * h + l] >> (2 * g)) & 3;
        const float D = __fmul_rn(dq_half(b + 208), (float)(signed char)b[192 + v / 16]);
        return __fmul_rn(D, (float)((lo | hi << 4) - 32));
    }
    }
    return __int_as_float(0x7fffffff);
}

// scale * v rounded once to float32 as IEEE (and numpy) do, gradual underflow included: -ftz=true would flush a
// subnormal v or product. fp64 is not flushed; the product of two floats is exact in fp64.
__device__ __forceinline__ float dq_scale(float scale, float v) {
    const unsigned b = __float_as_uint(v);
    const double dv = (b & 0x7f800000u) ? (double)v : (double)(b & 0x7fffffu) * 0x1p-149 * ((b >> 31) ? -1.0 : 1.0);
    const double p = (double)scale * dv;
    if (p == 0.0 || fabs(p) >= 0x1p-126) return __double2float_rn(p);
    const unsigned m = (unsigned)__double2ll_rn(fabs(p) * 0x1p149);      // nearest (even) multiple of 2^-149
    return __uint_as_float(m | (p < 0.0 ? 0x80000000u : 0u));
}

// Bytes of one row of K values.
__device__ __forceinline__ long long dq_row_bytes(int type, int K) {
    switch (type) {
    case 0: return 4ll * K;   case 1: case 30: return 2ll * K;
    case 2: return K / 32 * 18ll;  case 3: return K / 32 * 20ll;  case 6: return K / 32 * 22ll;
    case 7: return K / 32 * 24ll;  case 8: return K / 32 * 34ll;  case 39: return K / 32 * 17ll;
    case 12: return K / 256 * 144ll;  case 13: return K / 256 * 176ll;  case 14: return K / 256 * 210ll;
    }
    return 0;
}

// Grid: x over the row's values (blockDim.x each), y over rows (a block walks rows y, y + gridDim.y, ...): no
// 64-bit division of a flat index per value (it cost more than all the rest).
template <class OUT>
__device__ __forceinline__ void dq_body(const u8* __restrict__ w, int type, int rows, int K, const int* __restrict__ ids,
                                        int nout, OUT* __restrict__ out, float scale) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const long long row_bytes = dq_row_bytes(type, K);
    for (int r = blockIdx.y; r < nout; r += gridDim.y) {
        const int src = ids ? ids[r] : r;
        float v = __int_as_float(0x7fffffff);
        if (src >= 0 && src < rows) {
            v = dq_value(w + src * row_bytes, type, k);
            if (scale != 1.f) v = dq_scale(scale, v);
        }
        const long long i = (long long)r * K + k;
        if constexpr (sizeof(OUT) == 2) out[i] = __float2half_rn(v);
        else out[i] = v;
    }
}

extern "C" __global__ void dequant(const u8* __restrict__ w, int type, int rows, int K, const int* __restrict__ ids,
                                   int nout, float* __restrict__ out, float scale) {
    dq_body<float>(w, type, rows, K, ids, nout, out, scale);
}

extern "C" __global__ void dequant_f16(const u8* __restrict__ w, int type, int rows, int K, const int* __restrict__ ids,
                                       int nout, __half* __restrict__ out, float scale) {
    dq_body<__half>(w, type, rows, K, ids, nout, out, scale);
}

// MXFP4 blocks to float16, one thread per block of 32 values (a prompt dequantises gpt-oss's experts, 0.8 G values a
// layer, this way): 17 bytes in, the 64 bytes out as four 16-byte stores. Bit for bit as dequant_f16.
extern "C" __global__ void dequant_mxfp4_f16(const u8* __restrict__ w, long long nblocks, __half* __restrict__ out) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    const u8* p = w + b * 17;
    const unsigned e = p[0];
    __align__(16) __half h[32];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const unsigned q = p[1 + j];
        h[j] = __float2half_rn(dq_mxfp4(e, dq_e2m1(q & 15)));
        h[j + 16] = __float2half_rn(dq_mxfp4(e, dq_e2m1(q >> 4)));
    }
    uint4* o = reinterpret_cast<uint4*>(out + b * 32);
    const uint4* s = reinterpret_cast<const uint4*>(h);
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = s[i];
}
