"""Matrix-vector kernels straight from GGUF blocks against their numpy references (GPU tests skipped without a GPU):
v1 (Q8_0, Q4_K, Q6_K, Q5_0, MXFP4; the reference also against an independent dequantiser, gguf.quants), then v2
(`Linear` for all twelve block types at the real models' shapes, bias, accumulate, mixed-type stacks, graph
capture, the prefill matmul) and the device dequantisers (bit-exact). Set ORCD_NO_POOL=1 to allocate without
CuPy's memory pool, so that compute-sanitizer memcheck sees each array's exact bounds."""
import os
import numpy as np, pytest, gguf
from orcd import cuda, cuda_matvec as cm, ops
from orcd.quants import F32, F16, BF16, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, MXFP4, QUANT_TYPES, dequantize, quantize

cp, why = cuda.cuda_device()
needs_gpu = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')
if cp is not None and os.environ.get('ORCD_NO_POOL'): cp.cuda.set_allocator(None)
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


# ---------------------------------------------------------------------------------------------------------------
# v2

ALL = {QUANT_TYPES[t].name: t for t in cm.V2_TYPES}
# (type, rows, K) of the real models: Qwen2.5-0.5B, SmolLM2-135M, Gemma-3-270M, gpt-oss-20b, Phi-3-mini
REAL = [('Q5_0', 896, 896), ('Q5_0', 128, 896), ('Q8_0', 128, 896), ('Q5_0', 4864, 896), ('Q4_K', 896, 4864),
        ('Q6_K', 896, 4864), ('Q8_0', 151936, 896), ('Q5_0', 151936, 896),
        ('Q4_1', 576, 576), ('Q4_1', 192, 576), ('Q4_1', 1536, 576), ('Q4_1', 576, 1536), ('Q8_0', 49152, 576),
        ('Q5_0', 1024, 640), ('Q5_0', 256, 640), ('Q8_0', 256, 640), ('Q5_0', 2048, 640), ('Q4_K', 640, 1024),
        ('Q4_K', 640, 2048), ('Q6_K', 640, 2048), ('Q8_0', 262144, 640),
        ('Q8_0', 2880, 4096), ('Q8_0', 4096, 2880), ('Q8_0', 512, 2880), ('MXFP4', 2880, 2880), ('MXFP4', 5760, 2880),
        ('Q4_K', 9216, 3072), ('Q5_K', 3072, 3072), ('Q6_K', 3072, 8192), ('Q5_K', 16384, 3072),
        ('F16', 9216, 3072), ('BF16', 3072, 8192), ('F32', 896, 896), ('F16', 576, 1536)]
GENERIC = [(n, r, K) for n, t in ALL.items()
           for r, K in ([(1, 256), (37, 512), (300, 1536), (896, 4864), (2048, 3072)] if QUANT_TYPES[t].block_size == 256
                        else [(1, 32), (5, 64), (7, 96), (37, 512), (300, 1536), (896, 4864), (2880, 2880)])]
CHECK_ROWS = 4096        # the numpy reference covers at most this many rows at each end of a big matrix
_W = {}


def weight(t, rows, K, seed=0):
    "Random valid blocks (numpy) and their device copy, cached: big weights are slow to make."
    key = (t, rows, K, seed)
    if key not in _W:
        if len(_W) > 8: _W.clear()
        w = cm.random_weight(np.random.default_rng([t, rows, K, seed]), t, rows, K)
        _W[key] = (w, cp.asarray(w))
    return _W[key]


def row_slices(rows):
    return [(0, rows)] if rows <= 2 * CHECK_ROWS else [(0, CHECK_ROWS), (rows - CHECK_ROWS, rows)]


def check_linear(got, parts, x, bias=None, y0=None, what='', bits=None):
    """got vs linear_ref: |got - ref| <= 1e-5 |W||x'| (fp32 summation order), and vs the exact fp32 product within
    the staged input's bound errx on top. Big matrices: the first and last CHECK_ROWS rows. Returns the worst errors."""
    bits = bits or cm.X_BITS
    assert np.isfinite(got).all(), what
    worst, row0 = [0.0, 0.0], 0
    for w, rows, t in parts:
        rb = x.size // QUANT_TYPES[t].block_size * QUANT_TYPES[t].type_size
        for a, b in row_slices(rows):
            sl = slice(row0 + a, row0 + b)
            bs, ys = (None if v is None else v[sl] for v in (bias, y0))
            sub = [(w[a * rb:b * rb], b - a, t)]
            ref, mag, errx = cm.linear_ref(sub, x, bs, ys, bits=bits)
            exact = dequantize(sub[0][0], t).reshape(b - a, -1).astype(np.float64) @ x.astype(np.float64)
            exact += (0 if bs is None else bs) + (0 if ys is None else ys)
            e = np.abs(got[sl] - ref)
            assert np.all(e <= 1e-5 * mag), f'{what} {QUANT_TYPES[t].name} rows {a}:{b}: worst {np.max(e / mag):.2e} of |W||x\'|'
            assert np.all(np.abs(got[sl] - exact) <= errx + 1e-5 * mag), f'{what}: beyond the {bits}-bit input bound'
            worst = [max(worst[0], e.max()), max(worst[1], np.max(e / mag))]
        row0 += rows
    return worst


def test_v2_covers_every_block_type():
    from importlib import resources
    header = (resources.files('orcd.kernels') / 'matvec_v2.cuh').read_text()
    assert set(cm.V2_TYPES) == set(QUANT_TYPES)
    for t, (trait, cv, u) in cm.V2_TYPES.items():
        assert f'struct {trait} ' in header or f'typedef tHalfLike<{str(t == BF16).lower()}> {trait};' in header, trait
        assert (32 % cv == 0 or cv % 32 == 0) and u >= 1
    assert 'extern "C" __global__ void __launch_bounds__(256) matvec_v2(' in cuda.kernel_source('matvec_v2')
    assert 'extern "C" __global__ void dequant(' in cuda.kernel_source('dequant')


