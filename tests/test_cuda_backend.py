"""The CUDA backend against the CPU backend on the same GGUF files: logits, greedy tokens, graph vs eager, seeded
sampling, residency, the fit check and out-of-memory recovery. GPU-only: skipped on machines without one.

Models: the synthetic phi3 / gpt2 fixtures, the three registry models when they are pulled, and files of the real
models' layouts with synthetic values (scripts/make_shaped_model.py) found in $ORCD_SHAPED_DIR."""
import os
from pathlib import Path
import numpy as np, pytest
from orcd.cuda import cuda_device
from orcd import cuda_ops as co

FIX = Path(__file__).parent / 'fixtures'
cp, why = cuda_device()
pytestmark = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')

def _models():
    out = [FIX / 'synthetic' / f'{a}.gguf' for a in ('phi3', 'gpt2', 'gpt-oss')]
    d = os.environ.get('ORCD_SHAPED_DIR')
    if d: out += sorted(Path(d).glob('*.gguf'))
    from orcd.pull import orcd_home
    out += [p for p in (orcd_home() / 'models' / f'{n}.gguf' for n in
                        ('qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct', 'gemma-3-270m')) if p.exists()]
    return out

MODELS = _models()
N_CTX = 256

def _backends(path, graphs=True, **kw):
    from orcd.gguf import GGUFFile
    from orcd.engine import CPUBackend
    from orcd.cuda_backend import CUDABackend
    gf = GGUFFile(path)
    return CPUBackend.from_gguf(gf, N_CTX), CUDABackend(gf, N_CTX, graphs=graphs, **kw)

def _prompt(vocab, n=19, seed=0):
    return [int(i) for i in np.random.default_rng(seed).integers(0, min(vocab, 30000), n)]

def _top2_margin(x):
    a = np.sort(x)[-2:]
    return float(a[1] - a[0])

@pytest.mark.parametrize('path', MODELS, ids=lambda p: p.stem)
def test_gpu_matches_cpu(path):
    """Logits within 1e-2 of the largest CPU logit after the prompt and at every step of a 32-token greedy
    continuation; the tokens are identical except where the CPU's top-2 margin is itself within that bound."""
    gpu = _check_matches_cpu(path)
    from orcd import cuda_backend
    ops = [s.op for s, _ in cuda_backend._fused(gpu)]
    rope_fused = cuda_backend.FUSE_ROPE and gpu.tables is not None
    assert any(o in ('rope_attention', 'attn_linear', 'attn_linear_acc') for o in ops) == rope_fused, ops
    if path.parent != FIX / 'synthetic' and gpu.hp.n_heads // gpu.hp.n_kv_heads <= 8:   # quantised o: it takes attention in
        assert any(o.startswith('attn_linear') for o in ops) == (rope_fused and cuda_backend.ATTN_HERE > 0
                                                                 or cuda_backend._attn_o(gpu, 'wo', 0) is not None
                                                                 or rope_fused and cuda_backend._merge_in_o(gpu, 'wo', 0)), ops
    if path.stem.startswith(('qwen', 'smollm2')):          # the layouts 06b's AttnO takes (steps at a short context)
        assert cuda_backend._attn_o(gpu, 'wo', 0) is not None or not co.ATTN_O

@pytest.mark.parametrize('path', [p for p in MODELS if p.stem.startswith(('qwen', 'smollm2'))], ids=lambda p: p.stem)
def test_attn_o_matches_cpu(path, monkeypatch):
    """The same with 06b's AttnO on (ORCD_ATTN_O=1, opt-in): the steps at a short context (all of these) run the
    attention and the o product as one kernel."""
    from orcd import cuda_backend
    monkeypatch.setattr(co, 'ATTN_O', True)
    gpu = _check_matches_cpu(path)
    assert any(s.op == 'attn_linear_acc' for s, _ in cuda_backend._fused(gpu))

@pytest.mark.parametrize('path', [p for p in MODELS if p.stem not in ('gpt2', 'gpt-oss', 'gpt-oss-2l')], ids=lambda p: p.stem)
@pytest.mark.parametrize('fused', [True, False], ids=['fused_norm', 'unfused_norm'])
def test_norm_fusion_both_ways(path, fused, monkeypatch):
    """The same with each RMSNorm fused into the next matvec's staging (cuda_backend.FUSE_NORM, the default: no norm
    kernels left) and without (a norm kernel, then the matvec)."""
    from orcd import cuda_backend
    monkeypatch.setattr(cuda_backend, 'FUSE_NORM', fused)
    gpu = _check_matches_cpu(path)
    ops = [s.op for s, _ in cuda_backend._fused(gpu)]
    assert ('norm_linear' in ops) == fused, ops

