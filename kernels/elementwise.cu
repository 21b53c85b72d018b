// Elementwise operations: one thread per element, a grid over all of them.
//
// elementwise (in place on x, n elements): op 0 x += y (the residual add), op 1 x *= s, op 2 x = tanh(x/s)*s
// (logit soft-capping). act: the feed-forward activations, gu row t = [gate (n) | up (n)] -> out row t (n):
// kind 0 swiglu silu(g)*u, 1 geglu gelu(g)*u, 2 swiglu_oai (gpt-oss: g = min(g, 7), u = clamp(u, -7, 7),
// g*sigmoid(1.702 g)*(u + 1)), 3 gelu of gu itself (T, n) (no gate).
// Numpy references: orcd.ops.swiglu, geglu, swiglu_oai, gelu (tanh form); x + y, x * s, tanh(x / s) * s.
#include "ops_common.cuh"

extern "C" __global__ void elementwise(float* __restrict__ x, const float* __restrict__ y, int n, int op, float s) {
    wait_primary();
    trigger_dependents();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (op == 0) x[i] += y[i];
    else if (op == 1) x[i] *= s;
    else x[i] = tanhf(x[i] / s) * s;
}

extern "C" __global__ void act(const float* __restrict__ gu, float* __restrict__ out, int n, int T, int kind) {
    wait_primary();
    trigger_dependents();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * T) return;
    if (kind == 3) { out[i] = gelu_tanh(gu[i]); return; }
    const int t = i / n, j = i % n;
    out[i] = gated_act(kind, gu[(size_t)t * 2 * n + j], gu[(size_t)t * 2 * n + n + j]);
}
