"""Does a row of a cuBLAS product depend on how many rows the product has? 06c's prompt graphs run a chunk padded to
its length bucket, so the same token's row may be multiplied in a product of 23 rows eagerly and of 32 in a graph.
For each weight shape (rows x K: SmolLM2's and Qwen2.5-0.5B's), the first 10 rows of X @ W^T computed with M rows
(06a's `_gemm`, tf32 as the prompt runs it) against M = 10: '=' where bit-equal, else the largest difference.
GPU only. Run: python scripts/probe_gemm_rows.py"""
import numpy as np
from orcd.cuda import cuda_device

cp, why = cuda_device()
if cp is None: raise SystemExit(f'needs a GPU: {why}')
from orcd.cuda_matvec import _gemm

rng = np.random.default_rng(0)
for rows, K in ((576, 576), (192, 576), (1536, 576), (576, 1536), (896, 896), (4864, 896)):
    W = cp.asarray(rng.standard_normal((rows, K)).astype(np.float32))
    X = cp.asarray(rng.standard_normal((64, K)).astype(np.float32))
    out = []
    for M in (10, 16, 23, 32, 36, 64):
        Y = cp.zeros((M, rows), np.float32)
        _gemm(W, X[:M], Y, 0.0, 'tf32')
        out.append((M, cp.asnumpy(Y)[:10]))
    ref = out[0][1]
    print(f'{rows:5d} x {K:4d}:', ' '.join(f'M={M}: ' + ('=' if np.array_equal(Y, ref) else f'{np.abs(Y - ref).max():.1e}')
                                           for M, Y in out))
