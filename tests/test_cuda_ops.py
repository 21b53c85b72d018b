"""The non-matvec CUDA ops (norms, RoPE + KV write, attention, activations, argmax, sampler) against their numpy
references over the shapes of the real models (GPU tests skipped without a GPU); the CPU-side references checked
against the engine where they are ours."""
import os, re
import numpy as np, pytest
from orcd import cuda, ops, cuda_ops as co
from orcd.engine import Sampler, SamplingParams

cp, why = cuda.cuda_device()
needs_gpu = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')
if cp is not None and os.environ.get('ORCD_NO_POOL'):
    cp.cuda.set_allocator(None)          # under compute-sanitizer: every array its own allocation

EPS32 = 2.0 ** -24                       # fp32 unit roundoff
# name: d_model, heads, kv heads, head dim, ffn, rope ('neox' | 'normal' | None), rope_dim, window, sinks, act
MODELS = {
    'qwen2.5-0.5b': dict(d=896, nh=14, nkv=2, D=64, ffn=4864, rope='neox', rope_dim=64, window=0, sinks=False, act='swiglu'),
    'smollm2-135m': dict(d=576, nh=9, nkv=3, D=64, ffn=1536, rope='normal', rope_dim=64, window=0, sinks=False, act='swiglu'),
    'gemma3-270m': dict(d=640, nh=4, nkv=1, D=256, ffn=2048, rope='neox', rope_dim=256, window=512, sinks=False, act='geglu'),
    'gpt-oss': dict(d=2880, nh=64, nkv=8, D=64, ffn=2880, rope='neox', rope_dim=64, window=128, sinks=True, act='swiglu_oai'),
    'phi3': dict(d=3072, nh=32, nkv=32, D=96, ffn=8192, rope='neox', rope_dim=96, window=0, sinks=False, act='swiglu'),
    'gpt2': dict(d=768, nh=12, nkv=12, D=64, ffn=3072, rope=None, rope_dim=0, window=0, sinks=False, act='gelu'),
}


def report(name, got, ref):
    err = np.abs(got.astype(np.float64) - ref)
    print(f'{name}: max abs {err.max():.2e}, max rel {(err / np.maximum(np.abs(ref), 1e-30)).max():.2e}')


def assert_close(got, ref, rtol, atol, name=''):
    assert np.isfinite(got).all(), name
    bad = np.abs(got.astype(np.float64) - ref) > atol + rtol * np.abs(ref)
    assert not bad.any(), f'{name}: {bad.sum()} values off, first at {np.argwhere(bad)[0]}: {got[bad][0]} vs {ref[bad][0]}'


# -- CPU: the references and the launchers' argument checks ------------------------------------------------------

def test_kernel_sources():
    for f, names in {'norm_rows': ['norm_rows', 'head_rms_norm'], 'rope_kv': ['rope_kv'],
                     'attention': ['attention', 'attention_short', 'attention_merge'], 'attn_o': ['attn_o'],
                     'attention_mma': ['attention_mma_64', 'attention_mma_96', 'attention_mma_128'], 'elementwise': ['elementwise', 'act'],
                     'sample': ['sample', 'sample_exp', 'sample_fast', 'sample_logits', 'sample_penalties', 'argmax_blocks_f32', 'argmax_final_f32',
                                'argmax_blocks_f64', 'argmax_final_f64']}.items():
        src = cuda.kernel_source(f)
        for n in names: assert re.search(rf'extern "C" __global__ void (__launch_bounds__\(.*?\) )?{n}\(', src), (f, n)


@pytest.mark.parametrize('seed', range(40))
def test_sample_token_ref_is_the_sampler(seed):
    "The CPU helper (Sampler.distribution + the cumulative rule at a given u) draws what Sampler.sample draws."
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(500) * rng.uniform(0.5, 4)).astype(np.float32)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05),
              SamplingParams(temperature=1.3, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2),
              SamplingParams(temperature=0.5, top_p=0.5)][seed % 4]
    history = rng.integers(0, 500, 30)
    s = Sampler(params, banned=range(480, 500), history=history, seed=seed)
    allowed = np.ones(500, np.uint8); allowed[480:] = 0
    u = np.random.default_rng(seed).random() if params.temperature else 0.0
    ids, counts = zip(*s.counts.items())
    assert co.sample_token_ref(logits, allowed, params, u, ids, counts) == s.sample(logits)


