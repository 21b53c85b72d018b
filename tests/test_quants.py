"""orcd.quants against independent implementations: gguf.quants (bit for bit, random and edge blocks of
every type, every tensor of the three real models), and ggml's own C functions (`dequantize_row_*`,
`quantize_row_*_ref` from llama.cpp's libggml-base, when it can be found)."""
import ctypes
import numpy as np
import pytest
import gguf, gguf.quants
from conftest import ggml_lib, real_model
from orcd import quants
from orcd.quants import QUANT_TYPES, QuantError, dequantize, quantize, as_blocks

T = quants
ALL = sorted(QUANT_TYPES)


def ref_dequant(raw, t):
    "gguf.quants' decoding of 1-D bytes."
    if t == T.MXFP4 and not hasattr(gguf.quants, 'MXFP4'):
        pytest.skip('this gguf.quants has no MXFP4 (0.19 has it); the ggml C and by-hand tests still run')
    with np.errstate(over='ignore'):
        return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t)), np.float32).reshape(-1)


def assert_bitexact(ours, ref, raw, t, what=''):
    "Equal float32 bit patterns (any NaN equals any NaN); on failure name the worst block and its bytes."
    qt = QUANT_TYPES[t]
    assert ours.dtype == np.float32 and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.shape)
    a, b = ours.view(np.uint32), ref.view(np.uint32)
    bad = (a != b) & ~(np.isnan(ours) & np.isnan(ref))
    if not bad.any():
        return
    bad_blocks = bad.reshape(-1, qt.block_size)
    with np.errstate(invalid='ignore', over='ignore'):
        diff = np.where(bad, np.abs(ours.astype(np.float64) - ref.astype(np.float64)), 0).reshape(-1, qt.block_size)
    diff = np.where(np.isnan(diff), np.inf, diff).max(axis=1)
    worst = int(np.argmax(np.where(bad_blocks.any(1), diff, -1)))
    blk = raw.reshape(-1)[worst * qt.type_size:(worst + 1) * qt.type_size]
    j = np.flatnonzero(bad_blocks[worst])
    pytest.fail(f'{qt.name}{what}: {bad_blocks.any(1).sum()} of {len(bad_blocks)} blocks differ; worst block '
                f'{worst} (max abs diff {diff[worst]:g}; values {j[:8].tolist()} ours {ours.reshape(-1, qt.block_size)[worst, j[:4]]} '
                f'ref {ref.reshape(-1, qt.block_size)[worst, j[:4]]}); bytes {bytes(blk).hex()}')


# ---------------------------------------------------------------- random and edge blocks

F16_EDGES = np.array([0.0, -0.0, 6.1e-5, -6.1e-5, 6e-8, -6e-8, 65504, -65504, 1, -1, 0.5, 3.14], np.float16)


def random_blocks(t, n, seed):
    "n random blocks of type t: random code bytes, finite f16 scales (random and edge values), edge cases."
    qt, rng = QUANT_TYPES[t], np.random.default_rng(seed)
    if qt.block_size == 1:                                   # plain floats: every bit pattern there is
        if t == T.F32:
            raw = rng.integers(0, 2**32, n, dtype=np.uint32).view(np.uint8)
            return np.concatenate([raw, np.array([0, -0.0, np.inf, -np.inf, np.nan, 1e-45], '<f4').view(np.uint8)])
        return np.arange(2**16, dtype='<u2').view(np.uint8).copy()      # F16 and BF16: all 65536
    raw = rng.integers(0, 256, n * qt.type_size, dtype=np.uint8)
    b = raw.view(qt.block)
    for f in qt.block.names:
        if qt.block[f].base == np.dtype('<f2'):
            v = (rng.standard_normal(b[f].shape) * 10.0 ** rng.integers(-4, 3, b[f].shape)).astype(np.float16)
            k = min(v.size, len(F16_EDGES))
            v.reshape(-1)[:k] = F16_EDGES[:k]               # ±0, subnormals, ±max in the first blocks
            v[~np.isfinite(v)] = 1
            b[f] = v
    if t == T.MXFP4:
        b['e'][:256] = np.arange(256)                       # every exponent, 0 / 1 / 127 / 128 / 254 / 255 incl.
        b['qs'][256] = 0x88                                 # code 8, E2M1's "-0"
        b['qs'][257] = np.arange(16, dtype=np.uint8) * 17   # every code in both nibbles
    else:
        qs = [f for f in qt.block.names if f in ('qs', 'ql')][0]
        u8 = lambda f, i: b[f][i].view(np.uint8)            # a field of block i as bytes (int8 fields too)
        u8(qs, -1)[:] = 0xFF                                # all-ones codes, all-zero codes, int8 −128
        u8(qs, -2)[:] = 0
        u8(qs, -3)[:] = 0x80
        if 'qh' in qt.block.names:
            u8('qh', -1)[:], u8('qh', -2)[:] = 0xFF, 0
        if 'scales' in qt.block.names:
            u8('scales', -4)[:] = 0xFF                      # every 6-bit scale and min = 63 (Q6_K: −1)
            u8('scales', -5)[:] = np.arange(qt.block['scales'].shape[0]) * 37 % 256
    return raw