@pytest.mark.parametrize('path', [p for p in MODELS if p.stem != 'gpt2'], ids=lambda p: p.stem)
def test_rope_fusion_off(path, monkeypatch):
    """The same with RoPE and the cache write as their own kernel before decode attention (cuda_backend.FUSE_ROPE
    off; on, the default, test_gpu_matches_cpu: attention rotates q and writes the token's key and value itself)."""
    from orcd import cuda_backend
    monkeypatch.setattr(cuda_backend, 'FUSE_ROPE', False)
    gpu = _check_matches_cpu(path)
    ops = [s.op for s, _ in cuda_backend._fused(gpu)]
    assert 'rope_attention' not in ops and 'rope_kv' in ops, ops

@pytest.mark.parametrize('path', [p for p in MODELS if p.stem not in ('gpt2', 'gpt-oss', 'gpt-oss-2l')], ids=lambda p: p.stem)
def test_act_fusion_off(path, monkeypatch):
    """The same with the gated activation as its own kernel before the down product (cuda_backend.FUSE_ACT off; on,
    the default, test_gpu_matches_cpu: the down product stages the activation of [gate | up] itself)."""
    from orcd import cuda_backend
    monkeypatch.setattr(cuda_backend, 'FUSE_ACT', False)
    gpu = _check_matches_cpu(path)
    ops = [s.op for s, _ in cuda_backend._fused(gpu)]
    assert 'act' in ops and not any(o.startswith('act_linear') for o in ops), ops

@pytest.mark.parametrize('path', [p for p in MODELS if p.parent != FIX / 'synthetic'], ids=lambda p: p.stem)
def test_glu_fusion_off(path, monkeypatch):
    """The same with the down product computing the activation while it stages (cuda_backend.FUSE_GLU off; on, the
    default, test_gpu_matches_cpu: the gate|up product writes the activation as down's staged input)."""
    from orcd import cuda_backend
    monkeypatch.setattr(cuda_backend, 'FUSE_GLU', False)
    gpu = _check_matches_cpu(path)
    ops = [s.op for s, _ in cuda_backend._fused(gpu)]
    assert not any('glu' in o or o.startswith('staged') for o in ops), ops

@pytest.mark.parametrize('path', [p for p in MODELS if p.parent != FIX / 'synthetic'], ids=lambda p: p.stem)
@pytest.mark.parametrize('keys', [32, 256], ids=['crossing_32_keys', 'all_256_keys'])
def test_attention_in_o_both_ways(path, keys, monkeypatch):
    """The same with the o product computing the decode attention itself (cuda_backend.ATTN_HERE, opt-in; off, the
    default, test_gpu_matches_cpu: the split kernels): up to 32 visible keys, so that the 19-token prompt's 32 steps
    cross from the o product to the split kernels inside one captured graph, and up to 256 (all of them here)."""
    from orcd import cuda_backend
    monkeypatch.setattr(cuda_backend, 'ATTN_HERE', keys)
    gpu = _check_matches_cpu(path)
    ops = [s.op for s, _ in cuda_backend._fused(gpu)]
    assert any(o.startswith('attn_linear') for o in ops) == bool(keys), ops
    if keys: assert all(v[2] == keys for v in gpu.attn_here.values())

@pytest.mark.parametrize('path', [p for p in MODELS if p.stem.startswith(('qwen', 'smollm2'))], ids=lambda p: p.stem)
@pytest.mark.parametrize('on', [True, False], ids=['o_merges', 'merge_kernel'])
def test_merge_in_o_both_ways(path, on, monkeypatch):
    """The same with every step in the graph for any context (no short-context graphs): attention_gqa's splits merged
    by the o product (cuda_backend.MERGE_IN_O, the default) or by attention_merge."""
    from orcd import cuda_backend
    if not co.mma_capable(): pytest.skip('attention_gqa needs compute capability 8.0 (mma.sync)')
    monkeypatch.setattr(cuda_backend, 'SHORT_GRAPHS', False)
    monkeypatch.setattr(cuda_backend, 'MERGE_IN_O', on)
    gpu = _check_matches_cpu(path)
    assert any(s.op.startswith('attn_linear') for s, _ in cuda_backend._fused(gpu)) == on
    assert all(d is not None for d in gpu.merge_descs.values()) and bool(gpu.merge_descs) == on

@pytest.mark.parametrize('graphs,k', [(True, 1), (True, 3), (True, 4), (False, 1)],
                         ids=['graph', 'graph-3-steps', 'graph-4-steps', 'eager'])
