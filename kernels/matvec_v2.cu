// matvec v2 (the design: matvec_v2.cuh): y = W x (+ b) (+ y) for every GGUF block type orcd reads.
//
// The launcher (orcd.cuda_matvec.Linear) uses the template kernel matvec_v2_k<NW, XB, cfg<type, U>...> of the header,
// instantiated for the block types a Linear needs: a Linear stacking q (Q5_0), k (Q5_0) and v (Q8_0) is one
// launch of matvec_v2_k<8, 16, IN_X, cfg<tQ5_0, 2>, cfg<tQ8_0, 1>>, compiled on first use.
// matvec_v2 below is the same body (16-bit staged input) with all twelve types in one kernel: it takes any
// Linear, at the price of the registers of the heaviest type (and a long compile).
// Arguments: parts[nparts] (struct mv::Part, in device memory), x [K] fp32, y [rows] fp32, bias [rows] or null,
// K, accumulate (0: y = W x + b, 1: y += W x + b). Dynamic shared memory: orcd.cuda_matvec._smem_bytes(K, ...).
// Numpy reference: orcd.cuda_matvec.linear_ref.
#include "matvec_v2.cuh"

extern "C" __global__ void __launch_bounds__(256) matvec_v2(const mv::Part* __restrict__ parts, int nparts,
                                                           const float* __restrict__ x, float* y,
                                                           const float* __restrict__ bias, int K, int accumulate) {
    using namespace mv;
    matvec_v2_body<8, 16, IN_X, OUT_Y, cfg<tF32, 2>, cfg<tF16, 2>, cfg<tQ4_0, 2>, cfg<tQ4_1, 2>, cfg<tQ5_0, 2>, cfg<tQ5_1, 2>,
                   cfg<tQ8_0, 1>, cfg<tQ4_K, 2>, cfg<tQ5_K, 2>, cfg<tQ6_K, 1>, cfg<tBF16, 2>, cfg<tMXFP4, 2>>(
        parts, nparts, x, y, bias, K, accumulate, nullptr, nullptr, 0.f, -1);
}
