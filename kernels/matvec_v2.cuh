// matvec v2: y = W x (+ b) (+ y) read straight from GGUF blocks, built for memory bandwidth.
//
// One generic kernel body (matvec_v2_body) and, per block type, a small "trait" struct that knows how to
//   load(row, c)      fetch chunk c of a row (the bytes of CV consecutive values) into registers, with loads of
//                     4 to 16 bytes: whole words even where the format is only 2- or 1-byte aligned (ld_words);
//   dot(raw, xs, c)   the dot product of that chunk with the staged input.
// The staged input: each CTA quantises x once into shared memory as integer blocks of 32 values (XB-bit codes
// q, XB = 16 by default or 8, one fp32 scale d per block, and the integer code sums of each 16-value half), so the
// quantised types reduce to integer dot products (__dp4a with 8-bit codes, 4 multiply-adds per instruction, as
// llama.cpp's mmvq; __dp2a with 16-bit codes, 2 per instruction) and one float multiply per chunk. 8-bit codes
// move the logits of a whole model by ~1e-2 of their largest value; 16-bit codes are 256 times finer. The
// float types (F32/F16/BF16) stage x as fp32 instead. Exactly what the kernel computes, for the quantised
// types, is dequant(W) . dequant(qXB(x)) (with the RMSNorm fused: dequant(W) . dequant(qXB(x * nw)) / rms, whose codes
// are those of x * nw / rms up to fp32 rounding); numpy reference: orcd.cuda_matvec.linear_ref.
//
// Work split: the rows of all parts (a Linear may stack q|k|v of different types) form tiles of NT/G rows;
// G threads share one row (G a power of two: G < 32 packs several rows into a warp when K is short, G > 32
// splits K across warps when rows are few), each thread taking chunks g, g+G, ... in batches of U. A CTA
// walks tiles blockIdx.x, blockIdx.x + gridDim.x, ... (a persistent grid sized to fill the GPU once), so x
// is staged once per CTA, and it loads the next batch while it computes the current one. Its very first
// loads are issued before the staging, so the weight's DRAM latency overlaps the staging.
#pragma once
#include <cuda_fp16.h>
#include "ops_common.cuh"                                   // gated_act
#include "attention_stage.cuh"                              // IN_ATTN, IN_MERGE

namespace mv {

typedef unsigned int u32;
typedef unsigned char u8;

// ---------------------------------------------------------------------------------------------------------
// Loads (read-only path). ld_words: N little-endian words of the bytes at p, for any alignment of p: the
// aligned 4-byte words covering [p, p + 4N), joined by funnel shifts; when p is misaligned, the bytes past
// the last whole word come from a 2- (and/or 1-) byte load, so nothing beyond p + 4N is read. A2: p is known
// to be 2-byte aligned (formats with even block sizes), which leaves one case for that tail.
__device__ __forceinline__ u32 ld8(const u8* p) { return __ldg(p); }
__device__ __forceinline__ u32 ld16(const u8* p) { return __ldg(reinterpret_cast<const unsigned short*>(p)); }
__device__ __forceinline__ u32 ld32(const u8* p) { return __ldg(reinterpret_cast<const unsigned int*>(p)); }
__device__ __forceinline__ uint2 ld64(const u8* p) { return __ldg(reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ uint4 ld128(const u8* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
// The byte at p if c, else 0: a predicated load (lanes that differ in c do not branch apart).
__device__ __forceinline__ u32 ld8_if(const u8* p, bool c) {
    u32 v = 0;
    asm("{ .reg .pred q; setp.ne.u32 q, %2, 0; @q ld.global.nc.u8 %0, [%1]; }" : "+r"(v) : "l"(p), "r"((u32)c));
    return v;
}

template <int N, bool A2>
__device__ __forceinline__ void ld_words(const u8* p, u32 (&v)[N]) {
    const size_t a = reinterpret_cast<size_t>(p);
    const u8* base = reinterpret_cast<const u8*>(a & ~(size_t)3);
    const u32 sh = (u32)(a & 3) * 8;
    u32 w[N + 1];
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = ld32(base + 4 * i);
    const u8* t = base + 4 * N;   // the tail: sh/8 bytes
    if (A2) w[N] = sh ? ld16(t) : 0u;
    else w[N] = sh == 0 ? 0u : sh == 8 ? ld8(t) : sh == 16 ? ld16(t) : (ld16(t) | ld8(t + 2) << 16);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = __funnelshift_r(w[i], w[i + 1], sh);
}

__device__ __forceinline__ float h2f(u32 bits) { return __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu))); }

// The 4 fifth bits (bit 0..3 of t) moved to bit 4 of bytes 0..3.
__device__ __forceinline__ u32 bits_to_bytes4(u32 t) { return (((t & 15u) * 0x00204081u) & 0x01010101u) << 4; }

// The staged input, in shared memory: XB-bit codes (XB = 8 or 16) of each 32-value block, its fp32 scale, and the
// code sums of each 16-value half block. Codes of 4 consecutive values ("group" j) are one int (XB = 8) or two.
// PL ("pair layout", 16-bit codes only, for kernels whose parts are all MXFP4): within each 32-value block, 32-bit
// word n (n < 16) holds the codes of values n and n + 16, the two that one byte of an MXFP4 block encodes (low and
// high nibble); block b's 64 bytes start at 16-byte slot 9 (b/2) + 4 (b%2) (a 16-byte pad after every second block
// instead of swz16: the 8 blocks that a quarter warp reads land on 8 different bank groups, and the slots of one
// block are consecutive, so their addresses are one base plus constant offsets).
template <int XB, bool PL = false>
struct XS {
    static constexpr int xb = XB; static constexpr bool pl = PL;
    u32 t0;            // 0x03020100 (the MXFP4 table's first word), computed at run time: see smem_layout
    const int* q;      // [K*XB/32] codes, packed; group j at q[j] (XB = 8), or in 16-byte slot swz16(j/2) (XB = 16)
    const float* d;    // [K/32] scale of each 32-value block
    const int* s16;    // [K/16] sum of the codes of each 16-value half block
    const float* f;    // [K]    fp32 copy (float weight types)
};

// 16 weight codes (4 words of int8, values 4j..4j+15) . the staged codes of groups j..j+3 (j a multiple of 4).
// XB = 8: four __dp4a (4 multiply-adds each). XB = 16: eight __dp2a, each 2 int16 x 2 int8 multiply-adds (lo: bytes
// 0-1 of the weight word, hi: bytes 2-3): twice the instructions and shared-memory reads, 256 times finer input.
__device__ __forceinline__ int dot4x4(const u32* a, const XS<8>& xs, int j, int s) {
    const int4 v = *reinterpret_cast<const int4*>(xs.q + j);
    s = __dp4a((int)a[0], v.x, s); s = __dp4a((int)a[1], v.y, s);
    s = __dp4a((int)a[2], v.z, s); return __dp4a((int)a[3], v.w, s);
}
// 16-bit codes: 16-byte slot s (8 codes, groups 2s and 2s+1) lives at slot swz16(s). Without the swizzle, the 8
// threads of a quarter warp reading neighbouring chunks (64 bytes apart, or 128 in the K-quants) hit the same 4
// of the 32 banks: a 4-way conflict that made shared memory, not HBM, the limit (151936 x 896 Q8_0: 2.4 against
// 3.4 TB/s). XOR-ing bits 0-2 of s with a function of bits 3-4 ({0, 1, 7, 6}, found by exhaustive search over the
// access patterns of the 32-value types, Q4_K/Q5_K and Q6_K) makes every such load conflict-free.
__device__ __forceinline__ int swz16(int s) { return s ^ ((0x6710 >> (4 * ((s >> 3) & 3))) & 7); }
// The pair layout's first 16-byte slot of 32-value block b.
__device__ __forceinline__ int pl_slot(int b) { return 9 * (b >> 1) + 4 * (b & 1); }

__device__ __forceinline__ int dot4x4(const u32* a, const XS<16>& xs, int j, int s) {
    const int4 v = *reinterpret_cast<const int4*>(xs.q + 4 * swz16(j >> 1)),
               w = *reinterpret_cast<const int4*>(xs.q + 4 * swz16((j >> 1) + 1));
    s = __dp2a_lo(v.x, (int)a[0], s); s = __dp2a_hi(v.y, (int)a[0], s);
    s = __dp2a_lo(v.z, (int)a[1], s); s = __dp2a_hi(v.w, (int)a[1], s);
    s = __dp2a_lo(w.x, (int)a[2], s); s = __dp2a_hi(w.y, (int)a[2], s);
    s = __dp2a_lo(w.z, (int)a[3], s); return __dp2a_hi(w.w, (int)a[3], s);
}

// ---------------------------------------------------------------------------------------------------------
// Block types. QK values per block, BYTES per block, CV values per chunk, Q8X: uses the 8-bit staged input.

struct tQ8_0 {    // 34 B: fp16 d, 32 int8 q.                         value = d*q
    static constexpr int QK = 32, BYTES = 34, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[8]; u32 d; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + c * 34; Raw r; r.d = ld16(b); ld_words<8, true>(b + 2, r.q); return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        const int s = dot4x4(r.q + 4, xs, 8 * c + 4, dot4x4(r.q, xs, 8 * c, 0));
        return h2f(r.d) * xs.d[c] * (float)s;
    }
};