@pytest.mark.parametrize('path', MODELS, ids=lambda p: p.stem)     # (the shaped layouts too: attend_short's graphs)
def test_decode_greedy_equals_steps(path, graphs, k):
    """decode_greedy (graphs of k steps and of one replayed back to back, the ids read once) gives the ids of one
    decode_sample at a time, in calls of 5, 1, 4 and 3 tokens, and leaves the cache as they do: the next step's logits
    are bit-equal."""
    from orcd.engine import Sampler, SamplingParams
    from orcd.gguf import GGUFFile
    from orcd.cuda_backend import CUDABackend
    be = CUDABackend(GGUFFile(path), N_CTX, graphs=graphs)
    greedy = Sampler(SamplingParams(temperature=0), vocab_limit=be.hp.vocab_size)
    ids = _prompt(be.hp.vocab_size)
    tok = want = int(np.argmax(be.prefill(ids))); one = []
    for i in range(13): tok = be.decode_sample(tok, len(ids) + i, greedy); one.append(tok)
    after_one = be.decode(tok, len(ids) + 13)
    be = CUDABackend(GGUFFile(path), N_CTX, graphs=graphs)           # a fresh one: its first call captures the graph
    be.steps_per_graph = k
    tok, got = int(np.argmax(be.prefill(ids))), []
    assert tok == want
    for n in (5, 1, 4, 3):
        out = be.decode_greedy(tok, len(ids) + len(got), n, greedy); got += out; tok = out[-1]
    assert got == one
    if graphs and k > 1: assert any(key[0] == k for key in be._kgraphs)      # the k-step graph did run
    np.testing.assert_array_equal(be.decode(tok, len(ids) + 13), after_one)

@pytest.mark.parametrize('path', MODELS, ids=lambda p: p.stem)
def test_decode_greedy_across_short_keys(path):
    """decode_greedy's graphs for a short context (no merge kernels) and for any context, in calls on both sides of
    the attention's short_keys and across it: the ids of one decode_sample at a time, and the same next logits."""
    from orcd.engine import Sampler, SamplingParams
    from orcd.gguf import GGUFFile
    from orcd.cuda_backend import CUDABackend, SHORT_GRAPHS
    n_ctx, runs = 300, []
    for greedy_calls in (False, True):
        be = CUDABackend(GGUFFile(path), n_ctx)
        sk = be.attn.short_keys
        if not sk: pytest.skip(f'{path.stem}: no attend_short (short_keys 0), so no graphs for a short context')
        ids = _prompt(be.hp.vocab_size, sk - 10)
        greedy = Sampler(SamplingParams(temperature=0), vocab_limit=be.hp.vocab_size)
        tok, got = int(np.argmax(be.prefill(ids))), []
        if greedy_calls:
            be.steps_per_graph = 4
            for n in (4, 4, 4, 5):                   # keys the last step of each sees: sk - 6, sk - 2, sk + 2, sk + 7
                out = be.decode_greedy(tok, len(ids) + len(got), n, greedy); got += out; tok = out[-1]
            if SHORT_GRAPHS: assert {(4, True), (4, False)} <= set(be._kgraphs)
        else:
            for k in range(17): tok = be.decode_sample(tok, len(ids) + k, greedy); got.append(tok)
        runs.append((got, be.decode(tok, len(ids) + 17)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])

def _check_matches_cpu(path):
    cpu, gpu = _backends(path)
    ids = _prompt(gpu.hp.vocab_size)
    lc, lg = cpu.prefill(ids), gpu.prefill(ids)
    worst, ties = 0.0, []
    tc = tg = int(np.argmax(lc))
    for k in range(33):
        err = np.abs(lc - lg).max() / np.abs(lc).max()
        worst = max(worst, err)
        assert err <= 1e-2, f'step {k}: max|gpu - cpu| = {err:.2e} of max|cpu|'
        tc, tg = int(np.argmax(lc)), int(np.argmax(lg))
        if tc != tg:
            margin = _top2_margin(lc)
            assert margin <= 1e-2 * np.abs(lc).max(), f'step {k}: tokens differ ({tc} vs {tg}) with CPU margin {margin}'
            ties.append((k, tc, tg, margin)); break                        # the sequences part at a near-tie
        if k == 32: break
        lc, lg = cpu.decode(tc, len(ids) + k), gpu.decode(tg, len(ids) + k)
    print(f'\n{path.stem}: worst max|gpu-cpu|/max|cpu| = {worst:.2e}; near-ties where they parted: {ties}')
    return gpu