@pytest.mark.parametrize('t', ALL, ids=[QUANT_TYPES[t].name for t in ALL])
def test_random_blocks_match_gguf(t):
    raw = random_blocks(t, 4096, seed=t)
    assert_bitexact(dequantize(raw, t), ref_dequant(raw, t), raw, t)


def test_mxfp4_edges_by_hand():
    "The spec in models.md, independently of any implementation: 2^(e−128) × doubled E2M1."
    table = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]
    for e in (0, 1, 2, 127, 128, 129, 254):                 # e = 254: |codes| ≥ 4 overflow to ±inf
        raw = np.array([e] + [j | (15 - j) << 4 for j in range(16)], np.uint8)
        want = np.array([table[j] for j in range(16)] + [table[15 - j] for j in range(16)], np.float64) * 2.0 ** (e - 128)
        with np.errstate(over='ignore'):
            want = want.astype(np.float32)
        got = dequantize(raw, T.MXFP4)
        assert (got == want).all(), e
        assert not np.signbit(got[8]) and got[8] == 0       # code 8 is +0, as in ggml
    raw = np.array([255] + [7 | 15 << 4] * 16, np.uint8)    # e = 255: 2^127; ±12·2^127 overflows to ±inf
    got = dequantize(raw, T.MXFP4)
    assert (got[:16] == np.inf).all() and (got[16:] == -np.inf).all()


def test_q4_k_scale_unpacking_by_hand():
    "sc/m for j ≥ 4 take their high 2 bits from the top of bytes 0–7 (get_scale_min_k4)."
    s = np.zeros((1, 12), np.uint8)
    s[0, :4] = [1 | 1 << 6, 2 | 2 << 6, 3 | 3 << 6, 4]   # sc0..3 = 1..4; high bits of sc4..6 = 1..3
    s[0, 4:8] = [5, 6, 7 | 3 << 6, 8]                    # m0..3 = 5..8; high bits of m6 = 3
    s[0, 8:] = [0x9A, 0xBC, 0xDE, 0xF0]                  # lo nibble → sc4..7, hi nibble → m4..7
    sc, m = quants.unpack_k_scales(s)
    assert sc.tolist() == [[1, 2, 3, 4, 0xA | 16, 0xC | 32, 0xE | 48, 0]]
    assert m.tolist() == [[5, 6, 7, 8, 9, 0xB, 0xD | 48, 0xF]]


# ---------------------------------------------------------------- ggml's C functions (llama.cpp)

def _ggml_lib():
    "libggml-base from llama-cpp-python ($ORCD_GGML_LIB or the llama-cpp reference environment); (CDLL or None, why not)."
    path, why = ggml_lib()
    if path is None: return None, why
    try: return ctypes.CDLL(str(path)), ''
    except OSError as e: return None, f'{path} does not load ({e})'


GGML, _why_no_ggml = _ggml_lib()
needs_ggml = pytest.mark.skipif(GGML is None, reason=_why_no_ggml)
_C_NAMES = {T.Q4_0: 'q4_0', T.Q4_1: 'q4_1', T.Q5_0: 'q5_0', T.Q5_1: 'q5_1', T.Q8_0: 'q8_0', T.Q4_K: 'q4_K',
            T.Q5_K: 'q5_K', T.Q6_K: 'q6_K', T.MXFP4: 'mxfp4'}