def test_attention_ref_is_ops_attention():
    rng = np.random.default_rng(0)
    kc = rng.standard_normal((2, 16, 8)).astype(np.float16); vc = rng.standard_normal((2, 16, 8)).astype(np.float16)
    qkv = rng.standard_normal((3, (4 + 4) * 8)).astype(np.float32)
    got = co.attention_ref(qkv, kc, vc, [4, 5, 6], 0.3, 4, 2, 8, 8, window=3)
    q = qkv[:, :32].reshape(3, 4, 8)
    k = kc[:, :7].astype(np.float32); v = vc[:, :7].astype(np.float32)
    for t, p in enumerate([4, 5, 6]):            # one query at a time, keys p-2..p only
        for h in range(4):
            a = q[t, h] @ k[h // 2, p - 2:p + 1].T * np.float32(0.3)
            e = np.exp(a - a.max()); want = (e / e.sum()) @ v[h // 2, p - 2:p + 1]
            np.testing.assert_allclose(got[t, h * 8:(h + 1) * 8], want, rtol=1e-5, atol=1e-6)


def test_act_rejects_unknown_kind():
    with pytest.raises(ValueError, match="act: unknown kind 'relu'; have swiglu, geglu, swiglu_oai, gelu"):
        co.act('relu', None, None, 4, 1)


# -- GPU: norms --------------------------------------------------------------------------------------------------

NORM_TOL = dict(rtol=2 ** -19, atol=0)      # ~16 eps: sums of d squares in another order, sqrt, divide, multiply


@needs_gpu
@pytest.mark.parametrize('model', MODELS)
@pytest.mark.parametrize('T', [1, 7])
def test_norms(model, T):
    d, rng = MODELS[model]['d'], np.random.default_rng(T)
    x = (rng.standard_normal((T, d)) * 3 + 0.5).astype(np.float32)
    r, w, b = rng.standard_normal((T, d)).astype(np.float32), rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    for layer in (False, True):
        for res in (None, r):
            for wt in (w, None):
                X, out = cp.asarray(x), cp.empty((T, d), np.float32)
                xr = x + r if res is not None else x
                if layer:
                    co.layer_norm(X, None if wt is None else cp.asarray(wt), cp.asarray(b), out, 1e-5,
                                  None if res is None else cp.asarray(res))
                    ref = ops.layer_norm(xr, wt if wt is not None else np.float32(1), b, 1e-5)
                else:
                    co.rms_norm(X, None if wt is None else cp.asarray(wt), out, 1e-6, None if res is None else cp.asarray(res))
                    ref = ops.rms_norm(xr, wt, 1e-6)
                np.testing.assert_array_equal(cp.asnumpy(X), xr)      # the fused residual add, exact
                # LayerNorm's centring: an error of a few eps * |mean| in absolute terms
                assert_close(cp.asnumpy(out), ref, NORM_TOL['rtol'], 2 ** -19 * np.abs(ref).max() if layer else 0,
                             f'{model} layer={layer} res={res is not None} w={wt is not None}')
    X = cp.asarray(x)
    co.rms_norm(X, cp.asarray(w), X, 1e-6)                                      # out is x
    assert_close(cp.asnumpy(X), ops.rms_norm(x, w, 1e-6), **NORM_TOL)
    report(f'rms_norm {model} T={T}', cp.asnumpy(X), ops.rms_norm(x, w, 1e-6))


@needs_gpu
@pytest.mark.parametrize('T', [1, 5])
@pytest.mark.parametrize('nh,nkv,D', [(4, 1, 256), (16, 8, 128), (14, 2, 64)], ids=['gemma3-270m', 'qwen3-like', 'qwen-shaped'])
def test_head_rms_norm(T, nh, nkv, D):
    rng = np.random.default_rng(D)
    row = (nh + 2 * nkv) * D
    qkv = (rng.standard_normal((T, row)) * 2).astype(np.float32)
    wq, wk = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    buf = cp.asarray(qkv)
    co.head_rms_norm(buf, cp.asarray(wq), nh, D, 1e-6, 0, row, T)
    co.head_rms_norm(buf, cp.asarray(wk), nkv, D, 1e-6, nh * D, row, T)
    want = qkv.copy()
    want[:, :nh * D] = ops.rms_norm(qkv[:, :nh * D].reshape(T, nh, D), wq, 1e-6).reshape(T, -1)
    want[:, nh * D:(nh + nkv) * D] = ops.rms_norm(qkv[:, nh * D:(nh + nkv) * D].reshape(T, nkv, D), wk, 1e-6).reshape(T, -1)
    got = cp.asnumpy(buf)
    np.testing.assert_array_equal(got[:, (nh + nkv) * D:], qkv[:, (nh + nkv) * D:])   # v untouched
    assert_close(got, want, **NORM_TOL)
    report(f'head_rms_norm {nh}+{nkv}x{D} T={T}', got, want)


# -- GPU: RoPE + KV cache ------------------------------------------------------------------------------------------

ROPE_CASES = [(m, T) for m in MODELS for T in (1, 5)] + [('partial-neox', 3), ('partial-normal', 3)]


@needs_gpu
@pytest.mark.parametrize('model,T', ROPE_CASES, ids=[f'{m}-T{T}' for m, T in ROPE_CASES])
def test_rope_kv_bit_exact(model, T):
    "q, k rotated and both caches written bit for bit as numpy does (the products rounded before the sum)."
    if model.startswith('partial'):
        c = dict(nh=6, nkv=2, D=64, rope_dim=32, rope='neox' if model.endswith('neox') else 'normal')
    else: c = MODELS[model]
    nh, nkv, D, rd, n_ctx = c['nh'], c['nkv'], c['D'], c['rope_dim'], 1000
    rng = np.random.default_rng(T + D)
    qkv = (rng.standard_normal((T, (nh + 2 * nkv) * D)) * 4).astype(np.float32)
    pos = rng.choice(n_ctx, T, replace=False).astype(np.int32)
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), rd, 10000.0) if c['rope'] else (None, None)
    kc = rng.standard_normal((nkv, n_ctx, D)).astype(np.float16); vc = rng.standard_normal((nkv, n_ctx, D)).astype(np.float16)
    Q, K, V = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc)
    co.rope_kv(Q, cp.asarray(pos), None if cos is None else cp.asarray(cos), None if sin is None else cp.asarray(sin),
               K, V, nh, nkv, D, D, rd, c['rope'] == 'neox', T)
    want = co.rope_kv_ref(qkv, pos, cos, sin, kc, vc, nh, nkv, D, D, rd, c['rope'] == 'neox')
    for got, w, n in zip((Q, K, V), want, ('qkv', 'k_cache', 'v_cache')):
        np.testing.assert_array_equal(cp.asnumpy(got), w, err_msg=n)
    # and the fp16 cache is within fp16's half-step of the fp32 rotated k
    k32 = want[0][:, nh * D:(nh + nkv) * D].reshape(T, nkv, D).transpose(1, 0, 2)
    got_k = cp.asnumpy(K)[:, pos].astype(np.float32)
    assert np.all(np.abs(got_k - k32) <= 2 ** -11 * np.abs(k32) + 2 ** -25)


# -- GPU: attention ------------------------------------------------------------------------------------------------

# fp32 accumulation of up to 256 products per score and of the weighted values; on N(0, 1) data
ATT_TOL = dict(rtol=2 ** -16, atol=2 ** -16)


def att_data(rng, T, nh, nkv, D, n_ctx, sinks):
    qkv = rng.standard_normal((T, (nh + 2 * nkv) * D)).astype(np.float32)
    kc = rng.standard_normal((nkv, n_ctx, D)).astype(np.float16)
    vc = rng.standard_normal((nkv, n_ctx, D)).astype(np.float16)
    sk = rng.standard_normal(nh).astype(np.float32) * 2 if sinks else None
    return qkv, kc, vc, sk


DECODE = [(m, S, w) for m in MODELS for S in (1, 7, 100, 4096) for w in sorted({0, MODELS[m]['window']})]
DECODE += [('g16', 300, 0), ('g16', 300, 50)]          # 16 query heads per KV head: two blocks per KV head
DECODE += [('g8d256', 100, 0), ('g8d256', 1000, 0)]    # 8 heads of 256 per KV head: 4 rows per block (1024 outputs)
DECODE += [('g4d32', 1, 0), ('g4d32', 100, 0), ('g4d32', 300, 0)]   # heads of 32 dims: attend_short<32>, then splits


def heads(model):
    if model == 'g16': return dict(nh=16, nkv=1, D=64, sinks=True)
    if model == 'g8d256': return dict(nh=16, nkv=2, D=256, sinks=False)
    if model == 'g4d128': return dict(nh=8, nkv=2, D=128, sinks=True)
    if model == 'g4d32': return dict(nh=8, nkv=2, D=32, sinks=True)     # attend_short's other head size
    return MODELS[model]


# attend_short off; up to 256 keys (the split kernels past them); at every length, in splits of at least 256 keys;
# attention_gqa (where gqa_heads takes the heads; with the merge kernel) at every length
SHORT = pytest.mark.parametrize('short_keys,short_splits,gqa', [(0, 0, False), (256, 0, False), (256, None, False),
                                                                (256, None, True)],
                                ids=['split', 'short', 'short_splits', 'gqa'])