@pytest.mark.parametrize('bits', [8, 16])
def test_quantize_x_ref(bits):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * rng.uniform(0, 100, 4096)).astype(np.float32)
    x[:32] = 0
    q, d = cm.quantize_x_ref(x, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == (np.int8 if bits == 8 else np.int16) and d.dtype == np.float32 and q.shape == (4096,) and d.shape == (128,)
    assert (q[:32] == 0).all() and d[0] == 0
    assert np.abs(q).max() == qmax and (np.abs(q.reshape(-1, 32)).max(1)[1:] == qmax).all()
    # half a code; at 16 bits also the fp32 rounding of x/d and of d (a few ulps of |x|: 2e-3 of a code)
    xb = x.reshape(-1, 32).astype(np.float64)
    tol = d[:, None] / 2 * (1 + 1e-6) if bits == 8 else d[:, None] / 2 + 2**-21 * np.abs(xb)
    assert np.all(np.abs(q.reshape(-1, 32) * d[:, None].astype(np.float64) - xb) <= tol)


@pytest.mark.parametrize('bits', [8, 16])
@pytest.mark.parametrize('name', ALL)
def test_linear_ref_bounds(name, bits):
    "linear_ref is the product with the staged input, and errx bounds its distance from the exact product."
    t, rng = ALL[name], np.random.default_rng(3)
    K = 512
    w, x = cm.random_weight(rng, t, 9, K), rng.standard_normal(K).astype(np.float32)
    ref, mag, errx = cm.linear_ref([(w, 9, t)], x, bits=bits)
    W = dequantize(w, t).reshape(9, K).astype(np.float64)
    exact = W @ x.astype(np.float64)
    assert np.all(np.abs(ref - exact) <= errx + 1e-12 * mag)
    if t in cm.FLOAT_TYPES: assert np.array_equal(ref, exact) and not errx.any()
    else: assert np.all(errx > 0) and np.all(errx < (0.01 if bits == 8 else 4e-5) * mag)


def test_plan_linear():
    expr, cfgs, table, tiles, warps = cm.plan_linear([(None, 896, Q5_0), (None, 128, Q5_0), (None, 128, Q8_0)], 896,
                                                     warps=8, tpr=[32, 32, 16])
    assert expr == 'matvec_v2_k<8, 16, 0, mv::cfg<mv::tQ5_0, 2>, mv::cfg<mv::tQ8_0, 2>>' and warps == 8
    assert list(table['tpr']) == [32, 32, 16] and list(table['tile_end']) == [112, 128, 136] and tiles == 136
    assert list(table['row0']) == [0, 896, 1024] and list(table['slot']) == [0, 0, 1]
    assert cm.plan_linear([(None, 896, Q4_K)], 4864)[0] == 'matvec_v2_k<16, 16, 0, mv::cfg<mv::tQ4_K, 3>>'
    assert cm.plan_linear([(None, 896, Q4_K)], 4864, bits=8)[0] == 'matvec_v2_k<16, 8, 0, mv::cfg<mv::tQ4_K, 3>>'
    with pytest.raises(ValueError, match='bits must be 8 or 16'):
        cm.plan_linear([(None, 8, Q8_0)], 64, bits=12)
    assert cm.v2_expr(8, [(Q8_0, 1)], inp='norm') == 'matvec_v2_k<8, 16, 1, mv::cfg<mv::tQ8_0, 1>>'
    assert cm.v2_expr(8, [(Q8_0, 1)], inp='act') == 'matvec_v2_k<8, 16, 2, mv::cfg<mv::tQ8_0, 1>>'
    with pytest.raises(ValueError, match="inp must be one of"):
        cm.v2_expr(8, [(Q8_0, 1)], inp='gelu')
    with pytest.raises(ValueError, match='tpr=48 is not a power of two'):
        cm.plan_linear([(None, 8, Q8_0)], 64, tpr=48)
    with pytest.raises(ValueError, match='tpr=512 is not a power of two <= 256'):
        cm.plan_linear([(None, 8, Q8_0)], 64, warps=8, tpr=512)
    for t in cm.V2_TYPES:          # every default plan is valid, and where latency-bound a batch covers a row
        for rows, K in [(1, 256), (128, 896), (896, 4864), (151936, 1024), (4, 65536)]:
            w = cm.plan_warps(K)
            G, U = cm.plan_tpr(t, rows, K, w), cm.plan_unroll(t, K, w, rows)
            assert G & (G - 1) == 0 and 1 <= G <= 32 * w and 1 <= U <= 4
            if rows < 151936: assert G * U >= min(K // cm.V2_TYPES[t][1], 4 * 32 * w) or U == 4
            else: assert U == cm.V2_TYPES[t][2]


def test_emv_stage_ref_layout():
    "The staged regions of ExpertMV (emv_stage_ref) hold quantize_x_ref's codes in the pair layout, scales and half sums."
    from orcd.cuda_moe import emv_stage_ref, emv_region
    rng = np.random.default_rng(5)
    for K in (32, 96, 2880):
        x = rng.standard_normal(2 * K).astype(np.float32); x[:32] = 0                # a block of zeros: d 0, codes 0
        st = emv_stage_ref(x, K).reshape(2, emv_region(K))
        assert emv_region(K) % 16 == 0
        qb, nb = (144 * ((K // 32 + 1) // 2) + 127) // 128 * 128, K // 32
        for j in range(2):
            q, d = cm.quantize_x_ref(x[j * K:(j + 1) * K], 16)
            for b in range(nb):
                s = 16 * (9 * (b // 2) + 4 * (b % 2))
                w = st[j, s:s + 64].view('<u4')
                assert np.array_equal(w.astype(np.int64) & 0xffff, q[32 * b:32 * b + 16].astype(np.int64) & 0xffff)
                assert np.array_equal((w >> 16).astype(np.uint16).view(np.int16), q[32 * b + 16:32 * b + 32])
            assert np.array_equal(st[j, qb:qb + 4 * nb].view('<f4'), d)
            assert np.array_equal(st[j, qb + 4 * nb:qb + 12 * nb].view('<i4'), q.reshape(-1, 16).astype(np.int32).sum(1))


def test_pair_layout_plan_and_lookup():
    """MXFP4's pair layout: chosen only for all-MXFP4 parts of 16-bit input whose bytes end 4-byte aligned; its shared
    memory mirrors the kernel's; the prmt lookup (emulated) gives the signed E2M1 values for every selector."""
    assert cm.plan_linear([(None, 2880, MXFP4)] * 8, 2880)[0] == 'matvec_v2_k<8, 16, 0, mv::cfg<mv::tMXFP4P, 2>>'
    assert cm.plan_linear([(None, 2880, MXFP4)], 2880, pair=False)[0] == 'matvec_v2_k<8, 16, 0, mv::cfg<mv::tMXFP4, 3>>'
    assert 'tMXFP4P' not in cm.plan_linear([(None, 7, MXFP4)], 2880)[0]                 # 7 x 1530 bytes: 2 mod 4
    assert 'tMXFP4P' not in cm.plan_linear([(None, 8, MXFP4), (None, 8, Q8_0)], 2880)[0]
    assert 'tMXFP4P' not in cm.plan_linear([(None, 8, MXFP4)], 2880, bits=8)[0]
    for K in (32, 96, 2880, 4096):      # odd and even block counts: every block's 64 bytes inside
        nb, qb = K // 32, cm._smem_bytes(K, True, False, 16, pair=True) - (K // 8 + K // 4)
        assert qb >= 16 * (9 * ((nb - 1) // 2) + 4 * ((nb - 1) % 2) + 4)
    q = np.random.default_rng(0).integers(0, 1 << 32, 4096, dtype=np.uint64).astype(np.uint32)
    table = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)
    want = np.stack([table[q >> (4 * i) & 15] for i in range(4)], axis=1)
    assert np.array_equal(cm.mxfp4_pairs_ref(q).view(np.int8).reshape(-1, 4), want)


@needs_gpu
@pytest.mark.parametrize("rows,K", [(4, 32), (4, 96), (700, 2880), (4, 1440), (130, 4096), (5760, 2880)])
def test_v2_mxfp4_pair_layout(rows, K):
    """tMXFP4P (pair layout) and tMXFP4 (swizzled layout) on the same weights, odd and even block counts, against
    linear_ref; with odd rows (bytes ending 2 mod 4) the plan falls back to tMXFP4 by itself."""
    rng = np.random.default_rng(rows + K)
    w, wd = weight(MXFP4, rows, K)
    x = (rng.standard_normal(K) * rng.uniform(0.1, 10, K)).astype(np.float32)
    for pair in (None, False):
        lin = cm.Linear([(wd, rows, MXFP4)], K, pair=pair)
        assert lin.pair == (pair is None)
        check_linear(cp.asnumpy(lin(cp.asarray(x), cp.full(rows, np.nan, np.float32))), [(w, rows, MXFP4)], x, what=repr(lin))
    w, wd = weight(MXFP4, rows + 1, K)
    lin = cm.Linear([(wd, rows + 1, MXFP4)], K)
    assert lin.pair == ((rows + 1) * K // 32 * 17 % 4 == 0)
    check_linear(cp.asnumpy(lin(cp.asarray(x), cp.full(rows + 1, np.nan, np.float32))), [(w, rows + 1, MXFP4)], x, what=repr(lin))


@needs_gpu
@pytest.mark.parametrize('name,rows,K', GENERIC + REAL, ids=[f'{n}-{r}x{K}' for n, r, K in GENERIC + REAL])
def test_v2_matches_reference(name, rows, K):
    t, rng = ALL[name], np.random.default_rng(rows + K)
    w, wd = weight(t, rows, K)
    x = (rng.standard_normal(K) * rng.uniform(0.1, 10, K)).astype(np.float32)    # uneven magnitudes across blocks
    lin = cm.Linear([(wd, rows, t)], K)
    got = cp.asnumpy(lin(cp.asarray(x), cp.full(rows, np.nan, np.float32)))
    err = check_linear(got, [(w, rows, t)], x, what=repr(lin))
    print(f'{name} {rows}x{K}: max abs err {err[0]:.2e}, max err / |W||x\'| {err[1]:.2e}')


@needs_gpu
@pytest.mark.parametrize('bits', [8, 16])
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
@pytest.mark.parametrize('name', ALL)
def test_v2_small_bias_accumulate(name, pdl, bits):
    "Bias and accumulate (y += W x + b) in the epilogue, 8- and 16-bit staged input; small: also run under compute-sanitizer."
    t, rng = ALL[name], np.random.default_rng(11)
    rows, K = 37, 512
    w, wd = weight(t, rows, K)
    x, b, y0 = (rng.standard_normal(n).astype(np.float32) for n in (K, rows, rows))
    for bias in (None, b):
        lin = cm.Linear([(wd, rows, t)], K, bias=None if bias is None else cp.asarray(bias), pdl=pdl, bits=bits)
        y = cp.asarray(y0)
        assert lin(cp.asarray(x), y, accumulate=True) is y
        check_linear(cp.asnumpy(y), [(w, rows, t)], x, bias, y0, what='accumulate', bits=bits)
        check_linear(cp.asnumpy(lin(cp.asarray(x), cp.asarray(y0))), [(w, rows, t)], x, bias, None, what='overwrite', bits=bits)


STACKS = {'qwen-qkv': ([(896, Q5_0), (128, Q5_0), (128, Q8_0)], 896),
          'qwen-gate-up': ([(4864, Q5_0), (4864, Q5_0)], 896),
          'gemma-qkv': ([(1024, Q5_0), (256, Q5_0), (256, Q8_0)], 640),
          'small-mixed-float-and-quant': ([(40, F16), (33, Q8_0), (7, Q4_K), (64, BF16)], 512),
          'small-all-types': ([(3 + i, t) for i, t in enumerate(cm.V2_TYPES)], 256),
          'wide-input': ([(100, Q8_0), (36, Q5_0)], 2880)}      # K > 4 x threads: the norm's own pass (rms_den)


def test_assign_ctas():
    "part_major's CTAs: inside the grid, at least one per part, and every tile of every part taken exactly once."
    rng = np.random.default_rng(0)
    for _ in range(300):
        ends = np.cumsum(rng.integers(1, 400, rng.integers(1, 12)))
        grid = int(rng.integers(1, 4000))
        for p, (c, b, e) in enumerate(zip(cm.assign_ctas(ends, grid), np.r_[0, ends[:-1]], ends)):
            first, count = int(c) & 0xffff, int(c) >> 16
            assert count >= 1 and 0 <= first and first + count <= grid
            got = sorted(t for cta in range(first, first + count) for t in range(cta - first, e - b, count))
            assert got == list(range(e - b))
    with pytest.raises(ValueError, match='16 bits'):
        cm.assign_ctas([10], 1 << 16)


@needs_gpu
@pytest.mark.parametrize('part_major', [False, True], ids=['in_turn', 'part_major'])
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
@pytest.mark.parametrize('stack', STACKS)
def test_v2_stacked_parts(stack, pdl, part_major):
    """Parts of different types in one launch; y a slice of a bigger buffer; bias over all rows; the CTAs taking the
    parts' tiles in turn, or each part its own CTAs (part_major)."""
    spec, K = STACKS[stack]
    rng = np.random.default_rng(5)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    rows = sum(r for r, _ in spec)
    x, b = rng.standard_normal(K).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, bias=cp.asarray(b), pdl=pdl, part_major=part_major)
    assert lin.part_major == (part_major and len(parts) > 1)
    assert lin.rows == rows and lin.nbytes == sum(w.nbytes for w, _, _, _ in parts)
    assert len(lin.cfgs) == len({t for _, t in spec})
    buf = cp.full(rows + 100, 7, np.float32)
    lin(cp.asarray(x), buf[50:50 + rows])
    got = cp.asnumpy(buf)
    assert (got[:50] == 7).all() and (got[50 + rows:] == 7).all()
    check_linear(got[50:50 + rows], [(w, r, t) for w, _, r, t in parts], x, b, what=stack)


@needs_gpu
@pytest.mark.parametrize('stack', STACKS)
def test_v2_l2_prefetch(stack):
    "Linear(prefetch=True) asks L2 for its weights first: the product is the same, bit for bit, and the reference's."
    spec, K = STACKS[stack]
    rng = np.random.default_rng(6)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    x = cp.asarray(rng.standard_normal(K).astype(np.float32))
    got = {}
    for pf in (False, True):
        lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, prefetch=pf)
        assert lin.prefetch == pf and ('L2 prefetch' in repr(lin)) == pf
        got[pf] = cp.asnumpy(lin(x, cp.full(lin.rows, np.nan, np.float32)))
    np.testing.assert_array_equal(got[True], got[False])
    check_linear(got[True], [(w, r, t) for w, _, r, t in parts], cp.asnumpy(x), what=f'{stack} with L2 prefetch')


@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
@pytest.mark.parametrize('stack', ['qwen-qkv', 'gemma-qkv', 'small-mixed-float-and-quant', 'small-all-types'])
def test_v2_fused_rms_norm(stack, pdl):
    """Linear(x, norm=w): the RMSNorm computed while x is staged equals ops.rms_norm, then the product (quantised and
    float parts; the reference normalises in numpy, so the CTA's own sum of squares is checked too)."""
    spec, K = STACKS[stack]
    rng = np.random.default_rng(9)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    x = (rng.standard_normal(K) * 3 + 0.5).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32)
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, pdl=pdl)
    got = cp.asnumpy(lin(cp.asarray(x), cp.full(lin.rows, np.nan, np.float32), norm=cp.asarray(nw), eps=1e-6))
    check_linear(got, [(w, r, t) for w, _, r, t in parts], ops.rms_norm(x, nw, 1e-6).astype(np.float32),
                 what=f'{stack} with the norm fused')
    with pytest.raises(ValueError, match='norm must have'):
        lin(cp.asarray(x), cp.empty(lin.rows, np.float32), norm=cp.asarray(nw[:-1]))



@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
def test_v2_staged_inputs_are_separate_kernels(pdl):
    """One Linear called with x, with norm= and with act= in turn launches three instantiations (the IN template
    parameter), each right whatever ran before it; the plain kernel is the one compiled at construction."""
    from orcd.cuda_ops import ACT_KINDS
    spec, K = STACKS['qwen-qkv']
    rng = np.random.default_rng(12)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    host = [(w, r, t) for w, _, r, t in parts]
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, pdl=pdl)
    x, nw = rng.standard_normal(2 * K).astype(np.float32), rng.uniform(0.5, 1.5, K).astype(np.float32)
    for _ in range(2):
        y = lambda: cp.full(lin.rows, np.nan, np.float32)
        check_linear(cp.asnumpy(lin(cp.asarray(x[:K]), y())), host, x[:K], what='plain')
        check_linear(cp.asnumpy(lin(cp.asarray(x[:K]), y(), norm=cp.asarray(nw), eps=1e-6)), host,
                     ops.rms_norm(x[:K], nw, 1e-6).astype(np.float32), what='norm')
        check_linear(cp.asnumpy(lin(cp.asarray(x), y(), act=ACT_KINDS['swiglu'])), host,
                     ops.swiglu(x[:K], x[K:]).astype(np.float32), what='act')
    inputs = [inp for inp in cm.V2_INPUTS if inp != 'attn']   # 'attn' needs attn_scratch: the attention-in-o tests
    kernels = {inp: lin.launch(inp)[0] for inp in inputs}
    assert len({id(k) for k in kernels.values()}) == len(inputs) and lin._kernel is kernels['x']


DOWNS = {'qwen-down-q4k': ([(896, Q4_K)], 4864), 'qwen-down-q6k': ([(896, Q6_K)], 4864),
         'gemma-down': ([(640, Q8_0)], 2048), 'small-all-types': STACKS['small-all-types']}


@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
@pytest.mark.parametrize('kind', ['swiglu', 'geglu', 'swiglu_oai'])
@pytest.mark.parametrize('stack', list(DOWNS))
def test_v2_fused_act(stack, kind, pdl):
    """Linear(gu, act=kind): the gated activation of gu = [gate | up] computed while it is staged equals the act
    kernel's reference (ops.swiglu / geglu / swiglu_oai), then the product; accumulating into y as well."""
    from orcd.cuda_ops import ACT_KINDS
    spec, K = DOWNS[stack]
    rng = np.random.default_rng(11)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    gu = (rng.standard_normal(2 * K) * 2).astype(np.float32)
    a = cm.GATED[ACT_KINDS[kind]](gu[:K], gu[K:]).astype(np.float32)
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, pdl=pdl)
    got = cp.asnumpy(lin(cp.asarray(gu), cp.full(lin.rows, np.nan, np.float32), act=ACT_KINDS[kind]))
    check_linear(got, [(w, r, t) for w, _, r, t in parts], a, what=f'{stack} with {kind} fused')
    y0 = rng.standard_normal(lin.rows).astype(np.float32)
    got = cp.asnumpy(lin(cp.asarray(gu), cp.asarray(y0), accumulate=True, act=ACT_KINDS[kind]))
    check_linear(got, [(w, r, t) for w, _, r, t in parts], a, y0=y0, what=f'{stack} with {kind} fused, accumulating')
    with pytest.raises(ValueError, match='x must have'):
        lin(cp.asarray(gu[:K]), cp.empty(lin.rows, np.float32), act=ACT_KINDS[kind])


# Gate|up stacks of the real models (n rows each, K) and a stacked one-tensor form (Phi-3's ffn_up: [gate; up]).
GLUS = {'qwen': ([(4864, Q5_0)] * 2, 896), 'smollm2': ([(1536, Q4_1)] * 2, 576), 'gemma': ([(2048, Q8_0)] * 2, 640),
        'stacked-q4k': ([(2 * 96, Q4_K)], 512), 'small-q6k': ([(32, Q6_K)] * 2, 256), 'mxfp4': ([(64, MXFP4)] * 2, 2880)}


def glu_bound(parts, x, kind, bias=None, norm=None):
    """(reference codes, scales, activation, bound): how far the dequantised staged input may be from the reference
    activation — half a code (the staging's rounding) plus what the fp32 sums of gate and up (1e-5 |W||x'| each, as
    check_linear) move the activation: |da/dg| <= 2 (|u| + 1) and |da/du| <= |g| + eg for all three kinds — plus 1e-6
    |a| for the activation's own fp32 rounding."""
    q, d, a, mag = cm.glu_ref(parts, x, kind, bias=bias, norm=norm, eps=1e-6)
    ref = cm.linear_ref(parts, x, bias=bias, norm=norm, eps=1e-6)[0]
    n = a.size
    g, u, eg, eu = ref[:n], ref[n:], 1e-5 * mag[:n], 1e-5 * mag[n:]
    return q, d, a, np.repeat(d, 32) / 2 * (1 + 1e-6) + 2 * (np.abs(u) + 1) * eg + (np.abs(g) + eg) * eu + 1e-6 * np.abs(a)


@needs_gpu
@pytest.mark.parametrize('extra', ['plain', 'bias', 'norm', 'prefetch'])
@pytest.mark.parametrize('kind', ['swiglu', 'geglu', 'swiglu_oai'])
@pytest.mark.parametrize('stack', list(GLUS))
def test_glu_matches_reference(stack, kind, extra):
    """Linear(gate|up, glu=True): the staged activation (codes · scales) within glu_bound of glu_ref, the half-block
    sums the sums of its codes; with a bias on gate and up, with the RMSNorm fused in front, and with the tile's gate
    and up rows prefetched into L2 before the wait."""
    from orcd.cuda_ops import ACT_KINDS
    spec, K = GLUS[stack]
    rng = np.random.default_rng(13)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    host = [(w, r, t) for w, _, r, t in parts]
    rows = sum(r for r, _ in spec)
    x = (rng.standard_normal(K) * 2).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32) if extra == 'bias' else None
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if extra == 'norm' else None
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, None if bias is None else cp.asarray(bias), glu=True,
                    prefetch=extra == 'prefetch')
    assert lin.prefetch == (extra == 'prefetch')
    n = rows // 2
    out = lin(cp.asarray(x), cp.full(cm.staged_size(n), np.nan, np.float32), act=ACT_KINDS[kind],
              norm=None if nw is None else cp.asarray(nw), eps=1e-6)
    gq, gd, gs = cm.unpack_staged(cp.asnumpy(out), n)
    q, d, a, bound = glu_bound(host, x, ACT_KINDS[kind], bias, nw)
    err = np.abs(gq * np.repeat(gd, 32).astype(np.float64) - a)
    assert np.isfinite(gd).all() and np.all(err <= bound), f'worst value {np.argmax(err - bound)}'
    assert np.array_equal(gs, gq.reshape(-1, 16).astype(np.int64).sum(axis=1))
    assert np.mean(gq == q) > 0.5                          # codes differ only where fp32 sums cross a rounding edge


@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
@pytest.mark.parametrize('down', ['qwen-down-q4k', 'qwen-down-q6k'])
def test_glu_then_staged_down_bit_exact(down, pdl):
    """The glu kernel's staged input is the staging's, bit for bit: against the plain gate|up kernel with the same
    threads per row and batch, the act kernel and quantize_x_ref; and the down product that copies it (staged=True)
    equals the one that computes the activation while it stages (act=), accumulating into y."""
    from orcd.cuda_ops import ACT_KINDS, act
    (gspec, K), (dspec, n) = GLUS['qwen'], DOWNS[down]
    rng = np.random.default_rng(14)
    gparts = [(wd, r, t) for i, (r, t) in enumerate(gspec) for wd in [weight(t, r, K, seed=i)[1]]]
    x, nw = rng.standard_normal(K).astype(np.float32), rng.uniform(0.5, 1.5, K).astype(np.float32)
    glu = cm.Linear(gparts, K, glu=True, pdl=pdl)
    staged = glu(cp.asarray(x), cp.full(cm.staged_size(n), np.nan, np.float32), act=0, norm=cp.asarray(nw), eps=1e-6)
    plain = cm.Linear(gparts, K, warps=glu.warps, tpr=glu.tpr[0], unroll=dict(glu.cfgs), pdl=pdl)
    gu = plain(cp.asarray(x), cp.empty(2 * n, np.float32), norm=cp.asarray(nw), eps=1e-6)
    a = cp.empty((1, n), np.float32); act('swiglu', gu.reshape(1, -1), a, n, 1)
    q, d = cm.quantize_x_ref(cp.asnumpy(a).reshape(-1), 16)
    gq, gd, gs = cm.unpack_staged(cp.asnumpy(staged), n)
    assert np.array_equal(gq, q) and np.array_equal(gd, d) and np.array_equal(gs, q.reshape(-1, 16).sum(axis=1))
    dlin = cm.Linear([(weight(t, r, n, seed=5)[1], r, t) for r, t in dspec], n, pdl=pdl)
    y0 = rng.standard_normal(dlin.rows).astype(np.float32)
    got = cp.asnumpy(dlin(staged, cp.asarray(y0), accumulate=True, staged=True))
    want = cp.asnumpy(dlin(gu, cp.asarray(y0), accumulate=True, act=ACT_KINDS['swiglu']))
    np.testing.assert_array_equal(got, want)


@needs_gpu
def test_glu_rejects_bad_arguments():
    w5, w8 = weight(Q5_0, 64, 256)[1], weight(Q8_0, 64, 256)[1]
    with pytest.raises(ValueError, match='one quantised type'):
        cm.Linear([(w5, 64, Q5_0), (w8, 64, Q8_0)], 256, glu=True)
    with pytest.raises(ValueError, match='one quantised type'):
        cm.Linear([(weight(F16, 64, 256)[1], 64, F16)] * 2, 256, glu=True)
    with pytest.raises(ValueError, match='same rows, a multiple of 32'):
        cm.Linear([(w5, 64, Q5_0), (weight(Q5_0, 32, 256)[1], 32, Q5_0)], 256, glu=True)
    with pytest.raises(ValueError, match='same rows, a multiple of 32'):
        cm.Linear([(weight(Q5_0, 48, 256)[1], 48, Q5_0)], 256, glu=True)          # 24 pairs
    with pytest.raises(ValueError, match='a tile is 64 rows'):
        cm.Linear([(w5, 64, Q5_0)] * 2, 256, glu=True, warps=8, tpr=8)
    glu = cm.Linear([(w5, 64, Q5_0)] * 2, 256, glu=True)
    x, out = cp.zeros(256, np.float32), cp.zeros(cm.staged_size(64), np.float32)
    with pytest.raises(ValueError, match='not a gated activation'):
        glu(x, out)
    with pytest.raises(ValueError, match='no accumulate'):
        glu(x, out, act=0, accumulate=True)
    with pytest.raises(ValueError, match='y must have'):
        glu(x, cp.zeros(64, np.float32), act=0)
    with pytest.raises(ValueError, match='decode kernel'):
        glu.matmul(cp.zeros((2, 256), np.float32), cp.zeros((2, 128), np.float32))
    down = cm.Linear([(weight(Q8_0, 8, 64)[1], 8, Q8_0)], 64)
    with pytest.raises(ValueError, match='x must have 38 elements'):
        down(cp.zeros(64, np.float32), cp.zeros(8, np.float32), staged=True)
    with pytest.raises(ValueError, match='no norm, no act'):
        down(out, cp.zeros(8, np.float32), staged=True, act=0)
    f16 = cm.Linear([(weight(F16, 8, 64)[1], 8, F16)], 64)
    with pytest.raises(ValueError, match='16-bit codes and quantised parts'):
        f16(out, cp.zeros(8, np.float32), staged=True)


@needs_gpu
@pytest.mark.parametrize('name,rows,K', [('Q8_0', 3000, 896), ('Q4_K', 300, 4864), ('Q6_K', 96, 2048),
                                         ('MXFP4', 700, 2880), ('Q5_0', 129, 640), ('F16', 257, 1536)])
def test_v2_launch_shapes(name, rows, K):
    """Every way of splitting the work gives the same result: 1 to 512 threads per row, 1 to 16 warps, batches of 1
    to 4 chunks, one or two CTAs per SM (the persistent loop over many tiles, next tile's loads in flight)."""
    t, rng = ALL[name], np.random.default_rng(7)
    w, wd = weight(t, rows, K)
    x = rng.standard_normal(K).astype(np.float32)
    combos = [(warps, u, cps) for warps in (1, 4, 16) for u, cps in ((1, None), (3, 1), (4, 2))]
    cm.precompile([cm.v2_expr(warps, [(t, u)], pair=t == MXFP4) for warps, u, _ in combos])      # one NVRTC call
    for warps, u, cps in combos:
        for tpr in (g for g in (1, 4, 32, 64, 512) if g <= 32 * warps):
            lin = cm.Linear([(wd, rows, t)], K, warps=warps, tpr=tpr, unroll={t: u}, ctas_per_sm=cps)
            check_linear(cp.asnumpy(lin(cp.asarray(x), cp.empty(rows, np.float32))), [(w, rows, t)], x, what=repr(lin))


@needs_gpu
def test_v2_big_input_needs_more_shared_memory():
    "K = 16384 with an F32 and a Q8_0 part stages x twice (fp32 and 16-bit): past the 48 KiB default, opted in."
    rng = np.random.default_rng(2)
    K = 16384
    parts = [(*weight(F32, 8, K), 8, F32), (*weight(Q8_0, 8, K), 8, Q8_0)]
    x = rng.standard_normal(K).astype(np.float32)
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K)
    assert lin._smem > 48 * 1024
    check_linear(cp.asnumpy(lin(cp.asarray(x), cp.empty(16, np.float32))), [(w, r, t) for w, _, r, t in parts], x)