// The offset types (Q4_0, Q5_0, Q6_K: value = d * (q - o)) take the unsigned codes into the integer dot product and
// subtract o times the staged input's half-block code sums: Σ (q - o) x = Σ q x - o Σ x, the same integer, without
// a per-byte subtraction (3 instructions a word: 24 of a chunk's ~120 for Q5_0, Qwen's most common type).
struct tQ4_0 {    // 18 B: fp16 d, 16 B nibbles (low: values 0-15, high: 16-31).   value = d*(q-8)
    static constexpr int QK = 32, BYTES = 18, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[4]; u32 d; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + c * 18; Raw r; r.d = ld16(b); ld_words<4, true>(b + 2, r.q); return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) { lo[i] = r.q[i] & 0x0f0f0f0fu; hi[i] = (r.q[i] >> 4) & 0x0f0f0f0fu; }
        const int s = dot4x4(hi, xs, 8 * c + 4, dot4x4(lo, xs, 8 * c, 0)) - 8 * (xs.s16[2 * c] + xs.s16[2 * c + 1]);
        return h2f(r.d) * xs.d[c] * (float)s;
    }
};

struct tQ4_1 {    // 20 B: fp16 d, fp16 m, 16 B nibbles.             value = d*q + m
    static constexpr int QK = 32, BYTES = 20, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[4]; u32 dm; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + c * 20; Raw r; r.dm = ld32(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) r.q[i] = ld32(b + 4 + 4 * i);
        return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) { lo[i] = r.q[i] & 0x0f0f0f0fu; hi[i] = (r.q[i] >> 4) & 0x0f0f0f0fu; }
        const int s = dot4x4(hi, xs, 8 * c + 4, dot4x4(lo, xs, 8 * c, 0));
        const int sx = xs.s16[2 * c] + xs.s16[2 * c + 1];
        return xs.d[c] * (h2f(r.dm) * (float)s + h2f(r.dm >> 16) * (float)sx);
    }
};

struct tQ5_0 {    // 22 B: fp16 d, qh (bit j = fifth bit of value j), 16 B nibbles.   value = d*(q-16)
    static constexpr int QK = 32, BYTES = 22, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 w[5]; u32 d; };   // w[0] = qh, w[1..4] = qs
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + c * 22; Raw r; r.d = ld16(b); ld_words<5, true>(b + 2, r.w); return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        u32 lo[4], hi[4];
        const u32 qh = r.w[0];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (r.w[1 + i] & 0x0f0f0f0fu) | bits_to_bytes4(qh >> (4 * i));
            hi[i] = ((r.w[1 + i] >> 4) & 0x0f0f0f0fu) | bits_to_bytes4(qh >> (16 + 4 * i));
        }
        const int s = dot4x4(hi, xs, 8 * c + 4, dot4x4(lo, xs, 8 * c, 0)) - 16 * (xs.s16[2 * c] + xs.s16[2 * c + 1]);
        return h2f(r.d) * xs.d[c] * (float)s;
    }
};

struct tQ5_1 {    // 24 B: fp16 d, fp16 m, qh, 16 B nibbles.         value = d*q + m
    static constexpr int QK = 32, BYTES = 24, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[4]; u32 dm, qh; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + c * 24; Raw r;
        const uint2 a = ld64(b), q0 = ld64(b + 8), q1 = ld64(b + 16);   // 8-byte aligned: 24 B blocks
        r.dm = a.x; r.qh = a.y; r.q[0] = q0.x; r.q[1] = q0.y; r.q[2] = q1.x; r.q[3] = q1.y;
        return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (r.q[i] & 0x0f0f0f0fu) | bits_to_bytes4(r.qh >> (4 * i));
            hi[i] = ((r.q[i] >> 4) & 0x0f0f0f0fu) | bits_to_bytes4(r.qh >> (16 + 4 * i));
        }
        const int s = dot4x4(hi, xs, 8 * c + 4, dot4x4(lo, xs, 8 * c, 0));
        const int sx = xs.s16[2 * c] + xs.s16[2 * c + 1];
        return xs.d[c] * (h2f(r.dm) * (float)s + h2f(r.dm >> 16) * (float)sx);
    }
};

// MXFP4 code -> int8 value {0,1,2,3,4,6,8,12, 0,-1,-2,-3,-4,-6,-8,-12}, 8 codes (one word) at a time: byte_perm
// looks up 4 codes (the 4 nibbles of a 16-bit selector) in the positive and the negative half of the table,
// a third byte_perm keeps, per byte, the half that bit 3 of the code names. The word's nibbles alternate
// low/high, so the results are de-interleaved into the values of the low nibbles and of the high nibbles.
__device__ __forceinline__ void mxfp4_lookup(u32 q, u32& lo, u32& hi) {
    const u32 pos0 = 0x03020100u, pos1 = 0x0c080604u, neg0 = 0xfdfeff00u, neg1 = 0xf4f8fafcu;
    u32 t[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
        const u32 sel = q >> (16 * k);
        const u32 p = __byte_perm(pos0, pos1, sel), n = __byte_perm(neg0, neg1, sel);
        t[k] = __byte_perm(p, n, 0x3210u | ((sel & 0x8888u) >> 1));
    }
    lo = __byte_perm(t[0], t[1], 0x6420u);
    hi = __byte_perm(t[0], t[1], 0x7531u);
}

// The pair layout's lookup: the 4 codes in the low 16 bits of q (a word's bytes 0-1: values n, n+16, n+1, n+17)
// -> 4 int8, in that order, so they meet the staged pairs (n, n+16), (n+1, n+17) with no de-interleaving. PTX prmt
// (not __byte_perm, which masks it off) treats bit 3 of a selector nibble -- the code's sign -- as "replicate the
// sign of the chosen byte": with the magnitudes {0,1,2,3,4,6,8,12} as the table (sign bits 0), one prmt gives the
// positive codes' values and 0 for the negative ones, and one on q ^ 0x8888 the negative codes' magnitudes and 0
// for the others; 0x80 - m (no byte borrows: m <= 12) then ^ 0x80 is -m per byte. 7 instructions per 4 values, the
// shift and the xor shared by a word's two halves.
__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 s) {
    u32 d; asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s)); return d;
}
// m0: the table's first word, 0x03020100, in a register (see dot); the second is an immediate operand of PRMT.
__device__ __forceinline__ u32 mxfp4_pairs(u32 q, u32 qn, u32 m0) {
    const u32 m1 = 0x0c080604u;
    return prmt(m0, m1, q) | ((0x80808080u - prmt(m0, m1, qn)) ^ 0x80808080u);
}