@needs_gpu
@SHORT
@pytest.mark.parametrize('fused_merge', [False, True], ids=['merge_kernel', 'fused_merge'])
@pytest.mark.parametrize('model,S,window', DECODE, ids=[f'{m}-S{S}' + (f'-w{w}' if w else '') for m, S, w in DECODE])
def test_decode_attention(model, S, window, fused_merge, short_keys, short_splits, gqa):
    """Against attention_ref; the splits merged by attention_merge, or by the last split itself (fused_merge); with
    short_keys, up to 256 visible keys by one block per query head (attend_short), or every length in splits of it
    (short_splits; not with fused_merge); or a block per KV head and split for all its query heads (attention_gqa:
    heads of 64, at most 8 a KV head; not with fused_merge)."""
    c = heads(model); nh, nkv, D = c['nh'], c['nkv'], c['D']
    rng, n_ctx = np.random.default_rng(S + nh), S + 4
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, c['sinks'])
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, D ** -0.5, fused_merge=fused_merge, short_keys=short_keys,
                             short_splits=short_splits, gqa=gqa)
    assert att.short_keys == (short_keys if D in (32, 64) else 0)       # attend_short's heads: 32 or 64 dims
    assert (att.gqa_splits > 0) == (gqa and not fused_merge and D == 64 and nh // nkv <= 8 and co.mma_capable())
    assert (att.short_splits > 0) == (att.short_keys > 0 and short_splits is None and not fused_merge and nh // nkv < 8)
    out = cp.full(nh * D, np.nan, np.float32)
    att(cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray([S - 1], np.int32), out, window,
        None if sk is None else cp.asarray(sk))
    ref = co.attention_ref(qkv, kc, vc, [S - 1], D ** -0.5, nh, nkv, D, D, window, sk)[0]
    got = cp.asnumpy(out)
    report(f'decode {model} S={S} window={window}', got, ref)
    assert_close(got, ref, **ATT_TOL, name=model)


@needs_gpu
@pytest.mark.parametrize('heads_of', [(14, 2, 64), (64, 8, 64), (8, 8, 64), (8, 2, 32)], ids=['qwen', 'gpt-oss', 'mha', 'd32'])
def test_decode_attention_without_the_merge(heads_of):
    """merge=False at a short context (at most short_keys visible keys: a graph captured for one): attend_short writes
    out itself — the same values, bit for bit, as with the merge launched, for positions up to short_keys, with sinks
    and a window, RoPE fused; refused with skip_keys or without attend_short."""
    nh, nkv, D = heads_of
    rng, n_ctx = np.random.default_rng(nh + D), 300
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, True)
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), D, 10000.0)
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125, short_keys=256, gqa=False)
    rope, SK = (cp.asarray(cos), cp.asarray(sin), D, True), cp.asarray(sk)
    for S, win in ((1, 0), (40, 0), (200, 128), (256, 0)):
        p = cp.asarray([S - 1], np.int32)
        outs = []
        for merge in (True, False):
            K, V, out = cp.asarray(kc), cp.asarray(vc), cp.full(nh * D, np.nan, np.float32)
            att(cp.asarray(qkv), K, V, p, out, win, SK, rope=rope, merge=merge)
            outs.append((cp.asnumpy(out), cp.asnumpy(K), cp.asnumpy(V)))
        for a, b in zip(*outs): np.testing.assert_array_equal(a, b)
        qkv_r, kc_r, vc_r = co.rope_kv_ref(qkv, np.array([S - 1]), cos, sin, kc, vc, nh, nkv, D, D, D, True)
        ref = co.attention_ref(qkv_r, kc_r, vc_r, [S - 1], 0.125, nh, nkv, D, D, win, sk)[0]
        assert_close(outs[1][0], ref, **ATT_TOL, name=f'S={S} window={win}')
    args = (cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray([0], np.int32), cp.empty(nh * D, np.float32))
    with pytest.raises(ValueError): att(*args, merge=False, skip_keys=64)
    with pytest.raises(ValueError): co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125, short_keys=0)(*args, merge=False)


@needs_gpu
@pytest.mark.parametrize('fused_merge', [False, True], ids=['merge_kernel', 'fused_merge'])
@pytest.mark.parametrize('max_splits', [1, 3, 64])
@pytest.mark.parametrize('min_tiles', [1, 3])
def test_decode_attention_split_counts(max_splits, min_tiles, fused_merge):
    """Any split gives the same result (1: a single block per KV head; 3: uneven chunks; tiles per block 1 or more);
    with fused_merge, the counters are back at zero after every call."""
    rng, nh, nkv, D = np.random.default_rng(max_splits), 14, 2, 64
    qkv, kc, vc, _ = att_data(rng, 1, nh, nkv, D, 1000, False)
    att = co.DecodeAttention(nh, nkv, D, D, 1000, 0.125, max_splits=max_splits, min_tiles=min_tiles,
                             fused_merge=fused_merge, short_keys=0, gqa=False)
    for S in (1, 33, 200, 1000):
        out = cp.empty(nh * D, np.float32)
        att(cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray([S - 1], np.int32), out)
        assert_close(cp.asnumpy(out), co.attention_ref(qkv, kc, vc, [S - 1], 0.125, nh, nkv, D, D)[0], **ATT_TOL)
        if fused_merge: assert not cp.asnumpy(att.counters).any()


@needs_gpu
@pytest.mark.parametrize('short_keys', [64, 256])
@pytest.mark.parametrize('short_splits', [2, 3, 16])
def test_decode_attention_short_split_counts(short_splits, short_keys):
    """attend_short in any split count up to short_splits * short_keys keys, the split kernels beyond (positions on both
    sides of it; splits of uneven lengths), with sinks and a window, RoPE fused or not: as the reference, the token's
    own key and value written once (by the last split)."""
    rng, nh, nkv, D, n_ctx = np.random.default_rng(short_splits), 14, 2, 64, 1100
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, True)
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), D, 10000.0)
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125, short_keys=short_keys, short_splits=short_splits, gqa=False)
    assert att.short_splits == short_splits
    assert co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125, short_keys=short_keys, short_splits=1).short_splits == 0
    for S, win in ((1, 0), (65, 0), (129, 0), (257, 0), (300, 100), (700, 0), (1000, 0), (1100, 700)):
        p = S - 1
        ref = co.attention_ref(qkv, kc, vc, [p], 0.125, nh, nkv, D, D, win, sk)[0]
        out = cp.full(nh * D, np.nan, np.float32)
        att(cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray([p], np.int32), out, win, cp.asarray(sk))
        assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=f'S={S} window={win}')
        qkv_r, kc_r, vc_r = co.rope_kv_ref(qkv, np.array([p]), cos, sin, kc, vc, nh, nkv, D, D, D, True)
        ref = co.attention_ref(qkv_r, kc_r, vc_r, [p], 0.125, nh, nkv, D, D, win, sk)[0]
        K, V = cp.asarray(kc), cp.asarray(vc)
        att(cp.asarray(qkv), K, V, cp.asarray([p], np.int32), out, win, cp.asarray(sk),
            rope=(cp.asarray(cos), cp.asarray(sin), D, True))
        assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=f'RoPE fused, S={S} window={win}')
        np.testing.assert_array_equal(cp.asnumpy(K), kc_r); np.testing.assert_array_equal(cp.asnumpy(V), vc_r)


@needs_gpu
@pytest.mark.parametrize('fused', [True, False], ids=['last_split_merges', 'merge_kernel'])
@pytest.mark.parametrize('heads_of', [(14, 2), (9, 3), (64, 8), (8, 8)], ids=['qwen', 'smollm2', 'gpt-oss', 'mha'])
def test_decode_attention_gqa(heads_of, fused, monkeypatch):
    """attention_gqa from one key to more than a wave of splits, in splits of one or several of its key blocks (the
    token's own key in a later one), with windows and sinks, RoPE fused or not: as the references, the token's own
    key and value written once; the splits merged by the last of them (the counters back at zero after every call) or
    by attention_merge."""
    if not co.mma_capable(): pytest.skip('attention_gqa needs compute capability 8.0 (mma.sync)')
    monkeypatch.setattr(co, 'GQA_FUSED', fused)
    nh, nkv, D, n_ctx = *heads_of, 64, 9000
    rng = np.random.default_rng(nh)
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, True)
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), D, 10000.0)
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125)
    assert att.gqa_splits == min(att.max_splits, -(-co._sm_count() // nkv)) and (att.gqa_counters is not None) == fused
    for S, win in ((1, 0), (130, 0), (1000, 0), (4097, 0), (9000, 0), (5000, 128), (3000, 1500)):
        p, P = S - 1, cp.asarray([S - 1], np.int32)
        out = cp.full(nh * D, np.nan, np.float32)
        att(cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), P, out, win, cp.asarray(sk))
        ref = co.attention_ref(qkv, kc, vc, [p], 0.125, nh, nkv, D, D, win, sk)[0]
        assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=f'S={S} window={win}')
        qkv_r, kc_r, vc_r = co.rope_kv_ref(qkv, np.array([p]), cos, sin, kc, vc, nh, nkv, D, D, D, True)
        ref = co.attention_ref(qkv_r, kc_r, vc_r, [p], 0.125, nh, nkv, D, D, win, sk)[0]
        K, V = cp.asarray(kc), cp.asarray(vc)
        att(cp.asarray(qkv), K, V, P, out, win, cp.asarray(sk), rope=(cp.asarray(cos), cp.asarray(sin), D, True))
        assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=f'RoPE fused, S={S} window={win}')
        np.testing.assert_array_equal(cp.asnumpy(K), kc_r); np.testing.assert_array_equal(cp.asnumpy(V), vc_r)
        if fused: assert not cp.asnumpy(att.gqa_counters).any()