@pytest.mark.parametrize('path', MODELS[:2] + MODELS[-1:], ids=lambda p: p.stem)
def test_graph_equals_eager_and_sampler_paths(path):
    "Greedy through the captured graph = greedy eagerly = argmax of the logits; the same seed at T 0.7 twice = same tokens."
    from orcd.gguf import GGUFFile
    from orcd.engine import Sampler, SamplingParams
    from orcd.cuda_backend import CUDABackend
    gf = GGUFFile(path)
    runs = {}
    for graphs in (True, False):
        be = CUDABackend(gf, N_CTX, graphs=graphs)
        ids = _prompt(be.hp.vocab_size, seed=1)
        s = Sampler(SamplingParams(temperature=0))
        tok, out = int(np.argmax(be.prefill(ids))), []
        for k in range(24): tok = be.decode_sample(tok, len(ids) + k, s); out.append(tok)
        runs[graphs] = out
        if graphs:
            lg = be.decode(out[-1], len(ids) + 24)
            assert be.host[0] == int(np.argmax(lg))                         # the graph's argmax is the logits' argmax
        seq = []
        for rep in range(2):
            s = Sampler(SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, seed=1234))
            tok, toks = int(s.sample(be.prefill(ids))), []
            for k in range(16): tok = be.decode_sample(tok, len(ids) + k, s); toks.append(tok)
            seq.append(toks)
        assert seq[0] == seq[1]
        del be
    assert runs[True] == runs[False]

@pytest.mark.parametrize('path', MODELS[:1] + MODELS[-1:], ids=lambda p: p.stem)
def test_prompt_graphs_equal_eager(path):
    """Prompt chunks replayed as captured graphs (padded to their length bucket, the first position read on the
    device). A chunk that fills its bucket gives the eager path's logits bit for bit: bucket 16 captured at position 0
    and replayed at 32 (a cached prefix continued), bucket 64 captured for a prompt's first chunk and replayed for
    its second, at 64. A padded chunk multiplies more rows, which cuBLAS may do with another algorithm (06c): its
    logits stay within test_gpu_matches_cpu's bound of the CPU backend's, as the eager path's do."""
    from orcd.gguf import GGUFFile
    from orcd.engine import CPUBackend
    from orcd.cuda_backend import CUDABackend, prefill_bucket
    gf = GGUFFile(path)
    g, e = CUDABackend(gf, N_CTX, chunk=64), CUDABackend(gf, N_CTX, chunk=64, graphs=False)
    if any(L['moe'].prefill_syncs() for L in g.layers if 'moe' in L):
        pytest.skip('this MoE prompt path reads counts back to the host (ORCD_MOE_MMA=0): prompts run eagerly, '
                    'see test_prompt_graphs_off_where_moe_syncs')
    c = CPUBackend.from_gguf(gf, N_CTX)
    assert g._pgraph_on and not e._pgraph_on
    for n, start in ((16, 0), (48, 32), (128, 0), (10, 0), (100, 0), (23, 0), (32, 0)):
        ids = _prompt(g.hp.vocab_size, n=n, seed=n)
        if start:                                             # the same prefix cached in all three
            ids[:start] = _prompt(g.hp.vocab_size, n=start, seed=start)
            for be in (g, e, c): be.prefill(ids[:start])
        a, b = g.prefill(ids, start), e.prefill(ids, start)
        if all(prefill_bucket(min(64, n - s), 64) == min(64, n - s) for s in range(start, n, 64)):
            assert np.array_equal(a, b), (n, start)
        else:
            r = c.prefill(ids, start)
            assert np.abs(a - r).max() <= 1e-2 * np.abs(r).max(), (n, start)
    assert {16, 32, 64} <= set(g._pgraphs) and not e._pgraphs

def test_prompt_graphs_off_where_moe_syncs(monkeypatch):
    """A mixture of experts whose prompt path reads its experts' token counts back to the host (06d's 'batched', as
    under ORCD_MOE_MMA=0) cannot be captured: that backend keeps its prompt chunks eager, and they match the CPU's."""
    from orcd import cuda_moe
    monkeypatch.setattr(cuda_moe, 'MOE_MMA', False)
    cpu, gpu = _backends(FIX / 'synthetic' / 'gpt-oss.gguf')
    assert not gpu._pgraph_on
    ids = _prompt(gpu.hp.vocab_size, n=40)
    r, a = cpu.prefill(ids), gpu.prefill(ids)
    assert np.abs(a - r).max() <= 1e-2 * np.abs(r).max() and not gpu._pgraphs