struct tMXFP4 {   // 17 B: E8M0 exponent e, 16 B E2M1 nibbles.      value = MXFP4_VALUES[q] * 2^(e-128)
    static constexpr int QK = 32, BYTES = 17, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[4]; u32 e; };
    // The block's 17 bytes as the 5 aligned words that cover them (o = its offset in the first word, 0..3): four
    // whole words, and the fifth whole (WHOLE) or only its first o + 1 bytes (predicated byte loads: nothing past the
    // block is read, and the lanes of a warp, whose blocks have all four offsets, never branch apart on it).
    template <bool WHOLE> static __device__ __forceinline__ Raw load_words(const u8* row, int c) {
        const size_t a = reinterpret_cast<size_t>(row + c * 17);
        const u8* base = reinterpret_cast<const u8*>(a & ~(size_t)3);
        const u32 o = (u32)(a & 3);
        u32 w[5];
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = ld32(base + 4 * i);
        const u8* t = base + 16;
        w[4] = WHOLE ? ld32(t) : ld8(t) | ld8_if(t + 1, o >= 1) << 8 | ld8_if(t + 2, o >= 2) << 16 | ld8_if(t + 3, o >= 3) << 24;
        Raw r; r.e = (w[0] >> (8 * o)) & 0xffu;
#pragma unroll
        for (int i = 0; i < 4; ++i) r.q[i] = __funnelshift_rc(w[i], w[i + 1], 8 * o + 8);   // o = 3: w[i + 1]
        return r;
    }
    static __device__ __forceinline__ Raw load(const u8* row, int c) { return load_words<false>(row, c); }
    // times 2^(e-128) as two normal powers of two: CuPy compiles with -ftz=true, which would flush the
    // subnormal 2^(e-128) of e < 2 (and its product with d) to zero.
    static __device__ __forceinline__ float scaled(int s, u32 e, float d) {
        const int k = (int)e - 128, k1 = k >> 1;
        return (float)s * d * __uint_as_float((u32)(k1 + 127) << 23) * __uint_as_float((u32)(k - k1 + 127) << 23);
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) mxfp4_lookup(r.q[i], lo[i], hi[i]);
        return scaled(dot4x4(hi, xs, 8 * c + 4, dot4x4(lo, xs, 8 * c, 0)), r.e, xs.d[c]);
    }
};

// MXFP4 for kernels whose parts are all MXFP4 (the experts of a mixture), with the pair layout of the 16-bit staged
// input: ~80 instructions per 32 values in dot where tMXFP4 takes ~140 (SASS, tools/sass). Its load reads the five
// aligned words covering a block whole: the launcher picks this type only when every part's bytes end on a 4-byte
// boundary, so the few bytes beyond a block are the next block's, or the next row's, never past the part.
struct tMXFP4P : tMXFP4 {
    static __device__ __forceinline__ Raw load(const u8* row, int c) { return load_words<true>(row, c); }
    // The block's integer sum against its staged x, xb = the block's slots in the pair layout (xs.q + pl_slot(c)):
    // word i of the codes (bytes 4i..4i+3) meets 16-byte slot i, 8 __dp2a per 2 words. (expert_mv.cu uses it too.)
    static __device__ __forceinline__ int isum(const Raw& r, const int4* xb, u32 m0) {
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int4 v = xb[i];
            const u32 qn = r.q[i] ^ 0x88888888u;
            const u32 w0 = mxfp4_pairs(r.q[i], qn, m0), w1 = mxfp4_pairs(r.q[i] >> 16, qn >> 16, m0);
            s = __dp2a_lo(v.x, (int)w0, s); s = __dp2a_hi(v.y, (int)w0, s);
            s = __dp2a_lo(v.z, (int)w1, s); s = __dp2a_hi(v.w, (int)w1, s);
        }
        return s;
    }
    static __device__ __forceinline__ float dot(const Raw& r, const XS<16, true>& xs, int c) {
        return scaled(isum(r, reinterpret_cast<const int4*>(xs.q) + pl_slot(c), xs.t0), r.e, xs.d[c]);
    }
};

// Which block types read the pair layout when a kernel's parts are all of them (with 16-bit codes).
template <class T> struct pair_layout { static constexpr bool value = false; };
template <> struct pair_layout<tMXFP4P> { static constexpr bool value = true; };

// Q4_K/Q5_K: 6-bit scale and min of sub-block s from the 12 packed bytes (words a, b, c).
__device__ __forceinline__ void k_scale_min(const u32 (&sc)[3], int s, int& d, int& m) {
    if (s < 4) { d = (sc[0] >> (8 * s)) & 63; m = (sc[1] >> (8 * s)) & 63; }
    else {
        const int k = 8 * (s - 4);
        d = ((sc[2] >> k) & 15) | (((sc[0] >> k) >> 6) & 3) << 4;
        m = ((sc[2] >> k) >> 4 & 15) | (((sc[1] >> k) >> 6) & 3) << 4;
    }
}

// A K-quant chunk: 16 bytes of qs = 16 values of sub-block 2p (low nibbles) and 16 of sub-block 2p+1 (high),
// chunk c of a row: super-block c/8, p = (c%8)/2, half h = c%2 (values 16h..16h+15 of each sub-block).
struct tQ4_K {    // 144 B: fp16 d, dmin, 12 B scales, 128 B nibbles.   value = (d*sc)*q - dmin*m
    static constexpr int QK = 256, BYTES = 144, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[4]; u32 dm; u32 sc[3]; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + (c >> 3) * 144; const int p = (c >> 1) & 3, h = c & 1; Raw r;
        r.dm = ld32(b); r.sc[0] = ld32(b + 4); r.sc[1] = ld32(b + 8); r.sc[2] = ld32(b + 12);
        const uint4 v = ld128(b + 16 + 32 * p + 16 * h);   // 16-byte aligned: 144 B blocks
        r.q[0] = v.x; r.q[1] = v.y; r.q[2] = v.z; r.q[3] = v.w;
        return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        const int p = (c >> 1) & 3, h = c & 1, xb = (c >> 3) * 8 + 2 * p;   // x block of sub-block 2p
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) { lo[i] = r.q[i] & 0x0f0f0f0fu; hi[i] = (r.q[i] >> 4) & 0x0f0f0f0fu; }
        const int s0 = dot4x4(lo, xs, 8 * xb + 4 * h, 0), s1 = dot4x4(hi, xs, 8 * xb + 8 + 4 * h, 0);
        int d0, m0, d1, m1; k_scale_min(r.sc, 2 * p, d0, m0); k_scale_min(r.sc, 2 * p + 1, d1, m1);
        const float d = h2f(r.dm), dmin = h2f(r.dm >> 16);
        return xs.d[xb] * ((d * d0) * s0 - (dmin * m0) * xs.s16[2 * xb + h])
             + xs.d[xb + 1] * ((d * d1) * s1 - (dmin * m1) * xs.s16[2 * xb + 2 + h]);
    }
};

struct tQ5_K {    // 176 B: fp16 d, dmin, 12 B scales, 32 B qh (bit s of qh[l]: value l of sub-block s), 128 B qs
    static constexpr int QK = 256, BYTES = 176, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 q[4]; u32 qh[4]; u32 dm; u32 sc[3]; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + (c >> 3) * 176; const int p = (c >> 1) & 3, h = c & 1; Raw r;
        r.dm = ld32(b); r.sc[0] = ld32(b + 4); r.sc[1] = ld32(b + 8); r.sc[2] = ld32(b + 12);
        const uint4 u = ld128(b + 16 + 16 * h), v = ld128(b + 48 + 32 * p + 16 * h);   // 176 B: 16-aligned
        r.qh[0] = u.x; r.qh[1] = u.y; r.qh[2] = u.z; r.qh[3] = u.w;
        r.q[0] = v.x; r.q[1] = v.y; r.q[2] = v.z; r.q[3] = v.w;
        return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        const int p = (c >> 1) & 3, h = c & 1, xb = (c >> 3) * 8 + 2 * p;
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (r.q[i] & 0x0f0f0f0fu) | ((r.qh[i] >> (2 * p)) & 0x01010101u) << 4;
            hi[i] = ((r.q[i] >> 4) & 0x0f0f0f0fu) | ((r.qh[i] >> (2 * p + 1)) & 0x01010101u) << 4;
        }
        const int s0 = dot4x4(lo, xs, 8 * xb + 4 * h, 0), s1 = dot4x4(hi, xs, 8 * xb + 8 + 4 * h, 0);
        int d0, m0, d1, m1; k_scale_min(r.sc, 2 * p, d0, m0); k_scale_min(r.sc, 2 * p + 1, d1, m1);
        const float d = h2f(r.dm), dmin = h2f(r.dm >> 16);
        return xs.d[xb] * ((d * d0) * s0 - (dmin * m0) * xs.s16[2 * xb + h])
             + xs.d[xb + 1] * ((d * d1) * s1 - (dmin * m1) * xs.s16[2 * xb + 2 + h]);
    }
};