MERGE_IN_O = [((14, 2), 'Q5_0', False), ((9, 3), 'Q4_1', False), ((8, 1), 'Q8_0', True), ((16, 2), 'Q4_K', True)]


@needs_gpu
@pytest.mark.parametrize('heads_of,wtype,sinks', MERGE_IN_O, ids=['qwen', 'smollm2', 'g8-sinks', 'h16-sinks'])
def test_attention_merged_in_the_o_product(heads_of, wtype, sinks):
    """attention_gqa without its merge kernel (defer_merge), then the o product merging the splits while it stages its
    input (06b's merge_desc): one split to several rounds of 16 (9,000 keys: 36 splits), with windows and RoPE fused,
    against rope_kv_ref, attention_ref and the exact product, within the 16-bit input's half code and attention's own
    tolerance carried through |W|; the attention's output buffer left alone, the caches' row p as rope_kv_ref writes it."""
    if not co.mma_capable(): pytest.skip('attention_gqa needs compute capability 8.0 (mma.sync)')
    from orcd import cuda_matvec as cm
    from orcd import quants
    t, dequantize = getattr(quants, wtype), quants.dequantize
    nh, nkv, D, n_ctx, rows = *heads_of, 64, 9000, 96
    rng = np.random.default_rng(nh + 7)
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, sinks)
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), D, 10000.0)
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125)
    w, y0 = cm.random_weight(rng, t, rows, nh * D), rng.standard_normal(rows).astype(np.float32)
    lin = cm.Linear([(cp.asarray(w), rows, t)], nh * D)
    assert lin.stages_merge()
    W = dequantize(w, t).reshape(rows, -1).astype(np.float64)
    SK, rope = None if sk is None else cp.asarray(sk), (cp.asarray(cos), cp.asarray(sin), D, True)
    for S, win in ((1, 0), (200, 0), (257, 0), (1000, 0), (4224, 0), (8193, 0), (9000, 0), (5000, 128), (3000, 1500)):
        p, P = S - 1, cp.asarray([S - 1], np.int32)
        Q, K, V, out, y = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.full(nh * D, np.nan, np.float32), cp.asarray(y0)
        att(Q, K, V, P, out, win, SK, rope=rope, defer_merge=True)
        lin(out, y, accumulate=True, merge=att.merge_desc(P, window=win, sinks=SK))
        qkv_r, kc_r, vc_r = co.rope_kv_ref(qkv, np.array([p]), cos, sin, kc, vc, nh, nkv, D, D, D, True)
        a = co.attention_ref(qkv_r, kc_r, vc_r, [p], 0.125, nh, nkv, D, D, win, sk)[0]
        np.testing.assert_array_equal(cp.asnumpy(K), kc_r); np.testing.assert_array_equal(cp.asnumpy(V), vc_r)
        assert np.isnan(cp.asnumpy(out)).all(), 'the merge kernel ran (or the product wrote its input)'
        _, d = cm.quantize_x_ref(a.astype(np.float32), 16)
        dx = np.repeat(d.astype(np.float64), 32) * 0.5 * (1 + 2 ** -10) + 2 ** -16 * (np.abs(a) + 1)
        exact, got = W @ a + y0, cp.asnumpy(y)
        report(f'merged in the o product, {heads_of} S={S} window={win}', got, exact)
        assert np.all(np.abs(got - exact) <= np.abs(W) @ dx + 1e-5 * (np.abs(W) @ np.abs(a) + np.abs(y0))), (S, win)


@needs_gpu
def test_attention_merged_in_the_o_product_rejects_bad_arguments():
    from orcd import cuda_matvec as cm
    from orcd.quants import Q5_0
    pos = cp.zeros(1, np.int32)
    with pytest.raises(ValueError, match='attention_gqa only'):
        co.DecodeAttention(14, 2, 64, 64, 100, 0.125, gqa=False).merge_desc(pos)
    for nh, nkv in ((15, 5), (14, 2), (21, 7)):              # the split outputs as float4: n_heads x splits even
        att = co.DecodeAttention(nh, nkv, 64, 64, 100, 0.125)
        assert att.merges_in_consumer() == (att.gqa_splits > 0 and nh * att.gqa_splits % 2 == 0)
        if att.gqa_splits and not att.merges_in_consumer():
            with pytest.raises(ValueError, match='n_heads x splits even'):
                att.merge_desc(pos)
    with pytest.raises(ValueError, match='defer_merge needs attention_gqa'):
        co.DecodeAttention(14, 2, 64, 64, 100, 0.125, gqa=False)(
            cp.zeros((1, 18 * 64), np.float32), cp.zeros((2, 100, 64), np.float16), cp.zeros((2, 100, 64), np.float16),
            pos, cp.zeros(14 * 64, np.float32), defer_merge=True)
    if co.mma_capable():
        desc = co.DecodeAttention(14, 2, 64, 64, 100, 0.125).merge_desc(pos)
        w = cm.random_weight(np.random.default_rng(0), Q5_0, 32, 14 * 64)
        lin = cm.Linear([(cp.asarray(w), 32, Q5_0)], 14 * 64)
        with pytest.raises(ValueError, match='merge= stages the merged attention output'):
            lin(cp.zeros(14 * 64, np.float32), cp.zeros(32, np.float32), merge=desc, norm=cp.ones(14 * 64, np.float32))
        with pytest.raises(ValueError, match='merge must have'):
            lin(cp.zeros(14 * 64, np.float32), cp.zeros(32, np.float32), merge=desc[:40])
    w = cm.random_weight(np.random.default_rng(0), Q5_0, 32, 4096)
    big = cm.Linear([(cp.asarray(w), 32, Q5_0)], 4096, warps=4)                 # 4,096 values: 8 a thread
    assert not big.stages_merge()
    with pytest.raises(ValueError, match='merge= needs'):
        big.launch('merge')


@needs_gpu
@pytest.mark.parametrize('short_splits,gqa', [(0, False), (4, False), (0, True)], ids=['short', 'short_splits', 'gqa'])
@pytest.mark.parametrize('window', [128, 0])
@pytest.mark.parametrize('fused_merge', [False, True], ids=['merge_kernel', 'fused_merge'])
def test_decode_attention_in_a_captured_graph(fused_merge, window, short_splits, gqa):
    """One captured graph, the position changed in device memory between replays: every step matches (without a
    window the replays cross from attend_short, up to 256 keys, to the split kernels, or to attend_short's splits;
    attention_gqa's splits grow from one to a wave)."""
    rng, nh, nkv, D, n_ctx = np.random.default_rng(3), 64, 8, 64, 2048        # gpt-oss heads
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, True)
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125, fused_merge=fused_merge, short_keys=256,
                             short_splits=short_splits, gqa=gqa)
    Q, K, V, SK = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray(sk)
    pos, out = cp.zeros(1, np.int32), cp.empty(nh * D, np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        att(Q, K, V, pos, out, window, SK)                                    # compile outside the capture
        s.begin_capture(); att(Q, K, V, pos, out, window, SK); g = s.end_capture()
        for p in (0, 5, 127, 128, 129, 255, 256, 1000, 2047, 3):
            pos[...] = p
            g.launch(s); s.synchronize()
            ref = co.attention_ref(qkv, kc, vc, [p], 0.125, nh, nkv, D, D, window, sk)[0]
            assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=f'pos {p}')


FUSED_ROPE = [(m, S) for m in ('qwen2.5-0.5b', 'smollm2-135m', 'gemma3-270m', 'gpt-oss', 'phi3', 'partial-neox',
                                  'partial-normal', 'g16') for S in (1, 33, 100, 1000)]