@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
def test_v2_graph_capture_and_no_allocation(pdl):
    "A call allocates nothing and can be captured into a CUDA graph; replays give the same y."
    rng = np.random.default_rng(4)
    spec, K = STACKS['qwen-qkv']
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, pdl=pdl)
    x, y = cp.asarray(rng.standard_normal(K).astype(np.float32)), cp.zeros(lin.rows, np.float32)
    want = cp.asnumpy(lin(x, cp.empty_like(y)))
    check_linear(want, [(w, r, t) for w, _, r, t in parts], cp.asnumpy(x))
    pool = cp.get_default_memory_pool()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        used = pool.used_bytes()
        lin(x, y)
        assert pool.used_bytes() == used
        stream.begin_capture()
        for _ in range(3): lin(x, y, accumulate=True)
        graph = stream.end_capture()
        y.fill(0)
        graph.launch(stream)
        graph.launch(stream)
        stream.synchronize()
    np.testing.assert_allclose(cp.asnumpy(y), 6 * want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
def test_v2_dependent_chain_in_a_graph(pdl):
    """Each matvec reads the previous one's output, as in a decode step: with programmatic dependent launch the next
    kernel starts early, loads its weights and must wait for its input. 12 links (an ordinary CuPy kernel after
    every other one), captured as one graph and replayed: bit for bit the result of plain launches one by one
    (the kernel is deterministic), whatever the buffers held before."""
    rng = np.random.default_rng(6)
    d, f = 896, 4864
    specs = [(d, Q5_0, d), (f, Q5_0, d), (d, Q4_K, f), (d, Q8_0, d), (f, Q5_0, d), (d, Q6_K, f)] * 2
    ws = [weight(t, r, K, seed=i)[1] for i, (r, t, K) in enumerate(specs)]
    x0 = cp.asarray(rng.standard_normal(d).astype(np.float32))

    def chain(lins, bufs):
        for i, lin in enumerate(lins):
            lin(bufs[i], bufs[i + 1])
            if i % 2: cp.multiply(bufs[i + 1], 1 / 1024, out=bufs[i + 1])   # keep magnitudes moderate
        return bufs[-1]

    def fresh(): return [x0] + [cp.full(r, np.nan, np.float32) for r, _, _ in specs]
    plain = [cm.Linear([(w, r, t)], K, pdl=False) for w, (r, t, K) in zip(ws, specs)]
    want = cp.asnumpy(chain(plain, fresh()))
    assert np.isfinite(want).all() and np.abs(want).max() > 0
    lins = [cm.Linear([(w, r, t)], K, pdl=pdl) for w, (r, t, K) in zip(ws, specs)]
    bufs = fresh()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        chain(lins, bufs)
        graph = stream.end_capture()
        for fill in (np.nan, 0, 1e30):
            for b in bufs[1:]: b.fill(fill)
            graph.launch(stream)
            stream.synchronize()
            assert np.array_equal(cp.asnumpy(bufs[-1]), want), fill


@needs_gpu
def test_v2_rejects_bad_arguments():
    x = cp.zeros(512, np.float32)
    w = cp.zeros(16 * 34, np.uint8)
    with pytest.raises(ValueError, match=r'no v2 kernel for ggml type 10; have F32 \(0\)'):
        cm.Linear([(cp.zeros(84, np.uint8), 1, 10)], 256)          # Q2_K
    with pytest.raises(ValueError, match=r'Linear: K=288 is not a multiple of 256 \(Q4_K\)'):
        cm.Linear([(cp.zeros(144, np.uint8), 1, Q4_K)], 288)
    with pytest.raises(ValueError, match=r'K=48 is not a multiple of 32 \(F16\)'):
        cm.Linear([(cp.zeros(96, np.uint8), 1, F16)], 48)
    with pytest.raises(ValueError, match='Linear: w must have 1088 elements, got 544'):
        cm.Linear([(w, 2, Q8_0)], 512)
    with pytest.raises(ValueError, match='Linear: w must be 16-byte aligned'):
        cm.Linear([(cp.zeros(16 * 34 + 2, np.uint8)[2:], 1, Q8_0)], 512)
    with pytest.raises(ValueError, match='Linear: bias must have 1 elements, got 2'):
        cm.Linear([(w, 1, Q8_0)], 512, bias=cp.zeros(2, np.float32))
    lin = cm.Linear([(w, 1, Q8_0)], 512)
    with pytest.raises(TypeError, match='Linear: x must be float32'):
        lin(x.astype(np.float16), cp.zeros(1, np.float32))
    with pytest.raises(ValueError, match='Linear: y must have 1 elements, got 2'):
        lin(x, cp.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r'matmul: X must be \(T, 512\)'):
        lin.matmul(cp.zeros((2, 256), np.float32), cp.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match='matmul: mode must be one of'):
        lin.matmul(cp.zeros((2, 512), np.float32), cp.zeros((2, 1), np.float32), mode='int8')


MATMUL_TOL = {'f16': 2**-10, 'tf32': 2**-9, 'f32': 0}   # input rounding (fp16 RNE, TF32 maybe truncating): relative to |X||W|


@needs_gpu
@pytest.mark.parametrize('mode', MATMUL_TOL)
@pytest.mark.parametrize('T', [1, 7, 512])
@pytest.mark.parametrize('stack', ['qwen-qkv', 'qwen-down', 'small-all-types'])
def test_matmul(stack, T, mode):
    spec, K = STACKS[stack] if stack in STACKS else ([(896, Q4_K)], 4864)
    rng = np.random.default_rng(T)
    parts = [(*weight(t, r, K, seed=i), r, t) for i, (r, t) in enumerate(spec)]
    rows = sum(r for r, _ in spec)
    b = rng.standard_normal(rows).astype(np.float32)
    lin = cm.Linear([(wd, r, t) for _, wd, r, t in parts], K, bias=cp.asarray(b))
    X, Y0 = rng.standard_normal((T, K)).astype(np.float32), rng.standard_normal((T, rows)).astype(np.float32)
    W = np.concatenate([dequantize(w, t).reshape(r, K) for w, _, r, t in parts]).astype(np.float64)
    Y = cp.asarray(Y0)
    assert lin.matmul(cp.asarray(X), Y, accumulate=True, mode=mode) is Y
    ref, mag = X @ W.T + b + Y0, np.abs(X) @ np.abs(W).T + np.abs(b) + np.abs(Y0)
    err = np.abs(cp.asnumpy(Y) - ref)
    assert np.all(err <= (MATMUL_TOL[mode] + K * 2**-23) * mag), f'worst {np.max(err / mag):.2e} of |X||W|'
    Yn = lin.matmul(cp.asarray(X), cp.empty((T, rows), np.float32), mode=mode)    # no accumulate
    assert np.all(np.abs(cp.asnumpy(Yn) - (ref - Y0)) <= (MATMUL_TOL[mode] + K * 2**-23) * mag)


@needs_gpu
@pytest.mark.parametrize('name', ALL)
def test_dequantize_bit_exact(name):
    t = ALL[name]
    rows, K = 33, 512
    w, wd = weight(t, rows, K)
    ref = dequantize(w, t).reshape(rows, K)
    got = cp.asnumpy(cm.dequantize(wd, t, rows, K, np.float32))
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    with np.errstate(over='ignore'):
        assert np.array_equal(cp.asnumpy(cm.dequantize(wd, t, rows, K)).view(np.uint16), ref.astype(np.float16).view(np.uint16))
    out = cp.empty((rows, K), np.float32)
    assert cm.dequantize(wd, t, rows, K, np.float32, out=out) is out


@needs_gpu
@pytest.mark.parametrize('name', ALL)
def test_dequantize_rows_small(name):
    "Embedding lookup, bit-exact, repeated ids, a scale; an id out of range gives a NaN row."
    t = ALL[name]
    rows, K = 50, 256
    w, wd = weight(t, rows, K)
    ref = dequantize(w, t).reshape(rows, K)
    ids = np.array([7, 0, 49, 7, 12], np.int32)
    for scale in (1.0, 0.125, 26.5):
        got = cp.asnumpy(cm.dequantize_rows(wd, t, K, cp.asarray(ids), cp.empty((5, K), np.float32), scale))
        assert np.array_equal(got.view(np.uint32), (np.float32(scale) * ref[ids]).view(np.uint32))
    bad = cp.asnumpy(cm.dequantize_rows(wd, t, K, cp.asarray(np.array([1, 50, -1], np.int32)), cp.empty((3, K), np.float32)))
    assert np.isnan(bad[1:]).all() and np.array_equal(bad[0], ref[1])


@needs_gpu
def test_dequantize_rows_real_vocab():
    "Qwen's 151936 x 896 Q8_0 token embedding: rows from both ends of the table."
    w, wd = weight(Q8_0, 151936, 896)
    ids = np.array([0, 151935, 1234, 151935], np.int32)
    got = cp.asnumpy(cm.dequantize_rows(wd, Q8_0, 896, cp.asarray(ids), cp.empty((4, 896), np.float32)))
    rb = 896 // 32 * 34
    for i, r in enumerate(ids):
        assert np.array_equal(got[i], dequantize(w[r * rb:(r + 1) * rb], Q8_0))