// Q6_K chunk c: super-block c/8, j = c%8: half hf = j/4, group pair gp = (j/2)%2, l-half jj = j%2. It covers
// 16 values of group gp (low nibbles of ql) and 16 of group gp+2 (high nibbles), l in [16jj, 16jj+16).
struct tQ6_K {    // 210 B: ql 128, qh 64, int8 scales 16, fp16 d.   value = (d*sc)*(q-32)
    static constexpr int QK = 256, BYTES = 210, CV = 32; static constexpr bool Q8X = true;
    struct Raw { u32 ql[4]; u32 qh[4]; u32 sd; };   // sd: scale(gp) | scale(gp+2) << 8 | d << 16
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + (c >> 3) * 210; const int j = c & 7, hf = j >> 2, gp = (j >> 1) & 1, jj = j & 1;
        Raw r;
        ld_words<4, true>(b + 64 * hf + 32 * gp + 16 * jj, r.ql);
        ld_words<4, true>(b + 128 + 32 * hf + 16 * jj, r.qh);
        const u8* sc = b + 192 + 8 * hf + 2 * gp + jj;
        r.sd = ld8(sc) | ld8(sc + 4) << 8 | ld16(b + 208) << 16;
        return r;
    }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        const int j = c & 7, hf = j >> 2, gp = (j >> 1) & 1, jj = j & 1;
        const int xb = (c >> 3) * 8 + 4 * hf + gp;   // x block of group gp; group gp+2 is xb + 2
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (r.ql[i] & 0x0f0f0f0fu) | ((r.qh[i] >> (2 * gp)) & 0x03030303u) << 4;
            hi[i] = ((r.ql[i] >> 4) & 0x0f0f0f0fu) | ((r.qh[i] >> (2 * gp + 4)) & 0x03030303u) << 4;
        }
        // 16 values each: half jj of x block xb (group gp) and of block xb + 2 (group gp + 2), offset 32
        const int s0 = dot4x4(lo, xs, 8 * xb + 4 * jj, 0) - 32 * xs.s16[2 * xb + jj];
        const int s1 = dot4x4(hi, xs, 8 * xb + 16 + 4 * jj, 0) - 32 * xs.s16[2 * xb + 4 + jj];
        const float d = h2f(r.sd >> 16);
        const int sc0 = (int)(signed char)(r.sd & 255), sc1 = (int)(signed char)((r.sd >> 8) & 255);
        return d * (xs.d[xb] * ((float)sc0 * (float)s0) + xs.d[xb + 2] * ((float)sc1 * (float)s1));
    }
};

// Float types: a chunk is 16 bytes of weights (4 F32 or 8 F16/BF16 values), x read as fp32 from shared memory.
struct tF32 {
    static constexpr int QK = 1, BYTES = 4, CV = 4; static constexpr bool Q8X = false;
    struct Raw { uint4 v; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) { Raw r; r.v = ld128(row + 16 * c); return r; }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        const float4 x = *reinterpret_cast<const float4*>(xs.f + 4 * c);
        return __uint_as_float(r.v.x) * x.x + __uint_as_float(r.v.y) * x.y
             + __uint_as_float(r.v.z) * x.z + __uint_as_float(r.v.w) * x.w;
    }
};

template <bool BF>
struct tHalfLike {   // F16 (BF = false) or BF16 (BF = true): 8 values per 16-byte chunk
    static constexpr int QK = 1, BYTES = 2, CV = 8; static constexpr bool Q8X = false;
    struct Raw { uint4 v; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) { Raw r; r.v = ld128(row + 16 * c); return r; }
    static __device__ __forceinline__ float lo(u32 w) { return BF ? __uint_as_float(w << 16) : h2f(w); }
    static __device__ __forceinline__ float hi(u32 w) { return BF ? __uint_as_float(w & 0xffff0000u) : h2f(w >> 16); }
    template <class X> static __device__ __forceinline__ float dot(const Raw& r, const X& xs, int c) {
        const float4 a = *reinterpret_cast<const float4*>(xs.f + 8 * c);
        const float4 b = *reinterpret_cast<const float4*>(xs.f + 8 * c + 4);
        return lo(r.v.x) * a.x + hi(r.v.x) * a.y + lo(r.v.y) * a.z + hi(r.v.y) * a.w
             + lo(r.v.z) * b.x + hi(r.v.z) * b.y + lo(r.v.w) * b.z + hi(r.v.w) * b.w;
    }
};
typedef tHalfLike<false> tF16;
typedef tHalfLike<true> tBF16;

// A block type with its batch size U (chunks a thread loads before computing).
template <class T, int U> struct cfg { typedef T type; static constexpr int u = U; };

// ---------------------------------------------------------------------------------------------------------
// Input staging: x (fp32, global, any 4-byte alignment) -> shared memory. Each thread first loads all its
// float4 groups of a pass (16-byte loads when x is 16-byte aligned), so the pass costs one L2 round trip.
__device__ __forceinline__ float4 ld_x4(const float* __restrict__ x, int i, bool vec) {
    return vec ? __ldg(reinterpret_cast<const float4*>(x) + i) : make_float4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
}

// What a kernel stages (its template parameter IN, a compile-time choice: each input path is compiled only into the
// kernels that use it, which keeps the others' code as small as it was without them; orcd.cuda_matvec.V2_INPUTS):
// IN_X x as it is; IN_NORM x * nw, the RMSNorm fused (its 1/rms applied to the products: norm_scale); IN_ACT
// gated_act(act, gate, up) of x = [gate (K) | up (K)] (the feed-forward activation fused into the staging, as the act
// kernel computes it);
// IN_STAGED x is already staged: the 16-bit codes, scales and half-block sums that a gate|up kernel with OUT_GLU
// wrote (glu_stage_block), copied into shared memory as they are; IN_ATTN the decode attention whose output x is
// (attention_stage.cuh: computed in the CTA at a short context, norm_w pointing to its AttnDesc; else x as it is).
// IN_MERGE x of the decode attention's splits, merged in each CTA (attention_stage.cuh: norm_w pointing to its MergeDesc).
enum { IN_X = 0, IN_NORM = 1, IN_ACT = 2, IN_STAGED = 3, IN_ATTN = 4, IN_MERGE = 5 };
// What a kernel writes (its template parameter OUT): OUT_Y y = W x (+ b) (+ y), row by row; OUT_GLU the rows are
// (gate, up) pairs (Part.stride: the byte offset of the up rows from the gate rows), and each tile of 32 pairs
// becomes one 32-value block of the next product's staged input: gated_act(act, gate, up) quantised as stage_q8 does.
enum { OUT_Y = 0, OUT_GLU = 1 };

// Group i's 4 staged values: x[i] * nw[i] (IN_NORM, the sum of the squares of x added to ss: the RMSNorm's 1/rms
// is applied to the products instead, see norm_scale), the activation (IN_ACT), or x as it is (IN_X; IN_ATTN: x in
// shared memory, 16-byte aligned, read by a generic load).
template <int IN>
__device__ __forceinline__ float4 ld_x4_norm(const float* __restrict__ x, const float* __restrict__ nw, float& ss,
                                             int act, int K, int i, bool vec) {
    if constexpr (IN == IN_ATTN) return reinterpret_cast<const float4*>(x)[i];
    float4 v = ld_x4(x, i, vec);
    if constexpr (IN == IN_ACT) {
        const float4 u = ld_x4(x + K, i, vec);
        v.x = gated_act(act, v.x, u.x); v.y = gated_act(act, v.y, u.y);
        v.z = gated_act(act, v.z, u.z); v.w = gated_act(act, v.w, u.w);
    } else if constexpr (IN == IN_NORM) {
        const float4 w = ld_x4(nw, i, (reinterpret_cast<size_t>(nw) & 15) == 0);
        ss = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, ss))));
        v.x *= w.x; v.y *= w.y; v.z *= w.z; v.w *= w.w;
    }
    return v;
}