def test_residency_fit_and_oom_recovery():
    from orcd.gguf import GGUFFile
    from orcd.cuda_backend import CUDABackend
    from orcd.errors import InsufficientVRAMError, VRAMOOMError
    path = max(MODELS, key=lambda p: p.stat().st_size)      # the biggest: its prompt's temporaries are biggest
    gf = GGUFFile(path)
    import gc; gc.collect()
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()          # else the backend's buffers may be carved from blocks the earlier tests' backends left
    before = pool.used_bytes()      # cached, and the prompt's temporaries would fit in their free remainders: no OOM
    with pytest.raises(InsufficientVRAMError) as ei:
        CUDABackend(gf, N_CTX, max_vram=1 << 20)                          # a 1 MiB budget
    assert ei.value.code == 'INSUFFICIENT_VRAM' and ei.value.required > ei.value.available
    assert pool.used_bytes() == before                                     # nothing half-loaded stays behind
    be = CUDABackend(gf, 4096, chunk=512)
    st = be.status()
    assert st['healthy'] and st['vram_bytes_used'] > 0 and st['vram_bytes_total'] > st['vram_bytes_used']
    ids = _prompt(be.hp.vocab_size, n=2000)
    pool.free_all_blocks()                                                 # the limit counts cached blocks too
    pool.set_limit(size=pool.total_bytes() + (1 << 20))                    # no room for a prompt's temporaries
    balloon = []                    # and none left inside the pool's blocks either: fill their free remainders
    try:
        while True: balloon.append(cp.empty(1 << 20, np.uint8))
    except cp.cuda.memory.OutOfMemoryError: pass
    full = pool.total_bytes()
    try:
        with pytest.raises(VRAMOOMError) as ei: be.prefill(ids)
        assert ei.value.code == 'VRAM_OOM'
    finally: del balloon; pool.set_limit(size=0)
    assert be.status()['healthy']
    lg = be.prefill(ids[:10])                                              # the next request runs
    assert np.isfinite(lg).all()
    assert be.peak_memory_bytes >= max(full, be.memory_bytes)              # the high-water mark kept the full pool

def test_engine_generates_on_cuda():
    from orcd.engine import Engine, SamplingParams
    path = MODELS[-1]
    eng = Engine(path, device='cuda', n_ctx=512)
    assert eng.device.startswith('cuda')
    evs = list(eng.generate('Hello', SamplingParams(temperature=0, max_tokens=12)))
    assert evs[-1].finish_reason in ('length', 'eos', 'stop_sequence') and len(evs) >= 1
    info = eng.info()
    assert info['backend'] == 'CUDABackend'

def _log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))

@pytest.mark.parametrize('path', MODELS[:1] + MODELS[-1:], ids=lambda p: p.stem)
def test_prompt_cache_and_logprobs(path):
    """prefill(ids, start) continues a cached prefix and gives the full prefill's logits; top_logprobs is the
    log-softmax of the step's logits; prompt_logprobs agrees with the CPU backend's logits at every position.
    Chunks of 16 tokens, so that the full prompt and the continued one multiply matrices of the same rows (a prompt
    chunk runs padded to its length bucket, and cuBLAS may pick another algorithm for another row count, 06c)."""
    cpu, gpu = _backends(path, chunk=16)
    ids = _prompt(gpu.hp.vocab_size, n=23, seed=2)
    full = gpu.prefill(ids)
    gpu.prefill(ids[:11])
    part = gpu.prefill(ids, start=11)
    assert np.abs(part - full).max() <= 1e-4 * np.abs(full).max()
    with pytest.raises(ValueError): gpu.prefill(ids, start=len(ids))
    gpu.reset()
    with pytest.raises(ValueError): gpu.prefill(ids, start=3)                # nothing cached
    gpu.prefill(ids)
    lg = gpu.decode(5, len(ids))
    lp, top_ids, top_lp = gpu.top_logprobs(7, 5)
    ref = _log_softmax(lg)
    assert abs(lp - ref[7]) <= 1e-5 * max(1.0, abs(ref[7]))
    assert list(top_ids) == list(np.argsort(-ref, kind='stable')[:5]) and np.allclose(top_lp, ref[top_ids], atol=1e-5)
    last, rows = gpu.prompt_logprobs(ids, 3)
    assert len(rows) == len(ids) - 1 and np.abs(last - full).max() <= 1e-4 * np.abs(full).max()
    z = cpu.adapter.forward(np.array(ids), np.arange(len(ids)), cpu.adapter.new_cache(N_CTX), all_logits=True)
    for i, (lp, ti, tl) in enumerate(rows):
        ref = _log_softmax(z[i])
        assert abs(lp - ref[ids[i + 1]]) <= 1e-2 * np.abs(z[i]).max(), f'position {i + 1}'
        assert len(ti) == 3 and np.all(np.diff(tl) <= 0)