def ggml_dequant(raw, t):
    n = raw.size // QUANT_TYPES[t].type_size * QUANT_TYPES[t].block_size
    out = np.empty(n, np.float32)
    fn = {T.F16: 'ggml_fp16_to_fp32_row', T.BF16: 'ggml_bf16_to_fp32_row'}.get(t) or f'dequantize_row_{_C_NAMES[t]}'
    getattr(GGML, fn)(raw.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n))
    return out


def ggml_quant(x, t):
    qt = QUANT_TYPES[t]
    out = np.zeros(x.size // qt.block_size * qt.type_size, np.uint8)
    fn = {T.BF16: 'ggml_fp32_to_bf16_row_ref', T.F16: 'ggml_fp32_to_fp16_row'}.get(t) or f'quantize_row_{_C_NAMES[t]}_ref'
    getattr(GGML, fn)(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
    return out


@needs_ggml
@pytest.mark.parametrize('t', [t for t in ALL if t != T.F32], ids=[QUANT_TYPES[t].name for t in ALL if t != T.F32])
def test_random_blocks_match_ggml_c(t):
    raw = random_blocks(t, 4096, seed=100 + t)
    assert_bitexact(dequantize(raw, t), ggml_dequant(raw, t), raw, t, ' vs ggml C')


# ---------------------------------------------------------------- the real models

def model_tensors(name):
    "(name, ggml_type, raw bytes) of every tensor, through orcd.gguf when it exists, else gguf.GGUFReader."
    from orcd.gguf import GGUFFile
    gf = GGUFFile(real_model(name))
    return [(n, ti.ggml_type, gf.raw(n)) for n, ti in gf.tensors.items()]


@pytest.mark.parametrize('name', ['smollm2-135m-instruct', 'gemma-3-270m', 'qwen2.5-coder-0.5b-instruct'])
def test_real_model_tensors_match_gguf(name):
    "Every tensor of the model, bit for bit (Qwen: every tensor too; it stays within the time budget)."
    tensors = model_tensors(name)
    assert tensors
    seen = set()
    for tname, t, raw in tensors:
        assert t in QUANT_TYPES, (tname, t)
        seen.add(QUANT_TYPES[t].name)
        assert_bitexact(dequantize(raw, t), ref_dequant(raw, t), raw, t, f' in {name}:{tname}')
    assert 'F32' in seen and 'Q8_0' in seen and len(seen) >= 3, seen


# ---------------------------------------------------------------- quantisers

def quant_inputs(t, seed=0):
    "Normal values at several magnitudes, plus blocks of zeros, halves, near-powers of two and ties."
    qt, rng = QUANT_TYPES[t], np.random.default_rng(seed)
    bs = max(qt.block_size, 32)
    x = (rng.standard_normal((256, bs)) * 10.0 ** rng.integers(-3, 4, (256, 1))).astype(np.float32)
    x[0] = 0
    x[1] = np.arange(bs) - bs / 2 + 0.5                          # .5 ties for roundf
    x[2] = np.float32(4.0) * np.nextafter(np.float32(1), np.float32(0))   # just below a power of two
    x[2, ::3] = -x[2, ::3]
    x[3] = np.float32(2) ** rng.integers(-10, 10, bs)            # exact powers of two
    x[4] = (np.arange(bs) % 16 - 8) * 0.75                       # MXFP4 ties (midpoints of the table)
    x[5, :] = 1e-3
    x[5, 7] = -127.0                                             # a negative maximum
    return x.reshape(-1)


QUANTISABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.MXFP4, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]


@pytest.mark.parametrize('t', QUANTISABLE, ids=[QUANT_TYPES[t].name for t in QUANTISABLE])
def test_quantize_matches_gguf_and_round_trips(t):
    qt, x = QUANT_TYPES[t], quant_inputs(t)
    q = quantize(x, t)
    assert q.dtype == np.uint8 and q.ndim == 1 and q.size == x.size // qt.block_size * qt.type_size
    with np.errstate(divide='ignore', over='ignore', invalid='ignore'):
        ref = np.ascontiguousarray(gguf.quants.quantize(x.reshape(-1, max(qt.block_size, 32)),
                                                        gguf.GGMLQuantizationType(t))).view(np.uint8).reshape(-1)
    assert (q == ref).all(), f'{qt.name}: first differing byte {np.flatnonzero(q != ref)[:1]}'
    y = dequantize(q, t)
    xb, yb = x.reshape(-1, 32), y.reshape(-1, 32)
    amax = np.abs(xb).max(1, keepdims=True)
    if t in (T.F32, T.F16, T.BF16):   # F32 exact; F16/BF16: half an ulp (F16: absolute 2^-25 in its subnormals)
        ulp = {T.F32: 0, T.F16: 2**-10, T.BF16: 2**-7}[t]
        assert (np.abs(yb - xb) <= np.maximum(np.abs(xb) * ulp / 2, 2**-25 if t == T.F16 else 0)).all(), qt.name
        return
    # Worst error per block, derived from the quantiser: Q8_0/Q4_1/Q5_1 round to the nearest step (half a
    # step); Q4_0/Q5_0 map the opposite extreme −max to the clipped top code (one step, d = max/−8 or /−16);
    # MXFP4 clips values above 12·2^(e−128) = 1.5·2^⌊log2 amax⌋ to it (at most 2^⌊log2 amax⌋/2).
    # Scales stored as f16 add at most 2^−11 relative per scale/min term: ≤ amax·2^−9 in all.
    rng_ = xb.max(1, keepdims=True) - xb.min(1, keepdims=True)
    bound = {T.Q8_0: amax / 127 / 2, T.Q4_1: rng_ / 15 / 2, T.Q5_1: rng_ / 31 / 2, T.Q4_0: amax / 8,
             T.Q5_0: amax / 16, T.MXFP4: 2.0 ** np.floor(np.log2(np.maximum(amax, 1e-30))) / 2}[t]
    f16_slop = 0 if t == T.MXFP4 else amax * 2**-9
    assert (np.abs(yb - xb) <= bound + f16_slop).all(), qt.name


@needs_ggml
@pytest.mark.parametrize('t', [T.F16, T.BF16, T.Q8_0, T.MXFP4, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1],
                         ids=['F16', 'BF16', 'Q8_0', 'MXFP4', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1'])
def test_quantize_matches_ggml_c(t):
    "Bit for bit with llama.cpp's reference quantisers (quantize_row_*_ref, the f16/bf16 row converters)."
    x = quant_inputs(t, seed=1)
    if t in (T.BF16, T.F16):
        x = np.concatenate([x, np.array([np.nan, -np.inf, 3.0e38, -0.0], np.float32),
                            np.array([0x7F800001, 0xFFC00001], np.uint32).view(np.float32)])
    ours, ref = quantize(x, t), ggml_quant(x, t)
    if t == T.F16:   # a signalling NaN becomes some f16 NaN (numpy keeps a payload bit, ggml's F16C quiets it)
        a, b = ours.view(np.float16), ref.view(np.float16)
        assert ((ours.view('<u2') == ref.view('<u2')) | (np.isnan(a) & np.isnan(b))).all()
    else:
        assert (ours == ref).all()


def test_quantize_mxfp4_below_powers_of_two():
    "amax just below 2^k (where log2f may round up to k) and far from it, against ggml's rule by hand."
    rng = np.random.default_rng(3)
    k = rng.integers(-20, 20, 512)
    amax = np.float32(2.0) ** k.astype(np.float32) * np.where(rng.random(512) < 0.5, np.float32(1 - 2**-24), np.float32(1.3))
    x = rng.uniform(-1, 1, (512, 32)).astype(np.float32) * amax[:, None]
    x[:, 5] = amax
    e = quantize(x, T.MXFP4).view(QUANT_TYPES[T.MXFP4].block)['e']
    want = (np.floor(np.log2(amax)) - 2 + 127).astype(np.uint8)      # the formula, float32 log2 as ggml's log2f
    assert (e == want).all()
    if GGML is not None:
        assert (quantize(x, T.MXFP4) == ggml_quant(x.reshape(-1), T.MXFP4)).all()


K_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]


def k_inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 256)) * rng.uniform(0.01, 3, (512, 1))
    x[0], x[1] = 0, np.abs(x[1])                                  # an all-zero block, an all-positive one
    x[2, :128] = 0                                                # zero sub-blocks beside non-zero ones
    return x.astype(np.float32).reshape(-1)