template <int NT, int XB, bool PL, int IN>
__device__ __forceinline__ void stage_q8(const float* __restrict__ x, int K, int* q, float* d, int* s16,
                                         const float* __restrict__ nw, float& ss, int act, const float4* pre = nullptr) {
    constexpr float QMAX = XB == 8 ? 127.f : 32767.f;
    constexpr int P = 4;           // float4 groups per thread per pass; 8 consecutive threads share a 32-value block
    const int n4 = K / 4;
    const bool vec = (reinterpret_cast<size_t>(x) & 15) == 0;
    for (int i0 = 0; i0 < n4; i0 += P * NT) {
        float4 v[P];
#pragma unroll
        for (int j = 0; j < P; ++j) {
            const int i = i0 + j * NT + threadIdx.x;
            v[j] = pre ? (j == 0 ? *pre : make_float4(0.f, 0.f, 0.f, 0.f))     // pre: K <= 4 NT, one pass
                 : i < n4 ? ld_x4_norm<IN>(x, nw, ss, act, K, i, vec) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int j = 0; j < P; ++j) {
            if (i0 + j * NT >= n4) break;                      // uniform over the CTA
            const int i = i0 + j * NT + threadIdx.x;
            float amax = fmaxf(fmaxf(fabsf(v[j].x), fabsf(v[j].y)), fmaxf(fabsf(v[j].z), fabsf(v[j].w)));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
            const float dd = amax / QMAX;                      // IEEE division, as numpy
            int q0 = 0, q1 = 0, q2 = 0, q3 = 0;
            if (dd > 0.f) {                                    // round half to even, as np.rint
                q0 = __float2int_rn(v[j].x / dd); q1 = __float2int_rn(v[j].y / dd);
                q2 = __float2int_rn(v[j].z / dd); q3 = __float2int_rn(v[j].w / dd);
            }
            int sum = q0 + q1 + q2 + q3;
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            // Pair layout: group g < 4 of a block (values 4g..4g+3) takes the codes of group g + 4 (values
            // 4g+16..4g+19, lane + 4) and writes the block's slot g: words 4g..4g+3 = (value, value + 16) pairs.
            const u32 lo01 = ((u32)q0 & 0xffffu) | (u32)q1 << 16, lo23 = ((u32)q2 & 0xffffu) | (u32)q3 << 16;
            const u32 hi01 = PL ? __shfl_xor_sync(0xffffffffu, lo01, 4) : 0u;
            const u32 hi23 = PL ? __shfl_xor_sync(0xffffffffu, lo23, 4) : 0u;
            if (i < n4) {
                if (PL) {
                    if ((i & 4) == 0)
                        reinterpret_cast<int4*>(q)[pl_slot(i >> 3) + (i & 3)] = make_int4(
                            (int)((lo01 & 0xffffu) | hi01 << 16), (int)((lo01 >> 16) | (hi01 & 0xffff0000u)),
                            (int)((lo23 & 0xffffu) | hi23 << 16), (int)((lo23 >> 16) | (hi23 & 0xffff0000u)));
                }
                else if (XB == 8) q[i] = (q0 & 255) | (q1 & 255) << 8 | (q2 & 255) << 16 | (q3 & 255) << 24;
                else reinterpret_cast<int2*>(q)[2 * swz16(i >> 1) + (i & 1)] = make_int2((int)(((u32)q0 & 0xffffu) | (u32)q1 << 16),
                                                              (int)(((u32)q2 & 0xffffu) | (u32)q3 << 16));
                if ((i & 3) == 0) s16[i >> 2] = sum;
                if ((i & 7) == 0) d[i >> 3] = dd;
            }
        }
    }
}

// The staged input of K values in global memory (IN_STAGED, OUT_GLU): [K int16 codes][K/32 fp32 scales]
// [K/16 int32 half-block sums] (Python mirror: orcd.cuda_matvec.staged_size, in float32 words).
struct Staged {
    short* q; float* d; int* s16;
    __device__ __forceinline__ Staged(const void* p, int K)
        : q(reinterpret_cast<short*>(const_cast<void*>(p))), d(reinterpret_cast<float*>(q + K)), s16(reinterpret_cast<int*>(d + K / 32)) {}
};

// IN_STAGED: copy a staged input into shared memory (16-byte slot s of codes to slot swz16(s), as stage_q8 puts it);
// each thread issues all its loads of a pass before it stores.
template <int NT>
__device__ __forceinline__ void stage_copy(const void* src, int K, int* q, float* d, int* s16) {
    const Staged g(src, K);
    const int ns = K / 8, nd = K / 32;
    const int4* gq = reinterpret_cast<const int4*>(g.q);
    for (int s0 = 0; s0 < ns; s0 += 2 * NT) {
        const int s = s0 + threadIdx.x, t = s + NT;
        const int4 z = make_int4(0, 0, 0, 0), a = s < ns ? __ldg(gq + s) : z, b = t < ns ? __ldg(gq + t) : z;
        if (s < ns) reinterpret_cast<int4*>(q)[swz16(s)] = a;
        if (t < ns) reinterpret_cast<int4*>(q)[swz16(t)] = b;
    }
    for (int i = threadIdx.x; i < 3 * nd; i += NT) {
        if (i < nd) d[i] = __ldg(g.d + i);
        else s16[i - nd] = __ldg(g.s16 + i - nd);
    }
}

// OUT_GLU: one lane per value of 32-value block b (v: lane l's value, value 32b + l): the block's 16-bit codes, its
// scale and the sums of its two 16-value halves, as stage_q8 computes them (amax / 32767, round half to even).
__device__ __forceinline__ void glu_stage_block(float v, int b, int K, void* out) {
    const int l = threadIdx.x & 31;
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float dd = amax / 32767.f;                       // IEEE division, as numpy
    const int q = dd > 0.f ? __float2int_rn(v / dd) : 0;
    int s = q;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const Staged g(out, K);
    g.q[32 * b + l] = (short)q;
    if (l == 0) g.d[b] = dd;
    if ((l & 15) == 0) g.s16[2 * b + (l >> 4)] = s;
}

// The RMSNorm's scale, applied to the products rather than to x: W (x / rms · nw) = (W (x · nw)) / rms, and the
// staged codes of x · nw are those of x / rms · nw (a block's codes do not change when all its values are scaled, up to
// fp32 rounding). So the staging needs no reduction over the CTA before it quantises: each warp leaves the sum of
// squares of its values in ss_part (its lane 0), and after the barrier that ends the staging every thread forms
// 1 / sqrt(Σ x² / K + eps) from the NW sums, which only the epilogue needs (off the path from x to the products).
__device__ __forceinline__ void ss_store(float ss, float* ss_part) {
    ss = warp_sum(ss);                                       // (ops_common.cuh)
    if ((threadIdx.x & 31) == 0) ss_part[threadIdx.x >> 5] = ss;
}
template <int NW>
__device__ __forceinline__ float norm_scale(const float* ss_part, int K, float eps) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) t += ss_part[w];
    return 1.f / sqrtf(t / (float)K + eps);
}

// IN_NORM when K <= 4 NT (each thread at most one group of 4 values): x and the norm weights loaded once, x · nw
// handed to stage_q8 from registers and the sum of squares of x added to ss.
template <int NT>
__device__ __forceinline__ float4 normed_group(const float* __restrict__ x, int K, const float* __restrict__ nw,
                                               float& ss) {
    const int i = threadIdx.x, n4 = K / 4;
    const bool vx = (reinterpret_cast<size_t>(x) & 15) == 0, vw = (reinterpret_cast<size_t>(nw) & 15) == 0;
    const float4 z = make_float4(0.f, 0.f, 0.f, 0.f), v = i < n4 ? ld_x4(x, i, vx) : z, w = i < n4 ? ld_x4(nw, i, vw) : z;
    ss = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, ss))));
    return make_float4(v.x * w.x, v.y * w.y, v.z * w.z, v.w * w.w);
}