def rope_heads(model):
    if model.startswith('partial'):
        return dict(nh=6, nkv=2, D=64, rope_dim=32, rope='neox' if model.endswith('neox') else 'normal', window=0,
                    sinks=False)
    if model == 'g16': return dict(nh=16, nkv=1, D=64, rope_dim=64, rope='neox', window=50, sinks=True)
    return MODELS[model]


@needs_gpu
@SHORT
@pytest.mark.parametrize('fused_merge', [False, True], ids=['merge_kernel', 'fused_merge'])
@pytest.mark.parametrize('model,S', FUSED_ROPE, ids=[f'{m}-S{S}' for m, S in FUSED_ROPE])
def test_decode_attention_rope_fused(model, S, fused_merge, short_keys, short_splits, gqa):
    """RoPE fused into decode attention: the output as rope_kv then attention (the references), this token's key and
    value in both caches bit for bit as rope_kv_ref writes them, the rest of the caches and qkv untouched."""
    c = rope_heads(model); nh, nkv, D, rd, win = c['nh'], c['nkv'], c['D'], c['rope_dim'], c['window']
    rng, n_ctx, p = np.random.default_rng(S + D), S + 40, S - 1
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, c['sinks'])
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), rd, 10000.0)
    neox = c['rope'] == 'neox'
    qkv_r, kc_r, vc_r = co.rope_kv_ref(qkv, np.array([p]), cos, sin, kc, vc, nh, nkv, D, D, rd, neox)
    ref = co.attention_ref(qkv_r, kc_r, vc_r, [p], D ** -0.5, nh, nkv, D, D, win, sk)[0]
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, D ** -0.5, fused_merge=fused_merge, short_keys=short_keys,
                             short_splits=short_splits, gqa=gqa)
    Q, K, V, out = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.full(nh * D, np.nan, np.float32)
    att(Q, K, V, cp.asarray([p], np.int32), out, win, None if sk is None else cp.asarray(sk),
        rope=(cp.asarray(cos), cp.asarray(sin), rd, neox))
    report(f'decode, RoPE fused, {model} S={S}', cp.asnumpy(out), ref)
    assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=model)
    np.testing.assert_array_equal(cp.asnumpy(K), kc_r); np.testing.assert_array_equal(cp.asnumpy(V), vc_r)
    np.testing.assert_array_equal(cp.asnumpy(Q), qkv)


ATTN_HERE = [(m, S) for m in ('qwen2.5-0.5b', 'smollm2-135m', 'gemma3-270m', 'gpt-oss', 'partial-normal', 'g4d128', 'g16')
             for S in (1, 33, 64, 65, 300)]


@needs_gpu
@pytest.mark.parametrize('model,S', ATTN_HERE, ids=[f'{m}-S{S}' for m, S in ATTN_HERE])
def test_attention_in_the_o_product(model, S):
    """The o product that computes decode attention itself (06b's attn_desc, up to short_keys = 64 (32) visible keys; beyond,
    the split kernels' output staged instead) against rope_kv_ref, attention_ref and the exact product: within the
    16-bit input's half code and attention's own tolerance; the caches' row p bit for bit as rope_kv_ref writes it, qkv
    untouched, and the split kernels' output left alone where the product computed the attention."""
    from orcd import cuda_matvec as cm
    from orcd.quants import Q5_0, dequantize
    c = rope_heads(model) if model != 'g4d128' else dict(heads(model), rope_dim=64, rope='normal', window=0)   # (g16: 16 a group)
    nh, nkv, D, rd, win, rows = c['nh'], c['nkv'], c['D'], c['rope_dim'], c['window'], 160
    keys = co.attn_short_keys(nh, nkv, D, D, 64)                    # 64 in 200 KB of scratch (gpt-oss's 64 heads: 32)
    rng, n_ctx, p = np.random.default_rng(S + D + nh), S + 40, S - 1
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, c['sinks'])
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), rd, 10000.0)
    neox = c['rope'] == 'neox'
    qkv_r, kc_r, vc_r = co.rope_kv_ref(qkv, np.array([p]), cos, sin, kc, vc, nh, nkv, D, D, rd, neox)
    att_ref = co.attention_ref(qkv_r, kc_r, vc_r, [p], D ** -0.5, nh, nkv, D, D, win, sk)[0]
    w, y0 = cm.random_weight(rng, Q5_0, rows, nh * D), rng.standard_normal(rows).astype(np.float32)
    lin = cm.Linear([(cp.asarray(w), rows, Q5_0)], nh * D, attn_scratch=co.attn_scratch_bytes(nh, nkv, D, D, keys))
    Q, K, V, pos = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray([p], np.int32)
    rope, SK = (cp.asarray(cos), cp.asarray(sin), rd, neox), None if sk is None else cp.asarray(sk)
    att, y = cp.full(nh * D, np.nan, np.float32), cp.asarray(y0)
    desc = co.attn_desc(Q, K, V, pos, nh, nkv, D, D, D ** -0.5, keys, lin.scratch, window=win, sinks=SK, rope=rope)
    co.DecodeAttention(nh, nkv, D, D, n_ctx, D ** -0.5)(Q, K, V, pos, att, win, SK, rope=rope, skip_keys=keys)
    lin(att, y, accumulate=True, attn=desc)
    here = p + 1 - (max(0, p - win + 1) if win else 0) <= keys
    np.testing.assert_array_equal(cp.asnumpy(K), kc_r); np.testing.assert_array_equal(cp.asnumpy(V), vc_r)
    np.testing.assert_array_equal(cp.asnumpy(Q), qkv)
    if here: assert np.isnan(cp.asnumpy(att)).all(), 'the split kernels ran where the o product computes attention'
    else: assert_close(cp.asnumpy(att), att_ref, **ATT_TOL, name=model)
    W = dequantize(w, Q5_0).reshape(rows, -1).astype(np.float64)
    _, d = cm.quantize_x_ref(att_ref.astype(np.float32), 16)
    dx = np.repeat(d.astype(np.float64), 32) * 0.5 * (1 + 2 ** -10) + 2 ** -16 * (np.abs(att_ref) + 1)
    exact, got = W @ att_ref + y0, cp.asnumpy(y)
    report(f'attention in the o product, {model} S={S} ({"here" if here else "split kernels"})', got, exact)
    assert np.all(np.abs(got - exact) <= np.abs(W) @ dx + 1e-5 * (np.abs(W) @ np.abs(att_ref) + np.abs(y0))), model


ATTN_O = [(m, S) for m in ('qwen2.5-0.5b', 'smollm2-135m', 'partial-normal', 'g16', 'h4s4') for S in (1, 33, 64, 65, 300)]