def test_k_quantisers_round_trip():
    "Q4_K/Q5_K/Q6_K: zeros stay zero, gguf.quants decodes our bytes as we do, more bits → smaller error."
    x = k_inputs(7)
    rmse = {}
    for t in K_TYPES:
        q = quantize(x, t)
        assert q.size == x.size // 256 * QUANT_TYPES[t].type_size
        y = dequantize(q, t)
        assert_bitexact(y, ref_dequant(q, t), q, t)
        assert (y[:256] == 0).all() and (y[256 * 2:256 * 2 + 128] == 0).all()
        rmse[t] = np.sqrt(np.mean((y - x) ** 2))
    # Q4_K: a step is the sub-block range (≈ 4σ for 32 normal values) / 15, a rounding error's RMS is
    # step/√12 ≈ σ/13; a packing mistake scrambles values and gives ≈ σ.
    sigma = np.sqrt(np.mean(x ** 2))
    assert rmse[T.Q6_K] < rmse[T.Q5_K] < rmse[T.Q4_K] < sigma / 8, rmse


@needs_ggml
@pytest.mark.parametrize('t', K_TYPES, ids=['Q4_K', 'Q5_K', 'Q6_K'])
def test_k_quantisers_close_to_llama_cpp(t):
    "Our plain min/max fit against llama.cpp's searched scales (quantize_row_*_ref): ≤ 15 % more RMS error."
    x = k_inputs(8)
    ours, ref = dequantize(quantize(x, t), t), dequantize(ggml_quant(x, t), t)
    r_ours, r_ref = np.sqrt(np.mean((ours - x) ** 2)), np.sqrt(np.mean((ref - x) ** 2))
    assert r_ours <= 1.15 * r_ref, (r_ours, r_ref)