template <int NT, int IN>
__device__ __forceinline__ void stage_f32(const float* __restrict__ x, int K, float* f, const float* __restrict__ nw,
                                          float& ss, int act) {
    const bool vec = (reinterpret_cast<size_t>(x) & 15) == 0;
#pragma unroll 4
    for (int i = threadIdx.x; i < K / 4; i += NT) reinterpret_cast<float4*>(f)[i] = ld_x4_norm<IN>(x, nw, ss, act, K, i, vec);
}

// Shared-memory layout (dynamic): [q: K bytes (8-bit), 2K rounded up to 128 (16-bit), or 144 bytes per two blocks
// rounded up to 128 (16-bit pair layout)][d: K/8 bytes][s16: K/4 bytes] then, 16-aligned, [f: 4K bytes].
// Python mirror: orcd.cuda_matvec._smem_bytes.
template <class X>
__device__ __forceinline__ X smem_layout(int4* base, int K, bool q8) {
    unsigned char* p = reinterpret_cast<unsigned char*>(base);
    const int qb = X::xb == 8 ? K                          // 16-bit: whole 8-slot groups, which swz16 permutes,
                 : X::pl ? (144 * ((K / 32 + 1) / 2) + 127) & ~127 : (2 * K + 127) & ~127;   // or padded pairs
    X xs;
    // The value of K (> 0) makes t0 opaque to the compiler, which would otherwise re-materialise the constant before
    // every PRMT that reads it (16 instructions per MXFP4 chunk); as it is, it stays in a register.
    xs.t0 = 0x03020100u | (threadIdx.x & ((u32)K >> 31));   // per thread: a uniform value is copied too
    xs.q = reinterpret_cast<const int*>(p);
    xs.d = reinterpret_cast<const float*>(p + qb);
    xs.s16 = reinterpret_cast<const int*>(p + qb + K / 8);
    xs.f = reinterpret_cast<const float*>(p + (q8 ? ((qb + K / 8 + K / 4 + 15) & ~15) : 0));
    return xs;
}

#ifndef ORCD_MV_PRE           // the batches of weights a gate|up (OUT_GLU) thread loads before it waits for the kernel before:
#define ORCD_MV_PRE 2         // 2 (its second too, Session 20), or 1 (ORCD_MV_PRE=1, orcd.cuda_matvec.precompile: the loop's)
#endif

// One part of a Linear (48 bytes; Python mirror: orcd.cuda_matvec.PART_DTYPE).
struct Part {
    const u8* w;     // the part's blocks, (rows, K) row-major
    int rows;        // its rows
    int row0;        // where they start in y (and in the bias)
    int tile_end;    // its tiles are [previous part's tile_end, tile_end)
    int tpr;         // G: threads per row, a power of two <= NT
    int slot;        // which cfg of the kernel's list
    int route;       // -1, or j: the blocks are at w + route_ids[j] * stride (expert route_ids[j] of a mixture)
    int xoff;        // the part reads x + xoff (the parts of one CTA's tiles are staged one after the other)
    int ctas;        // 0: the CTAs take the tiles of all parts in turn (tile T: CTA T mod gridDim.x); else the part's own
                     // CTAs: [ctas & 0xffff, + (ctas >> 16)), tile t to CTA first + t mod count (orcd.cuda_matvec.assign_ctas)
    int prefetch;    // 1: before it waits for the kernel before it, the CTA asks L2 for all the bytes of its tiles (a
                     // small Linear, whose later batches would otherwise each wait a DRAM round trip after the staging)
    int pad_;
    long long stride;
};

// Diagnostics, compiled in only with -DORCD_TRACE (ORCD_TRACE=1: orcd.cuda_matvec.precompile; read by
// scripts/step_timeline.py --trace): thread 0 of each CTA stamps the global timer (ns) when the CTA starts (0), when
// its wait for the kernel before returns (1), when its staged x is ready (2) and when it is done (3), then appends
// [K, rows (all parts), t0, t1, t2, t3] to mv_trace.
#ifdef ORCD_TRACE
#define MV_TRACE_CAP 65536
extern "C" {                                                // unmangled: RawModule.get_global finds them by name
__device__ unsigned long long mv_trace[MV_TRACE_CAP][6];
__device__ unsigned int mv_trace_n;
}
__shared__ unsigned long long mv_t[4];
#define MV_STAMP(i) do { if (threadIdx.x == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(mv_t[i])); } while (0)
#else
#define MV_STAMP(i) do {} while (0)
#endif

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p)); }

// Every 128-byte line of [b, b + n) into L2, the CTA's threads taking lines in turn.
template <int NT>
__device__ __forceinline__ void prefetch_range(const u8* b, size_t n) {
    const size_t a = reinterpret_cast<size_t>(b) & ~(size_t)127, end = reinterpret_cast<size_t>(b) + n;
    for (size_t o = a + (size_t)threadIdx.x * 128; o < end; o += (size_t)NT * 128) prefetch_l2(reinterpret_cast<const void*>(o));
}

// Sum over the G threads of a row group; the result is complete in the group's first thread.
template <int NW>
__device__ __forceinline__ float group_sum(float v, int G, float* red) {
    const int w = G < 32 ? G : 32;
#pragma unroll                      // the same shuffles in the same order as a loop from w/2 down, without its branches
    for (int o = 16; o > 0; o >>= 1) if (o < w) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (NW > 1 && G > 32) {
        const int warp = threadIdx.x >> 5;
        if ((threadIdx.x & 31) == 0) red[warp] = v;
        __syncthreads();
        if ((threadIdx.x & (G - 1)) == 0) {
            float s = 0.f;
            for (int i = 0; i < G / 32; ++i) s += red[warp + i];
            v = s;
        }
        __syncthreads();
    }
    return v;
}

// Where row `row` of a part starts: rows in order, or (OUT_GLU) pair row/2's gate row (even rows) or up row (odd).
template <int OUT>
__device__ __forceinline__ const u8* row_ptr(const u8* w, size_t row_bytes, int row, long long pair_stride) {
    if constexpr (OUT == OUT_GLU) return w + (size_t)(row >> 1) * row_bytes + (row & 1) * pair_stride;
    else return w + (size_t)row * row_bytes;
}

template <class T, int U, int OUT>
__device__ __forceinline__ void load_batch(typename T::Raw (&r)[U], const u8* w, size_t row_bytes, int row, int rows,
                                           int c0, int G, int nchunk, long long pair_stride) {
    if (row >= rows) return;
    const u8* rp = row_ptr<OUT>(w, row_bytes, row, pair_stride);
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (c0 + u * G < nchunk) r[u] = T::load(rp, c0 + u * G);
}

template <bool SQ8, bool SF32, int NT, int IN, class X>
__device__ __forceinline__ void stage(const float* __restrict__ x, int K, const X& xs, const float* __restrict__ nw,
                                      float* ss_part, int act) {
    int* q = const_cast<int*>(xs.q); float* d = const_cast<float*>(xs.d); int* s16 = const_cast<int*>(xs.s16);
    if constexpr (IN == IN_STAGED) {                         // already staged: a copy
        static_assert(X::xb == 16 && !X::pl && SQ8 && !SF32, "IN_STAGED: 16-bit codes, quantised block types only");
        stage_copy<NT>(x, K, q, d, s16);
        return;
    }
    if constexpr (IN == IN_ATTN) {                           // the attention here, or x (the split kernels' output)
        static_assert(SQ8 && !SF32, "IN_ATTN: quantised block types only");
        const AttnDesc& A = *reinterpret_cast<const AttnDesc*>(nw);
        const int p = A.pos[0];
        if (attn_here(A, p)) {                               // uniform over the grid
            extern __shared__ int4 mv_smem[];
            const float* o = attend_here<NT>(A, p, reinterpret_cast<unsigned char*>(mv_smem) + A.scratch);
            float ss = 0.f;
            stage_q8<NT, X::xb, X::pl, IN_ATTN>(o, K, q, d, s16, nullptr, ss, act);
        } else { float ss = 0.f; stage_q8<NT, X::xb, X::pl, IN_X>(x, K, q, d, s16, nullptr, ss, act); }
        return;
    }
    if constexpr (IN == IN_MERGE) {                          // the splits merged here: x of at most 4 NT values
        static_assert(SQ8 && !SF32, "IN_MERGE: quantised block types only");
        const float4 v = merged_x4(*reinterpret_cast<const MergeDesc*>(nw));
        float ss = 0.f;
        stage_q8<NT, X::xb, X::pl, IN_X>(x, K, q, d, s16, nullptr, ss, act, &v);
        return;
    }
    float ss = 0.f, ss_f = 0.f;                              // IN_NORM: the sum of squares of this thread's x
    if constexpr (IN == IN_NORM && SQ8 && !SF32 && !X::pl) {  // the normed staging from registers (see normed_group)
        if (K <= 4 * NT) {                                    // uniform over the CTA (a kernel argument)
            const float4 v = normed_group<NT>(x, K, nw, ss);
            stage_q8<NT, X::xb, X::pl, IN>(x, K, q, d, s16, nw, ss_f, act, &v);
            ss_store(ss, ss_part);
            return;
        }
    }
    if (SQ8) stage_q8<NT, X::xb, X::pl, IN>(x, K, q, d, s16, nw, ss, act);
    if (SF32) stage_f32<NT, IN>(x, K, const_cast<float*>(xs.f), nw, SQ8 ? ss_f : ss, act);   // x's squares once
    if constexpr (IN == IN_NORM) ss_store(ss, ss_part);
}