@needs_gpu
@pytest.mark.parametrize('wtype', ['Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0'])
@pytest.mark.parametrize('model,S', ATTN_O, ids=[f'{m}-S{S}' for m, S in ATTN_O])
def test_attn_o(model, S, wtype):
    """06b's AttnO (attention and the o product in one kernel) against attn_o_ref: x + W attention + b within the
    attention's tolerance carried through |W| and fp32 rounding of the sums; this token's key and value in both caches
    bit for bit as rope_kv_ref writes them, qkv untouched. h4s4: 4 query heads of one KV head, each in 4 key splits."""
    from orcd import cuda_matvec as cm, quants
    from orcd.quants import dequantize
    c = dict(nh=4, nkv=1, D=64, rope_dim=64, rope='neox', window=0, sinks=True) if model == 'h4s4' else rope_heads(model)
    nh, nkv, D, rd, win, rows, t = c['nh'], c['nkv'], c['D'], c['rope_dim'], c['window'], 200, quants.QUANT_NAMES[wtype]
    rng, n_ctx, p = np.random.default_rng(S + D + nh + t), S + 40, S - 1
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, c['sinks'])
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), rd, 10000.0)
    neox = c['rope'] == 'neox'
    w, x0 = cm.random_weight(rng, t, rows, nh * D), rng.standard_normal(rows).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if S % 2 else None
    W = dequantize(w, t).reshape(rows, -1).astype(np.float64)
    exact, att, kc_r, vc_r = co.attn_o_ref(qkv, kc, vc, p, W, b, x0, D ** -0.5, nh, nkv, D, D, win, sk, (cos, sin, rd, neox))
    op = co.AttnO(nh, nkv, D, D, n_ctx, D ** -0.5, cp.asarray(w), t, rows, None if b is None else cp.asarray(b))
    assert op.splits == 16 // nh                                   # (h4s4: 4 splits a head)
    Q, K, V, x = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray(x0)
    op(Q, K, V, cp.asarray([p], np.int32), x, win, None if sk is None else cp.asarray(sk),
       rope=(cp.asarray(cos), cp.asarray(sin), rd, neox))
    got = cp.asnumpy(x)
    report(f'attn_o {model} S={S} {wtype}', got, exact)
    np.testing.assert_array_equal(cp.asnumpy(K), kc_r); np.testing.assert_array_equal(cp.asnumpy(V), vc_r)
    np.testing.assert_array_equal(cp.asnumpy(Q), qkv)
    a = np.abs(att.astype(np.float64))
    mag = np.abs(W) @ a + (0 if b is None else np.abs(b)) + np.abs(x0)
    bound = np.abs(W) @ (ATT_TOL['atol'] + ATT_TOL['rtol'] * a) + (nh * D + 4) * EPS32 * mag
    assert np.isfinite(got).all() and np.all(np.abs(got - exact) <= bound), (model, S, wtype)


@needs_gpu
def test_attn_o_rejects_bad_arguments():
    from orcd import cuda_matvec as cm
    from orcd.quants import Q5_0, Q4_K
    w = cp.asarray(cm.random_weight(np.random.default_rng(0), Q5_0, 32, 14 * 64))
    with pytest.raises(ValueError, match='at most 16 warps'):
        co.AttnO(32, 8, 64, 64, 100, 0.125, w, Q5_0, 32)
    with pytest.raises(ValueError, match='at most 16 warps'):
        co.AttnO(14, 2, 128, 128, 100, 0.125, w, Q5_0, 32)
    with pytest.raises(ValueError, match='o weights of type 12'):
        co.AttnO(14, 2, 64, 64, 100, 0.125, w, Q4_K, 32)
    with pytest.raises(ValueError, match='must have'):
        co.AttnO(14, 2, 64, 64, 100, 0.125, w, Q5_0, 31)
    op = co.AttnO(14, 2, 64, 64, 100, 0.125, w, Q5_0, 32)
    Q, K, V = cp.zeros(18 * 64, np.float32), cp.zeros((2, 100, 64), np.float16), cp.zeros((2, 100, 64), np.float16)
    with pytest.raises(ValueError, match='x must have 32 elements'):
        op(Q, K, V, cp.zeros(1, np.int32), cp.zeros(31, np.float32))


@needs_gpu
def test_attention_in_the_o_product_rejects_bad_arguments():
    from orcd import cuda_matvec as cm
    from orcd.quants import Q5_0
    nh, nkv, D = 14, 2, 64
    Q, K, V = cp.zeros((1, 18 * D), np.float32), cp.zeros((nkv, 100, D), np.float16), cp.zeros((nkv, 100, D), np.float16)
    pos = cp.zeros(1, np.int32)
    with pytest.raises(ValueError, match='short_keys=48 must be a positive multiple of 32'):
        co.attn_desc(Q, K, V, pos, nh, nkv, D, D, 0.125, 48, 0)
    with pytest.raises(ValueError, match='short_keys=64'):
        co.attn_desc(cp.zeros((1, 16 * 60), np.float32), cp.zeros((2, 100, 60), np.float16),
                     cp.zeros((2, 100, 60), np.float16), pos, 12, 2, 60, 60, 0.125, 64, 0)    # head dim 60
    w = cm.random_weight(np.random.default_rng(0), Q5_0, 32, nh * D)
    plain = cm.Linear([(cp.asarray(w), 32, Q5_0)], nh * D)
    desc = co.attn_desc(Q, K, V, pos, nh, nkv, D, D, 0.125, 64, 0)
    with pytest.raises(ValueError, match='attn= needs attn_scratch'):
        plain(cp.zeros(nh * D, np.float32), cp.zeros(32, np.float32), attn=desc)
    lin = cm.Linear([(cp.asarray(w), 32, Q5_0)], nh * D, attn_scratch=4096)
    with pytest.raises(ValueError, match='attn= stages the attention output'):
        lin(cp.zeros(nh * D, np.float32), cp.zeros(32, np.float32), attn=desc, norm=cp.ones(nh * D, np.float32))


@needs_gpu
def test_decode_attention_rope_fused_in_a_graph():
    "Forty captured steps, each at the next position (read on the device): each writes its own cache row and matches."
    rng, nh, nkv, D, n_ctx = np.random.default_rng(5), 64, 8, 64, 256              # gpt-oss heads, window 128
    qkv, kc, vc, sk = att_data(rng, 1, nh, nkv, D, n_ctx, True)
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), D, 10000.0)
    att = co.DecodeAttention(nh, nkv, D, D, n_ctx, 0.125)
    Q, K, V, SK = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), cp.asarray(sk)
    C, Sn, pos, out = cp.asarray(cos), cp.asarray(sin), cp.zeros(1, np.int32), cp.empty(nh * D, np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture(); att(Q, K, V, pos, out, 128, SK, rope=(C, Sn, D, True)); g = s.end_capture()
        for p in range(100, 140):
            pos[...] = p
            g.launch(s); s.synchronize()
            qkv_r, kc, vc = co.rope_kv_ref(qkv, np.array([p]), cos, sin, kc, vc, nh, nkv, D, D, D, True)
            ref = co.attention_ref(qkv_r, kc, vc, [p], 0.125, nh, nkv, D, D, 128, sk)[0]
            assert_close(cp.asnumpy(out), ref, **ATT_TOL, name=f'pos {p}')
    np.testing.assert_array_equal(cp.asnumpy(K), kc); np.testing.assert_array_equal(cp.asnumpy(V), vc)


PREFILL = [(m, T, p0) for m in ('qwen2.5-0.5b', 'gemma3-270m', 'gpt-oss', 'phi3', 'gpt2', 'smollm2-135m')
           for T, p0 in ((1, 0), (5, 0), (64, 0), (300, 0), (5, 37), (64, 1000), (300, 200))]
PREFILL += [('g16', 70, 10), ('g8d256', 5, 37), ('g8d256', 40, 0), ('g4d128', 130, 20), ('g4d128', 1, 7),
            ('qwen2.5-0.5b', 700, 300)]


@needs_gpu
@pytest.mark.parametrize('mma', [False, True], ids=['scalar', 'mma'])
@pytest.mark.parametrize('model,T,pos0', PREFILL, ids=[f'{m}-T{T}-p{p}' for m, T, p in PREFILL])
def test_attention_prefill(model, T, pos0, mma):
    """Against attention_ref: the scalar kernel within ATT_TOL; the tensor-core one (heads of 64/96/128) within twice
    the bound of its one extra rounding, p in fp16 (2^-11 max|v|)."""
    c = heads(model); nh, nkv, D = c['nh'], c['nkv'], c['D']
    if mma and not co.mma_heads(D, D): pytest.skip(f'head_dim {D}: the scalar kernel only')
    window = MODELS.get(model, {}).get('window', 0) or (50 if model == 'g16' else 0)
    if model == 'gemma3-270m' and T > 64: window = 100                         # a window the queries straddle
    rng, n_ctx = np.random.default_rng(T + pos0), pos0 + T + 3
    qkv, kc, vc, sk = att_data(rng, T, nh, nkv, D, n_ctx, c['sinks'])
    out = cp.full((T, nh * D), np.nan, np.float32)
    co.attention_prefill(cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), pos0, T, out, D ** -0.5, nh, nkv, D, D,
                         window, None if sk is None else cp.asarray(sk), mma=mma)
    ref = co.attention_ref(qkv, kc, vc, np.arange(pos0, pos0 + T), D ** -0.5, nh, nkv, D, D, window, sk)
    got = cp.asnumpy(out)
    report(f'prefill {"mma" if mma else "scalar"} {model} T={T} pos0={pos0} window={window}', got, ref)
    tol = dict(rtol=2 ** -16, atol=2 * 2 ** -11 * float(np.abs(vc).max())) if mma else ATT_TOL
    assert_close(got, ref, **tol, name=model)
    # the first position read on the device (pos_dev: a captured prompt chunk), the host's pos0 a wrong one: the same
    out2 = cp.full((T, nh * D), np.nan, np.float32)
    co.attention_prefill(cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc), 0, T, out2, D ** -0.5, nh, nkv, D, D,
                         window, None if sk is None else cp.asarray(sk), mma=mma, pos_dev=cp.asarray([pos0], np.int32))
    assert np.array_equal(cp.asnumpy(out2), got)


