"""Matrix-vector kernels for Q8_0, Q4_K, Q6_K, Q5_0 and MXFP4 blocks against their numpy references (GPU tests skipped without
a GPU), and the reference against an independent dequantiser (gguf.quants)."""
import numpy as np, pytest, gguf
from orcd import cuda, cuda_matvec as cm
from orcd.quants import Q8_0, Q4_K, Q6_K, Q5_0, MXFP4, QUANT_TYPES, quantize

cp, why = cuda.cuda_device()
needs_gpu = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')
TYPES = {'Q8_0': Q8_0, 'Q4_K': Q4_K, 'Q6_K': Q6_K, 'Q5_0': Q5_0, 'MXFP4': MXFP4}

# Qwen2.5-0.5B Q4_K_M: Q5_0 at 128x896, 896x896, 4864x896, 896x4864 and the 151936x896 output; Q4_K and Q6_K
# only at 896x4864 (896 is not a multiple of 256). The K-quants also run at Qwen2.5-1.5B's shapes (hidden
# 1536, FFN 8960, the same 151936 vocabulary) so that the large row counts are covered for them too.
SHAPES = [('Q5_0', r, K) for r, K in [(1, 32), (5, 64), (128, 896), (896, 896), (4864, 896), (896, 4864), (151936, 896)]]
SHAPES += [(n, r, K) for n in ('Q4_K', 'Q6_K') for r, K in [(1, 256), (5, 512), (896, 4864), (8960, 1536),
                                                           (1536, 8960), (151936, 1536)]]
SHAPES += [('Q8_0', r, K) for r, K in [(1, 32), (5, 64), (896, 896), (4864, 896), (2880, 4096)]]  # 2880x4096: GPT-OSS attn_output
SHAPES += [('MXFP4', r, K) for r, K in [(1, 32), (5, 64), (896, 896), (2880, 2880), (5760, 2880)]]  # GPT-OSS-20B


def tol(K): return 1e-5 * np.sqrt(K)  # fp32, different summation order


def run_kernel(wq, x, rows, t):
    return cp.asnumpy(cm.matvec(cp.asarray(np.ascontiguousarray(wq).reshape(-1)), cp.asarray(x), rows, t))


def assert_close(got, ref, K):
    err = np.abs(got - ref) / (1 + np.abs(ref))
    assert np.isfinite(got).all() and err.max() <= tol(K), f'worst row {err.argmax()}: {got[err.argmax()]} vs {ref[err.argmax()]}'