# ---------------------------------------------------------------- contract and errors

def test_type_table_matches_gguf():
    for t, q in QUANT_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t)] == (q.block_size, q.type_size)
        assert q.block.itemsize == q.type_size and q.name == gguf.GGMLQuantizationType(t).name
    assert {q.name for q in QUANT_TYPES.values()} == {'F32', 'F16', 'BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1',
                                                     'Q8_0', 'Q4_K', 'Q5_K', 'Q6_K', 'MXFP4'}
    assert quants.quant_type('Q4_K') is QUANT_TYPES[12]


def test_inputs_and_errors():
    raw = random_blocks(T.Q4_K, 8, seed=9)
    want = dequantize(raw, T.Q4_K)
    assert want.shape == (2048,) and want.dtype == np.float32
    assert (dequantize(raw.tobytes(), T.Q4_K) == want).all()                 # bytes
    assert (dequantize(memoryview(raw.tobytes()), 'Q4_K') == want).all()     # memoryview, name
    assert (dequantize(raw.reshape(8, -1), T.Q4_K) == want).all()            # 2-D rows of bytes
    assert dequantize(raw[:0], T.Q4_K).shape == (0,)
    assert as_blocks(raw, T.Q4_K).shape == (8,)
    with pytest.raises(QuantError, match=r'Q4_K data of 143 bytes is not a whole number of 144-byte blocks'):
        dequantize(raw[:143], T.Q4_K)
    with pytest.raises(QuantError, match=r'ggml type 23 \(IQ4_XS\) is not supported.*Q4_K \(12\)'):
        dequantize(raw, 23)
    with pytest.raises(QuantError, match='not supported'):
        dequantize(raw, 999)
    with pytest.raises(QuantError, match='not supported'):
        dequantize(raw, 'Q9_9')
    with pytest.raises(QuantError, match='whole blocks of 256 values; got 32'):
        quantize(np.zeros(32, np.float32), T.Q4_K)
    with pytest.raises(QuantError, match=r'ggml type 10 \(Q2_K\) is not supported'):
        quantize(np.zeros(256, np.float32), 10)
    with pytest.raises(QuantError, match='whole blocks of 32 values; got 33'):
        quantize(np.zeros(33, np.float32), T.Q8_0)
    with pytest.raises(ValueError):                                          # QuantError is a ValueError
        dequantize(raw, -1)


def test_large_tensor_chunks_seamlessly():
    "More blocks than one decoding slice: the slices join without gaps or overlaps."
    n = quants._CHUNK_VALUES // 32 * 3 + 7
    raw = random_blocks(T.Q8_0, n, seed=5)
    assert_bitexact(dequantize(raw, T.Q8_0), ref_dequant(raw, T.Q8_0), raw, T.Q8_0)