@needs_gpu
def test_attention_mma_rejects_other_heads():
    with pytest.raises(ValueError, match='mma=True needs head_dim'):
        co.attention_prefill(cp.zeros((2, 6 * 256), np.float32), cp.zeros((1, 4, 256), np.float16),
                             cp.zeros((1, 4, 256), np.float16), 0, 2, cp.zeros((2, 4 * 256), np.float32), 0.1, 4, 1,
                             256, 256, mma=True)


@needs_gpu
def test_rope_then_attention_vs_fp32_chain():
    "rope_kv + DecodeAttention against the CPU's all-fp32 chain: the only extra error is the fp16 cache."
    rng, nh, nkv, D, n_ctx, S = np.random.default_rng(9), 14, 2, 64, 512, 300
    cos, sin = ops.rope_cos_sin(np.arange(n_ctx), D, 1e6)
    qkv = rng.standard_normal((S, (nh + 2 * nkv) * D)).astype(np.float32)
    K, V = cp.zeros((nkv, n_ctx, D), np.float16), cp.zeros((nkv, n_ctx, D), np.float16)
    Q = cp.asarray(qkv)
    co.rope_kv(Q, cp.arange(S, dtype=np.int32), cp.asarray(cos), cp.asarray(sin), K, V, nh, nkv, D, D, D, True, S)
    out = cp.empty(nh * D, np.float32)
    co.DecodeAttention(nh, nkv, D, D, n_ctx, D ** -0.5)(Q[S - 1:], K, V, cp.asarray([S - 1], np.int32), out)
    c, s = cos[:S], sin[:S]                                   # the CPU chain in fp32
    q = ops.rope(qkv[:, :nh * D].reshape(S, nh, D), c, s, True)
    k = ops.rope(qkv[:, nh * D:(nh + nkv) * D].reshape(S, nkv, D), c, s, True).transpose(1, 0, 2)
    v = qkv[:, (nh + nkv) * D:].reshape(S, nkv, D).transpose(1, 0, 2)
    ref = ops.attention(q[S - 1:], k, v, [S - 1], np.arange(S), D ** -0.5)[0].reshape(-1)
    # fp16 rounding of k moves each score by at most delta = 2^-11 * scale * max sum |q k|; the weights then move by a
    # factor within e^(±2 delta) and the values by 2^-11 relative: |error| <= max|v| (2^-11 + e^(2 delta) - 1)
    delta = 2 ** -11 * D ** -0.5 * np.max(np.abs(q[S - 1]) @ np.abs(k).max(axis=1).T)
    bound = np.abs(v).max() * (2 ** -11 + np.expm1(2 * delta)) + 2 ** -16
    got = cp.asnumpy(out)
    report('rope_kv + attention vs fp32', got, ref)
    assert np.abs(got - ref).max() <= bound, (np.abs(got - ref).max(), bound)


# -- GPU: elementwise ----------------------------------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize('model', MODELS)
@pytest.mark.parametrize('T', [1, 5])
def test_act(model, T):
    kind, n = MODELS[model]['act'], MODELS[model]['ffn']
    rng = np.random.default_rng(n + T)
    gu = (rng.standard_normal((T, n if kind == 'gelu' else 2 * n)) * 4).astype(np.float32)
    out = cp.full((T, n), np.nan, np.float32)
    co.act(kind, cp.asarray(gu), out, n, T)
    ref = co.act_ref(kind, gu, n).astype(np.float64)
    # a few ulps from expf/tanhf and the products; gelu's 1 + tanh(.) cancels, so its error is absolute in |gate|·|up|
    g = np.abs(gu if kind == 'gelu' else gu[:, :n]); u = 1 if kind == 'gelu' else np.abs(gu[:, n:]) + 1
    got = cp.asnumpy(out)
    report(f'act {kind} {model} T={T}', got, ref)
    assert_close(got, ref, 2 ** -20, 2 ** -21 * g * u, kind)


@needs_gpu
def test_add_scale_softcap():
    rng = np.random.default_rng(1)
    for n in (1, 896, 151936, 262144):
        x, y = (rng.standard_normal(n) * 40).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        X = cp.asarray(x)
        co.add(X, cp.asarray(y)); np.testing.assert_array_equal(cp.asnumpy(X), x + y)          # exact
        co.scale_(X, 0.37); np.testing.assert_array_equal(cp.asnumpy(X), (x + y) * np.float32(0.37))
        co.softcap(X, 30.0)
        ref = np.tanh((x + y) * np.float32(0.37) / np.float32(30)) * np.float32(30)
        assert_close(cp.asnumpy(X), ref.astype(np.float64), 2 ** -20, 2 ** -30, f'softcap n={n}')


@needs_gpu
def test_launchers_reject_bad_arguments():
    x = cp.zeros((2, 8), np.float32)
    with pytest.raises(TypeError, match='rms_norm: w must be float32'):
        co.rms_norm(x, cp.zeros(8, np.float16), x, 1e-6)
    with pytest.raises(ValueError, match='rms_norm: residual must have 16 elements, got 8'):
        co.rms_norm(x, None, x, 1e-6, residual=cp.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r'DecodeAttention: head_dim=100 must be a multiple of 8 in \[8, 256\]'):
        co.DecodeAttention(4, 1, 100, 100, 16, 0.1)
    with pytest.raises(ValueError, match='DecodeAttention: 6 query heads do not split into 4 KV heads'):
        co.DecodeAttention(6, 4, 64, 64, 16, 0.1)
    with pytest.raises(ValueError, match=r'attention_prefill: positions 10..14 outside the cache of 12'):
        co.attention_prefill(cp.zeros((5, 3 * 64), np.float32), cp.zeros((1, 12, 64), np.float16),
                             cp.zeros((1, 12, 64), np.float16), 10, 5, cp.zeros((5, 64), np.float32), 0.1, 1, 1, 64, 64)
    with pytest.raises(TypeError, match='rope_kv: k_cache must be float16'):
        co.rope_kv(cp.zeros(3 * 64, np.float32), cp.zeros(1, np.int32), None, None, cp.zeros((1, 4, 64), np.float32),
                   cp.zeros((1, 4, 64), np.float16), 1, 1, 64, 64, 0, True, 1)
    with pytest.raises(ValueError, match='Argmax: allowed must have 10 elements, got 9'):
        co.Argmax(10)(cp.zeros(10, np.float32), cp.zeros(9, np.uint8), cp.zeros(1, np.int32))