def random_blocks(rng, t, rows, K):
    """Random bytes in every field (all bit patterns of codes and scales); fp16 scale fields finite and sized so
    the dequantised values have an rms near 1, like quantised standard-normal weights."""
    qt, scale = QUANT_TYPES[t], {Q8_0: 0.01, Q4_K: 0.004, Q6_K: 0.001, Q5_0: 0.1, MXFP4: 0}[t]
    b = rng.integers(0, 256, rows * K // qt.block_size * qt.type_size, dtype=np.uint8)
    blocks = b.view(qt.block)
    for f in ('d', 'dmin'):
        if f in qt.block.names: blocks[f] = rng.uniform(-scale, scale, blocks.size).astype(np.float16)
    if t == MXFP4: blocks['e'] = rng.choice(np.r_[0:3, 120:130], blocks.size)   # subnormal and normal scales
    return b


@pytest.mark.parametrize('name', TYPES)
def test_reference_matches_gguf_dequantisation(name):
    t, rng = TYPES[name], np.random.default_rng(1)
    for rows, K in [(3, 256), (17, 512)]:
        wq = quantize(rng.standard_normal((rows, K)).astype(np.float32), t)
        x = rng.standard_normal(K).astype(np.float32)
        want = gguf.quants.dequantize(wq, gguf.GGMLQuantizationType(t)).reshape(rows, K) @ x
        np.testing.assert_allclose(cm.matvec_ref(wq, x, rows, t), want, rtol=1e-6, atol=1e-5)


def test_kernel_sources_and_names():
    for t, name in cm.MATVEC_KERNELS.items():
        assert f'extern "C" __global__ void {name}(' in cuda.kernel_source(name)
        assert name == 'matvec_' + QUANT_TYPES[t].name.lower()


def test_unsupported_type_is_named():
    with pytest.raises(ValueError, match=r'no kernel for ggml type 2; have Q8_0 \(8\), Q4_K \(12\)'):
        cm.matvec(None, np.zeros(32, np.float32), 1, 2)   # Q4_0: no kernel yet


@needs_gpu
@pytest.mark.parametrize('name,rows,K', SHAPES, ids=[f'{n}-{r}x{K}' for n, r, K in SHAPES])
def test_matvec_matches_reference(name, rows, K):
    t, rng = TYPES[name], np.random.default_rng(rows * 7 + K)
    wq = quantize(rng.standard_normal((rows, K), dtype=np.float32), t)
    x = rng.standard_normal(K).astype(np.float32)
    assert_close(run_kernel(wq, x, rows, t), cm.matvec_ref(wq, x, rows, t), K)


@needs_gpu
@pytest.mark.parametrize('name', TYPES)
@pytest.mark.parametrize('rows,K', [(33, 512), (896, 4864)], ids=['33x512', 'random-896x4864'])
def test_matvec_random_blocks(name, rows, K):
    "Every bit pattern of codes and packed scales (a quantiser produces only some), and all warps_per_block."
    t, rng = TYPES[name], np.random.default_rng(K)
    wq = random_blocks(rng, t, rows, K)
    x = rng.standard_normal(K).astype(np.float32)
    ref = cm.matvec_ref(wq, x, rows, t)
    for wpb in (1, 3, 8):
        got = cp.asnumpy(cm.matvec(cp.asarray(wq), cp.asarray(x), rows, t, warps_per_block=wpb))
        assert_close(got, ref, K)


@needs_gpu
def test_output_buffer():
    rng = np.random.default_rng(5)
    for t in cm.MATVEC_KERNELS:
        wq = quantize(rng.standard_normal((7, 512)).astype(np.float32), t)
        x = rng.standard_normal(512).astype(np.float32)
        y = cp.full(7, np.nan, np.float32)
        assert cm.matvec(cp.asarray(wq), cp.asarray(x), 7, t, y=y) is y
        assert_close(cp.asnumpy(y), cm.matvec_ref(wq, x, 7, t), 512)


@needs_gpu
def test_launcher_rejects_bad_arguments():
    x = cp.zeros(256, np.float32)
    with pytest.raises(ValueError, match=r'matvec_q4_k: K=288 is not a multiple of the Q4_K block \(256\)'):
        cm.matvec(cp.zeros(144, np.uint8), cp.zeros(288, np.float32), 1, Q4_K)
    with pytest.raises(ValueError, match=r'matvec_q5_0: K=48 is not a multiple of the Q5_0 block \(32\)'):
        cm.matvec(cp.zeros(44, np.uint8), cp.zeros(48, np.float32), 1, Q5_0)
    with pytest.raises(TypeError, match='matvec_q6_k: x must be float32'):
        cm.matvec(cp.zeros(210, np.uint8), x.astype(np.float16), 1, Q6_K)
    with pytest.raises(ValueError, match='matvec_q6_k: w must have 420 elements, got 210'):
        cm.matvec(cp.zeros(210, np.uint8), x, 2, Q6_K)
    with pytest.raises(ValueError, match=r'matvec_q8_0: K=33 is not a multiple of the Q8_0 block \(32\)'):
        cm.matvec(cp.zeros(34, np.uint8), cp.zeros(33, np.float32), 1, Q8_0)
    with pytest.raises(ValueError, match=r'matvec_mxfp4: w must have 136 elements, got 135'):
        cm.matvec(cp.zeros(135, np.uint8), x, 1, MXFP4)
    with pytest.raises(TypeError, match='matvec_q4_k: w must be uint8'):
        cm.matvec(cp.zeros(144, np.int8), x, 1, Q4_K)
    with pytest.raises(ValueError, match='matvec_q5_0: w must be C-contiguous'):
        cm.matvec(cp.zeros((22, 8), np.uint8)[:, 0], x, 1, Q5_0)
    with pytest.raises(ValueError, match='matvec_q4_k: y must have 1 elements, got 2'):
        cm.matvec(cp.zeros(144, np.uint8), x, 1, Q4_K, y=cp.zeros(2, np.float32))