struct Args {
    const float* x; float* y; const float* bias; int K; int accumulate; const int* route_ids;
    const float* norm_w; float norm_eps;   // IN_NORM: the RMSNorm's weights and epsilon
    int act;                               // IN_ACT, OUT_GLU: the gated activation's kind (IN_ACT: x is [gate | up], 2K)
};

// OUT_GLU's epilogue of a tile (64 rows: NT = 64 G, G <= 16), acc complete in each row group's first thread: row groups
// 2i and 2i + 1 (lanes G apart in one warp) hold pair i's gate and up sums; their activation goes to shared memory
// (two buffers, alternating per tile, so a tile's writes never meet the previous tile's reads), then warp 0 writes
// the tile's block: the pairs of tile t are values 32t..32t+31 of the next product's input.
__device__ __forceinline__ void glu_epilogue(float acc, int G, int grp, int g, int row, const Part& P, const Args& a,
                                             int t, int parity) {
    __shared__ float glu_s[2][32];
    const float up = __shfl_down_sync(0xffffffffu, acc, G);
    const int n = P.rows >> 1;
    if (g == 0 && (grp & 1) == 0) {
        const int i = row >> 1;
        float v = 0.f;
        if (i < n) {
            float gv = acc, uv = up;
            if (a.bias) { gv += a.bias[P.row0 + i]; uv += a.bias[P.row0 + n + i]; }
            v = gated_act(a.act, gv, uv);
        }
        glu_s[parity][grp >> 1] = v;
    }
    __syncthreads();
    if (threadIdx.x < 32) glu_stage_block(glu_s[parity][threadIdx.x], t, n, a.y);
}

// All tiles of one part that this CTA owns.
template <class C, int NW, bool SQ8, bool SF32, int IN, int OUT, class X>
__device__ __forceinline__ void run_part(const Part& P0, int tile_begin, const Args& a, const X& xs, float* red,
                                         int& staged) {
    typedef typename C::type T;
    constexpr int U = C::u, NT = NW * 32;
    const int G = P0.tpr, rpc = NT / G;
    const int grp = threadIdx.x / G, g = threadIdx.x % G;
    if (OUT == OUT_GLU && rpc != 64) __trap();                // a tile is one block of 32 pairs (plan_glu plans it)
    const int nchunk = a.K / T::CV, step = G * U;
    const int nbat = (nchunk + step - 1) / step;
    const size_t row_bytes = (size_t)(a.K / T::QK) * T::BYTES;
    const int ntiles = P0.tile_end - tile_begin;
    int t, stride;                                            // this CTA's first tile of the part, and the step
    if (P0.ctas) {                                            // the part's own CTAs: a CTA seldom changes part
        stride = P0.ctas >> 16; t = (int)blockIdx.x - (P0.ctas & 0xffff);
        if (t < 0 || t >= stride) return;                     // uniform over the CTA
    } else {
        stride = gridDim.x; t = ((int)blockIdx.x - tile_begin) % stride;
        if (t < 0) t += stride;
    }
    if (t >= ntiles) return;                                  // uniform over the CTA
    Part P = P0;                                              // a routed part: route_ids were waited for (body)
    if (P.route >= 0) P.w += (size_t)a.route_ids[P.route] * (size_t)P.stride;
    else if (P.prefetch)                                      // this CTA's tiles: t, t + stride, ... (rows contiguous)
        for (int tt = t; tt < ntiles; tt += stride) {
            const int r0 = tt * rpc, r1 = min(r0 + rpc, P.rows);
            if constexpr (OUT == OUT_GLU) {                   // the tile's gate rows and its up rows: two ranges
                const size_t n = (size_t)((r1 - r0 + 1) >> 1) * row_bytes;
                const u8* g0 = P.w + (size_t)(r0 >> 1) * row_bytes;
                if (r1 > r0) { prefetch_range<NT>(g0, n); prefetch_range<NT>(g0 + P.stride, n); }
            }
            else if (r1 > r0) prefetch_range<NT>(P.w + (size_t)r0 * row_bytes, (size_t)(r1 - r0) * row_bytes);
        }
    typename T::Raw cur[U], nxt[U];
    int k = 0;
    const long long ps = OUT == OUT_GLU ? P.stride : 0;       // OUT_GLU: the up rows' offset from the gate rows
    load_batch<T, U, OUT>(cur, P.w, row_bytes, t * rpc + grp, P.rows, g, G, nchunk, ps);
    // OUT_GLU (one tile a CTA, its rows' chunks in two batches, e.g. Qwen's 28 = 16 + 12 at G = 4, U = 4): the second
    // batch is loaded before the wait too, so no DRAM round trip is left after it (the loop skips that load once).
    bool pre = false;
    if constexpr (ORCD_MV_PRE >= 2 && OUT == OUT_GLU) {
        const int t1 = nbat > 1 ? t : t + stride;
        pre = t1 < ntiles;                                    // uniform over the CTA
        if (pre) load_batch<T, U, OUT>(nxt, P.w, row_bytes, t1 * rpc + grp, P.rows, (nbat > 1 ? step : 0) + g, G, nchunk, ps);
    }
    if (staged != P.xoff) {                                   // uniform: x (+ xoff) is not in shared memory yet
        // Launched with programmatic stream serialization (Linear(pdl=True)), this CTA may have started while the
        // previous kernel still runs: only the weights (never written) were read so far. Wait for that kernel to
        // complete before touching x or y. Without the launch attribute this is a no-op (and before sm_90, absent).
#if __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
        if (staged == -1) MV_STAMP(1);
        if (staged != -1) __syncthreads();                    // the previous part's x may still be read
        stage<SQ8, SF32, NT, IN>(a.x + P.xoff, a.K, xs, a.norm_w, red + NW, a.act); __syncthreads();
        if (staged == -1) MV_STAMP(2);
        staged = P.xoff;
    }
    // IN_NORM: 1/rms from the warps' sums of squares (red + NW, left by the staging of this x; see norm_scale)
    const float rs = IN == IN_NORM ? norm_scale<NW>(red + NW, a.K, a.norm_eps) : 1.f;
    float acc = 0.f;
    int parity = 0;                                           // OUT_GLU: which of its two buffers this tile uses
    for (;;) {
        int nt = t, nk = k + 1;
        if (nk == nbat) { nk = 0; nt += stride; }
        const bool more = nt < ntiles;
        if (more && !pre) load_batch<T, U, OUT>(nxt, P.w, row_bytes, nt * rpc + grp, P.rows, nk * step + g, G, nchunk, ps);
        pre = false;
        const int row = t * rpc + grp;
        if (row < P.rows) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int c = k * step + u * G + g;
                if (c < nchunk) acc += T::dot(cur[u], xs, c);
            }
        }
        if (nk == 0) {                                        // the tile's last batch: reduce, epilogue
            acc = group_sum<NW>(acc, G, red);
            if constexpr (IN == IN_NORM) acc *= rs;
            if constexpr (OUT == OUT_GLU) { glu_epilogue(acc, G, grp, g, row, P, a, t, parity); parity ^= 1; }
            else if (g == 0 && row < P.rows) {
                const int r = P.row0 + row;
                float v = acc;
                if (a.bias) v += a.bias[r];
                if (a.accumulate) v += a.y[r];
                a.y[r] = v;
            }
            acc = 0.f;
        }
        if (!more) break;
        t = nt; k = nk;