# -- GPU: argmax and sampling --------------------------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize('vocab', [1, 5, 1000, 49152, 151936, 262144])
def test_argmax(vocab):
    rng = np.random.default_rng(vocab)
    am, out = co.Argmax(vocab), cp.empty(1, np.int32)
    for trial in range(6):
        logits = rng.standard_normal(vocab).astype(np.float32)
        allowed = (rng.random(vocab) > 0.1).astype(np.uint8); allowed[rng.integers(vocab)] = 1
        if trial % 2 and vocab > 3:                                            # exact ties, some of them masked
            top = rng.choice(vocab, 3, replace=False); logits[top] = logits.max() + 1
        am(cp.asarray(logits), cp.asarray(allowed), out)
        masked = np.where(allowed == 1, logits, -np.inf)
        assert int(out[0]) == int(np.argmax(masked))
    am(cp.asarray(logits), cp.zeros(vocab, np.uint8), out)
    assert int(out[0]) == -1                                                    # nothing allowed


@needs_gpu
def test_argmax_in_a_captured_graph():
    vocab, rng = 151936, np.random.default_rng(2)
    am, L, A, out = co.Argmax(vocab), cp.zeros(vocab, np.float32), cp.ones(vocab, np.uint8), cp.empty(1, np.int32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        am(L, A, out)
        s.begin_capture(); am(L, A, out); g = s.end_capture()
        for _ in range(5):
            logits = rng.standard_normal(vocab).astype(np.float32); allowed = (rng.random(vocab) > 0.3).astype(np.uint8)
            L.set(logits); A.set(allowed)
            g.launch(s); s.synchronize()
            eager = cp.empty(1, np.int32); am(L, A, eager); s.synchronize()
            assert int(out[0]) == int(eager[0]) == int(np.argmax(np.where(allowed == 1, logits, -np.inf)))


SAMPLING = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05),
            SamplingParams(temperature=0.7, top_k=40), SamplingParams(temperature=0.7, top_p=0.95),
            SamplingParams(temperature=0.7, min_p=0.05), SamplingParams(temperature=1.0),
            SamplingParams(temperature=0.8, top_p=0.9, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.3),
            SamplingParams(temperature=0, repetition_penalty=1.5, frequency_penalty=1.0)]


def explained_by_near_tie(logits, allowed, params, u, ids, counts, got):
    "A mismatch that a float64 rounding could cause: the GPU's id is drawn by the CPU with u, top_p or min_p nudged."
    from dataclasses import replace
    for du in (-1e-9, 1e-9):
        if co.sample_token_ref(logits, allowed, params, min(max(u + du, 0), 1 - 1e-16), ids, counts) == got: return True
        p2 = replace(params, top_p=min(1.0, params.top_p * (1 + du)), min_p=params.min_p * (1 + du))
        if co.sample_token_ref(logits, allowed, p2, u, ids, counts) == got: return True
    return False


@needs_gpu
@pytest.mark.parametrize('vocab', [32000, 151936])
def test_sample_token_matches_the_cpu_sampler(vocab):
    rng = np.random.default_rng(vocab)
    trials, mismatches = 0, []
    for i in range(40 if vocab > 100000 else 120):
        params = SAMPLING[i % len(SAMPLING)]
        logits = (rng.standard_normal(vocab) * rng.uniform(1, 6)).astype(np.float32)
        if i % 5 == 0: logits[rng.choice(vocab, 8, replace=False)] = logits.max()          # exact ties at the top
        allowed = np.ones(vocab, np.uint8); allowed[vocab - 100:] = 0; allowed[rng.choice(vocab, 50)] = 0
        hist = rng.choice(np.argsort(-logits)[:60], 40)                                   # penalise likely ids
        ids, counts = np.unique(hist, return_counts=True)
        u = float(rng.random())
        got = co.sample_token(cp.asarray(logits), cp.asarray(allowed), params, u, ids, counts)
        want = co.sample_token_ref(logits, allowed, params, u, ids, counts)
        trials += 1
        if got != want:
            assert explained_by_near_tie(logits, allowed, params, u, ids, counts, got), (i, params, u, got, want)
            mismatches.append((i, got, want))
    print(f'sample_token vocab {vocab}: {trials} draws, {len(mismatches)} near-tie differences {mismatches}')
    assert len(mismatches) <= trials // 20


@needs_gpu
@pytest.mark.parametrize('vocab', [1000, 32000, 151936])
def test_sample_fast_draws_what_the_sampler_draws(vocab):
    """`sample_fast` (no full sort) on logits with a trained model's shape (Gumbel scale 3, Gaussian scale 6: a few
    likely ids, a long tail) and on flat ones: where it draws, the CPU Sampler draws the same id (but for float64
    near-ties); on the peaked rows it declines only now and then (u deep in the tail); on a flat row of a large
    vocabulary it must decline (more than 4,096 candidates) rather than guess."""
    rng = np.random.default_rng(vocab + 1)
    drawn, declined, mismatches = 0, 0, []
    for i in range(48):
        params = SAMPLING[1 + i % (len(SAMPLING) - 2)]                       # every sampling (non-greedy) setting
        shape = i % 3
        logits = (rng.gumbel(size=vocab) * 3 if shape == 0 else rng.standard_normal(vocab) * 6 if shape == 1
                  else rng.standard_normal(vocab) * 0.01).astype(np.float32)
        if i % 4 == 0: logits[rng.choice(vocab, 8, replace=False)] = logits.max()        # exact ties at the top
        allowed = np.ones(vocab, np.uint8); allowed[rng.choice(vocab, vocab // 50)] = 0
        ids, counts = np.unique(rng.choice(np.argsort(-logits)[:60], 40), return_counts=True)
        z = co._penalised(cp.asarray(logits), cp.asarray(allowed), params, ids, counts)
        for u in (*rng.random(6), 0.0):
            got, n = co.sample_fast(z, params, float(u))
            if got < 0:
                declined += shape != 2
                continue
            assert 1 <= n <= 4096
            drawn += 1
            want = co.sample_token_ref(logits, allowed, params, float(u), ids, counts)
            if got != want:
                assert explained_by_near_tie(logits, allowed, params, float(u), ids, counts, got), (i, params, u, got, want)
                mismatches.append((i, got, want))
        if shape == 2 and vocab > 8192 and params.top_k == 0 and params.min_p == 0:
            assert co.sample_fast(z, params, 0.999)[0] < 0                      # a flat row: declined, not guessed
    print(f'sample_fast vocab {vocab}: {drawn} draws, {declined} declined on peaked rows, near-ties {mismatches}')
    assert declined <= drawn // 5 and len(mismatches) <= drawn // 50


@needs_gpu
def test_sample_token_edge_cases():
    vocab, rng = 1000, np.random.default_rng(4)
    logits = rng.standard_normal(vocab).astype(np.float32)
    allowed = np.zeros(vocab, np.uint8); allowed[[3, 500]] = 1                           # two candidates
    for params in SAMPLING:
        for u in (0.0, 0.3, 0.999999):
            got = co.sample_token(cp.asarray(logits), cp.asarray(allowed), params, u)
            assert got == co.sample_token_ref(logits, allowed, params, u) and got in (3, 500)
    big = SamplingParams(temperature=0.7, top_k=5000)                                     # top_k > vocab
    assert co.sample_token(cp.asarray(logits), cp.ones(vocab, np.uint8), big, 0.5) == co.sample_token_ref(
        logits, np.ones(vocab, np.uint8), big, 0.5)
