// Dequantise GGUF blocks on the device, bit for bit as orcd.quants.dequantize (every rounding spelled out:
// __fmul_rn/__fadd_rn/__fsub_rn, so no fused multiply-add changes a result; CuPy compiles with -ftz=true, so the
// one place where an operand can be subnormal, MXFP4's scale 2^(e-128) for e < 2, is computed with integers).
//
// dequant     out[r, k] = scale * W[src(r), k] as float32  (scale = 1: exactly the dequantised value)
// dequant_f16 the same, rounded to float16 (round to nearest even, as numpy's astype)
// src(r) = ids[r] when ids is given (an embedding lookup), else r. A row id outside [0, rows) gives NaNs.
// One thread per output value; a warp writes 32 consecutive values (coalesced) and reads its block's header
// as a broadcast. The block type is a runtime argument: this runs once per prefill (or per token for an
// embedding row), not in the decode loop, so one kernel for all twelve types is the simpler choice.
// Numpy reference: orcd.quants.dequantize.
#include <cuda_fp16.h>

typedef unsigned char u8;

__constant__ float DQ_MXFP4[16] = {0.f, 1.f, 2.f, 3.f, 4.f, 6.f, 8.f, 12.f, 0.f, -1.f, -2.f, -3.f, -4.f, -6.f, -8.f, -12.f};

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
        const unsigned e = b[0], code = (b[1 + j % 16] >> (4 * (j / 16))) & 15;
        const float t = DQ_MXFP4[code];
        if (e >= 2) return __fmul_rn(__uint_as_float((e - 1) << 23), t);   // 2^(e-128) normal: exact (or inf)
        // 2^(e-128) is subnormal, which CuPy's -ftz=true would flush: build t * 2^(e-128) = M * 2^-149 from integers
        // (exact, as numpy's product), subnormal when M < 2^23, else re-biased from float(M).
        const unsigned M = (unsigned)fabsf(t) << (e + 21);
        const unsigned bits = M < 0x800000u ? M : __float_as_uint((float)M) - (149u << 23);
        return __uint_as_float(bits | (t < 0.f ? 0x80000000u : 0u));
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

template <class OUT>
__device__ __forceinline__ void dq_body(const u8* __restrict__ w, int type, int rows, int K, const int* __restrict__ ids,
                                        int nout, OUT* __restrict__ out, float scale) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)nout * K) return;
    const int r = (int)(i / K), k = (int)(i % K);
    const int src = ids ? ids[r] : r;
    float v = __int_as_float(0x7fffffff);
    if (src >= 0 && src < rows) {
        v = dq_value(w + src * dq_row_bytes(type, K), type, k);
        if (scale != 1.f) v = dq_scale(scale, v);
    }
    if constexpr (sizeof(OUT) == 2) out[i] = __float2half_rn(v);
    else out[i] = v;
}

extern "C" __global__ void dequant(const u8* __restrict__ w, int type, int rows, int K, const int* __restrict__ ids,
                                   int nout, float* __restrict__ out, float scale) {
    dq_body<float>(w, type, rows, K, ids, nout, out, scale);
}

extern "C" __global__ void dequant_f16(const u8* __restrict__ w, int type, int rows, int K, const int* __restrict__ ids,
                                       int nout, __half* __restrict__ out, float scale) {
    dq_body<__half>(w, type, rows, K, ids, nout, out, scale);
}