#pragma unroll
        for (int u = 0; u < U; ++u) cur[u] = nxt[u];
    }
}

template <int NW, bool SQ8, bool SF32, int IN, int OUT, int I, class X>
__device__ __forceinline__ void dispatch(int, const Part&, int, const Args&, const X&, float*, int&) {}

template <int NW, bool SQ8, bool SF32, int IN, int OUT, int I, class X, class C, class... Rest>
__device__ __forceinline__ void dispatch(int slot, const Part& P, int tb, const Args& a, const X& xs, float* red,
                                         int& staged) {
    if (slot == I) run_part<C, NW, SQ8, SF32, IN, OUT, X>(P, tb, a, xs, red, staged);
    else dispatch<NW, SQ8, SF32, IN, OUT, I + 1, X, Rest...>(slot, P, tb, a, xs, red, staged);
}

template <int NW, int XB, int IN, int OUT, class... Cs>
__device__ __forceinline__ void matvec_v2_body(const Part* __restrict__ parts, int nparts, const float* __restrict__ x,
                                               float* y, const float* __restrict__ bias, int K, int accumulate,
                                               const int* __restrict__ route_ids, const float* __restrict__ norm_w,
                                               float norm_eps, int act) {
    constexpr bool SQ8 = (Cs::type::Q8X || ...);
    constexpr bool SF32 = (!Cs::type::Q8X || ...);
    extern __shared__ int4 mv_smem[];
    __shared__ float red[2 * NW];                              // group_sum's, then the staging's sums of squares
    constexpr bool PL = XB == 16 && (pair_layout<typename Cs::type>::value && ...);
    typedef XS<XB, PL> X;
    const X xs = smem_layout<X>(mv_smem, K, SQ8);
    const Args a = {x, y, bias, K, accumulate, route_ids, norm_w, norm_eps, act};
    // Let the next kernel in the stream launch now if it was launched with programmatic stream serialization: it
    // prefetches its weights, then waits (griddepcontrol.wait) for this whole grid to complete.
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
#if __CUDA_ARCH__ >= 900
    if (route_ids) asm volatile("griddepcontrol.wait;" ::: "memory");   // the ids come from the previous kernel
#endif
    int staged = -1;                                          // the xoff of the x in shared memory (-1: none)
    int tile_begin = 0;
    MV_STAMP(0);
    for (int p = 0; p < nparts; ++p) {
        const Part P = parts[p];
        dispatch<NW, SQ8, SF32, IN, OUT, 0, X, Cs...>(P.slot, P, tile_begin, a, xs, red, staged);
        tile_begin = P.tile_end;
    }
#ifdef ORCD_TRACE
    if (threadIdx.x == 0 && staged != -1) {                  // (a CTA without tiles stamps nothing)
        MV_STAMP(3);
        const unsigned i = atomicAdd(&mv_trace_n, 1u);
        if (i < MV_TRACE_CAP) {
            const unsigned long long r[6] = {(unsigned long long)K, (unsigned long long)(parts[nparts - 1].row0 + parts[nparts - 1].rows),
                                               mv_t[0], mv_t[1], mv_t[2], mv_t[3]};
            for (int j = 0; j < 6; ++j) mv_trace[i][j] = r[j];
        }
    }
#endif
}

}  // namespace mv

// The kernel the launcher instantiates (orcd.cuda_matvec.precompile compiles this header alone, with NVRTC name
// expressions such as matvec_v2_k<8, 16, 0, mv::cfg<mv::tQ5_0, 2>, mv::cfg<mv::tQ8_0, 1>>): NW warps per CTA, XB-bit
// staged input (8 or 16), what it stages (IN: mv::IN_X, IN_NORM, IN_ACT, IN_STAGED, IN_ATTN or IN_MERGE), one cfg per
// block type in the parts.
#ifndef ORCD_MV_MINB          // an experiment's knob (ORCD_MV_MINB=N in the environment, orcd.cuda_matvec.precompile):
#define ORCD_MV_MINB -1       // at least N CTAs of matvec_v2_k an SM (registers capped to fit; 0: none named) for the
#endif                        // kernels other than U = 1's; -1: min_ctas's measured choice
namespace mv {
template <class T> struct is_q8_0 { static constexpr bool value = false; };
template <> struct is_q8_0<tQ8_0> { static constexpr bool value = true; };
// The minimum of CTAs an SM that __launch_bounds__ names (0: none), per instantiation:
// - 32 / NW (64 registers a thread) for a kernel whose every type reads one chunk a batch: U = 1 is the plan of a
//   bandwidth-bound product with many tiles a CTA (orcd.cuda_matvec.plan_unroll: the output products), whose speed
//   is the loads in flight, so the CTAs an SM. Session 18's fused-norm epilogue had taken gpt-oss's output product
//   (8 warps, Q8_0) from 64 to 72 registers, 3 CTAs an SM instead of 4.
// - Otherwise 1 or none, which bound nothing here (no kernel needs more than an SM's registers) but change ptxas's
//   schedule and register count, so they are chosen by measurement (Session 19, H200, µs a decode step, kernel by
//   kernel): gpt-oss's IN_X Q8_0 products (q|k|v at 8 warps, o at 16) are faster with none — 181.1 / 162.5 against
//   209.7 / 197.5 with 1 — and Qwen's with 1 (its norm + q|k|v of Q5_0 51.5 against 57.1, down of Q6_K 51.8 against
//   53.7, o of Q5_0 55.0 against 56.0; the others within 0.5). So: none for an IN_X kernel of Q8_0 only, else 1;
//   IN_MERGE (the o product staging the attention's splits) as IN_X.
template <int NW, int IN, class... Cs> constexpr int min_ctas() {
    return ((Cs::u == 1) && ...) ? 32 / NW
         : ORCD_MV_MINB >= 0 ? ORCD_MV_MINB
         : (IN == IN_X || IN == IN_MERGE) && (is_q8_0<typename Cs::type>::value && ...) ? 0 : 1;
}
}  // namespace mv
template <int NW, int XB, int IN, class... Cs>
__global__ void __launch_bounds__(NW * 32, mv::min_ctas<NW, IN, Cs...>()) matvec_v2_k(const mv::Part* __restrict__ parts, int nparts,
                                                      const float* __restrict__ x, float* y,
                                                      const float* __restrict__ bias, int K, int accumulate,
                                                      const int* __restrict__ route_ids,
                                                      const float* __restrict__ norm_w, float norm_eps, int act) {
    mv::matvec_v2_body<NW, XB, IN, mv::OUT_Y, Cs...>(parts, nparts, x, y, bias, K, accumulate, route_ids, norm_w, norm_eps, act);
}

// The gate|up kernel that writes the next product's staged input (OUT_GLU; orcd.cuda_matvec.Linear(..., glu=True)): one part of
// 2n rows, (gate, up) pairs, tiles of 64 rows (NW = 2 G), y = the staged input of the n activations (Staged).
// Two CTAs per SM at least (for NW = 16 a cap of 64 registers; ptxas spills a few dozen bytes, measured faster than 8
// warps without spills: 06a): its 2n/64 tiles, one per CTA, then fit the GPU at once.
template <int NW, int XB, int IN, class... Cs>
__global__ void __launch_bounds__(NW * 32, NW <= 16 ? 2 : 1) matvec_v2_glu_k(const mv::Part* __restrict__ parts, int nparts,
                                                          const float* __restrict__ x, float* y,
                                                          const float* __restrict__ bias, int K, int accumulate,
                                                          const int* __restrict__ route_ids,
                                                          const float* __restrict__ norm_w, float norm_eps, int act) {
    static_assert(XB == 16, "OUT_GLU writes 16-bit codes");
    mv::matvec_v2_body<NW, XB, IN, mv::OUT_GLU, Cs...>(parts, nparts, x, y, bias, K, accumulate, route_ids, norm_w, norm_eps, act);
}
