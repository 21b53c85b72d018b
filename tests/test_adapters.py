"""Architecture adapters against independent implementations.

1. Real models (SmolLM2-135M / llama, Qwen2.5-Coder-0.5B / qwen2, Gemma-3-270M / gemma3) against llama.cpp
   fixtures (`tests/fixtures/llamacpp/<model>.json.gz`, made by `scripts/make_llamacpp_fixtures.py` with
   llama-cpp-python; format in `tests/fixtures/README.md`):
   - teacher-forced over llama.cpp's 64-token greedy continuation (one batch, like llama.cpp's fixture rows),
     our argmax equals llama.cpp's next token (its greedy `continuation_ids[j]`) at >= 98% of the positions;
   - mean KL(llama.cpp || ours) of the next-token distributions < 0.01. The fixture stores llama.cpp's top-40
     log-probs, so the KL is computed over those 40 ids plus one bucket holding the rest of the probability
     mass (ours: 1 - our mass on the same 40 ids). Merging outcomes can only lower a KL divergence (data
     processing inequality), so this coarsened KL is a LOWER BOUND of the full-vocabulary KL;
   - our free-running greedy continuation (prefill, then one token per `forward`) equals llama.cpp's for at least
     the first 32 tokens (or all of a shorter one) on most (a majority of) cases, and wherever the two part,
     llama.cpp's own logits there are a near-tie: top-1 minus top-2 logit (`margin`) < NEAR_TIE; the same holds
     for every teacher-forced position where the argmaxes differ.
   See `test_real_model_vs_llamacpp` for how a miss that llama.cpp shares with itself is reported. (And
   tests/test_vs_transformers.py shows the gap is llama.cpp's: transformers fp32 loading the same GGUFs agrees with
   our logits to <= 1e-4 relative (measured <= 3.3e-6) and misses llama.cpp at exactly the rows we do.)
   CI runs a deterministic sample (SAMPLE cases per model, chosen by a fixed stride over the case list);
   ORCD_FULL=1 runs every case.
2. Synthetic phi3, gpt-oss and gpt2 (`tests/fixtures/synthetic/<arch>.gguf` + `<arch>.ref.npz`): our logits
   equal transformers' (CPU, fp32) for the same weights: max|ours - hf| <= 1e-4 * max|hf| over all positions
   and the whole vocabulary; and our greedy tokens equal llama.cpp's greedy tokens on the same file.
"""
import gzip, json, math, os
from pathlib import Path
import numpy as np
import pytest

from conftest import real_model
from orcd import adapters as A

FIX = Path(__file__).parent / 'fixtures'
FULL = os.environ.get('ORCD_FULL') == '1'
SAMPLE = 3
NEAR_TIE = 0.5          # logits; llama.cpp's own batch and decode paths disagree at margins up to ~0.5
MODELS = ['smollm2-135m-instruct', 'qwen2.5-coder-0.5b-instruct', 'gemma-3-270m']


def _open(path):
    from orcd.gguf import GGUFFile
    return GGUFFile(path)


# ---------------------------------------------------------------------------------------------- helpers
def coarse_kl(top_ids, top_logprobs, logits):
    """KL(p || q) over llama.cpp's 40 listed ids plus one 'rest' bucket; p from the fixture, q = softmax(logits).
    A lower bound of the full-vocabulary KL (merging outcomes never increases a KL divergence)."""
    lp = np.asarray(top_logprobs, np.float64)
    p = np.exp(lp); p_rest = max(1.0 - p.sum(), 0.0)
    z = logits.astype(np.float64); z = z - z.max()
    lse = math.log(np.exp(z).sum())
    lq = z[np.asarray(top_ids)] - lse
    q_rest = max(1.0 - np.exp(lq).sum(), 1e-300)
    kl = float(np.sum(p * (lp - lq)))
    if p_rest > 0: kl += p_rest * (math.log(p_rest) - math.log(q_rest))
    return kl


def test_coarse_kl_is_lower_bound():
    "The coarsened KL never exceeds the full KL and is 0 for identical distributions."
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.standard_normal(100) * 3; b = a + rng.standard_normal(100) * 0.5
        pa = np.exp(a - a.max()); pa /= pa.sum(); pb = np.exp(b - b.max()); pb /= pb.sum()
        full = float(np.sum(pa * (np.log(pa) - np.log(pb))))
        top = np.argsort(-a)[:40]
        c = coarse_kl(top, np.log(pa[top]), b)
        assert -1e-12 <= c <= full + 1e-12
        assert abs(coarse_kl(top, np.log(pa[top]), a)) < 1e-9


def _cases(model, full=False):
    p = FIX / 'llamacpp' / f'{model}.json.gz'
    if not p.exists(): pytest.skip(f'fixture {p} not generated yet')
    cases = json.load(gzip.open(p))['cases']
    if FULL or full: return cases
    stride = max(1, len(cases) // SAMPLE)
    return cases[1::stride][:SAMPLE]            # deterministic: chat and raw cases alternate in the file


_ADAPTERS = {}
def _adapter(model):
    if model not in _ADAPTERS:
        _ADAPTERS.clear()                        # one real model in memory at a time
        _ADAPTERS[model] = A.load_adapter(_open(real_model(model)))
    return _ADAPTERS[model]


def greedy(ad, prompt_ids, n, until_differs=None):
    """Free-running greedy: prefill the prompt, then one token per forward (the decode path).
    With `until_differs` (a reference continuation), stop at the first token that differs from it."""
    cache = ad.new_cache(len(prompt_ids) + n + 1)
    lg = ad.forward(prompt_ids, np.arange(len(prompt_ids)), cache, all_logits=False)
    out, p = [], len(prompt_ids)
    for j in range(n):
        out.append(int(np.argmax(lg[-1])))
        if j == n - 1 or (until_differs is not None and out[-1] != until_differs[j]): break
        lg = ad.forward([out[-1]], [p], cache, all_logits=False); p += 1
    return out


def compare_case(ad, case, free_running=True):
    "Figures of one fixture case: argmax agreement, coarse KL per row, where free-running greedy parts."
    prompt, cont = case['prompt_ids'], case['continuation_ids']
    ids = prompt + cont
    lg = ad.forward(ids, np.arange(len(ids)), ad.new_cache(len(ids) + 1))[len(prompt) - 1:]  # (len(cont)+1, vocab)
    am = lg.argmax(-1)
    agree = [int(am[j] == cont[j]) for j in range(len(cont))]              # llama.cpp's next (greedy) token
    agree_batch = [int(am[j] == case['top_ids'][j][0]) for j in range(len(lg))]   # llama.cpp's batch argmax
    # rows where we pick neither llama.cpp's greedy token nor its batch argmax (they differ at its own near-ties)
    neither = [j for j in range(len(lg)) if am[j] != case['top_ids'][j][0] and (j == len(cont) or am[j] != cont[j])]
    kls = [coarse_kl(case['top_ids'][j], case['top_logprobs'][j], lg[j]) for j in range(len(lg))]
    res = dict(name=case['name'], agree=agree, agree_batch=agree_batch, neither=neither, kl=kls)
    if free_running:
        ours = greedy(ad, prompt, len(cont), until_differs=cont)
        part = next((j for j, (a, b) in enumerate(zip(ours, cont)) if a != b), len(cont))
        res.update(ours=ours, part=part, need=min(32, len(cont)), n=len(cont),
                   margin_at_part=case['margin'][part] if part < len(cont) else None)
    return res


# ---------------------------------------------------------------------------------------------- real models
def llamacpp_self_consistency(cases):
    """How well llama.cpp agrees with ITSELF in the fixture: its teacher-forced (batch) argmax against its own greedy
    (one-token decode) continuation. Returns (fraction of positions that agree, fraction of cases whose first
    self-disagreement comes at or after min(32, len))."""
    n = sum(len(c['continuation_ids']) for c in cases)
    bad = sum(len(c['teacher_forced_argmax_mismatch']) for c in cases)
    ok32 = [min(c['teacher_forced_argmax_mismatch'] or [len(c['continuation_ids'])]) >= min(32, len(c['continuation_ids']))
            for c in cases]
    return 1 - bad / n, float(np.mean(ok32))


@pytest.mark.parametrize('model', MODELS)
def test_real_model_vs_llamacpp(model):
    """Strict everywhere: mean coarse KL < 0.01, and wherever our argmax (teacher-forced) is neither llama.cpp's greedy
    token nor its batch argmax, and wherever our free-running greedy parts from llama.cpp's, llama.cpp's logits are
    a near-tie there (margin < NEAR_TIE).
    The issue's headline figures — argmax equal to llama.cpp's next token at >= 98% of positions, free-running greedy
    equal for >= 32 tokens on most (a majority of) cases — are asserted too. A miss is an xfail, printing the figures,
    only when llama.cpp misses the same bar against ITSELF over the model's whole fixture (its batch argmax vs its own
    one-token-decode greedy tokens, both recorded in the fixture: with quantised weights llama.cpp's two CPU paths
    disagree at near-ties); otherwise it fails."""
    cases = _cases(model)
    ad = _adapter(model)
    rs = [compare_case(ad, c) for c in cases]
    agree = np.mean([a for r in rs for a in r['agree']])
    agree_b = np.mean([a for r in rs for a in r['agree_batch']])
    kl = np.mean([k for r in rs for k in r['kl']])
    ok32 = float(np.mean([r['part'] >= r['need'] for r in rs]))
    self_agree, self_ok32 = llamacpp_self_consistency(_cases(model, full=True))
    report = '\n'.join(f"{r['name']}: next-token {np.mean(r['agree']):.3f} kl {np.mean(r['kl']):.2e} "
                       f"parts@{r['part']}/{r['n']} margin {r['margin_at_part']}" for r in rs)
    summary = (f'{model}: {len(rs)} cases, argmax = llama.cpp next token {agree:.4f} (= its batch argmax {agree_b:.4f}), '
               f'mean coarse KL {kl:.2e}, >=32-token greedy match in {ok32:.2f} of cases; llama.cpp vs itself '
               f'(whole fixture): {self_agree:.4f}, >=32 in {self_ok32:.2f}')
    print(f'\n{summary}\n{report}')
    assert kl < 0.01, report
    for r, c in zip(rs, cases):
        for j in r['neither']:
            assert c['margin'][j] < NEAR_TIE, f"{r['name']} row {j}: our argmax differs from llama.cpp's where its " \
                                              f"margin is {c['margin'][j]:.3f} (not a near-tie)\n{report}"
        if r['part'] < r['n']:
            assert r['margin_at_part'] < NEAR_TIE, f"{r['name']}: greedy parts at {r['part']} where llama.cpp's " \
                                                   f"margin is {r['margin_at_part']:.3f} (not a near-tie)\n{report}"
    misses = []
    if agree < 0.98: misses.append(('argmax agreement < 0.98', self_agree < 0.98))
    if ok32 <= 0.5: misses.append(('>=32-token greedy match on a minority of cases', self_ok32 <= 0.5))
    if misses and all(shared for _, shared in misses):
        pytest.xfail(f"{'; '.join(m for m, _ in misses)} -- llama.cpp misses it against itself too: {summary}")
    assert not misses, f"{'; '.join(m for m, _ in misses)}: {summary}\n{report}"


def test_cache_and_positions():
    "Chunked prefill + decode equals one batch; the cache holds every KV head; overflow is a clear error."
    ad = _adapter('smollm2-135m-instruct')
    ids = [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4521, 314]
    full = ad.forward(ids, np.arange(len(ids)), ad.new_cache(32))
    c = ad.new_cache(32)
    a = ad.forward(ids[:7], np.arange(7), c)
    b = ad.forward(ids[7:], np.arange(7, 12), c)
    np.testing.assert_allclose(np.concatenate([a, b]), full, atol=2e-3 * np.abs(full).max())
    assert c.n_ctx == 32 and c.n_filled == 12
    assert all(k.shape[0] == ad.hp.n_kv_heads for k in c.k)
    for k, v in zip(c.k, c.v):                    # every KV head of every layer holds every position
        assert (np.abs(k[:, :12]).sum(axis=2) > 0).all() and (np.abs(v[:, :12]).sum(axis=2) > 0).all()
        assert not k[:, 12:].any()
    last = ad.forward(ids[-1:], [11], c, all_logits=False)                       # rewinding one position
    np.testing.assert_allclose(last[0], full[-1], atol=2e-3 * np.abs(full).max())
    c.reset(); assert c.n_filled == 0
    with pytest.raises(A.ContextOverflowError, match='context of 32'):
        ad.forward([1], [32], c)
    with pytest.raises(ValueError, match='continue the cached sequence'):
        ad.forward([1], [5], c)
    with pytest.raises(ValueError, match='token id'):
        ad.forward([10 ** 6], [0], c)


# ---------------------------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize('arch', ['phi3', 'gpt-oss', 'gpt2'])
def test_synthetic_vs_transformers(arch):
    d = FIX / 'synthetic'
    g, r = d / f'{arch}.gguf', d / f'{arch}.ref.npz'
    if not (g.exists() and r.exists()): pytest.skip(f'synthetic fixture for {arch} not generated yet')
    ref = np.load(r)
    ad = A.load_adapter(_open(g))
    assert ad.meta.architecture == arch
    ids = np.asarray(ref['input_ids']).reshape(-1)
    ours = ad.forward(ids, np.arange(len(ids)), ad.new_cache(len(ids) + 64))
    # gpt-oss: llama.cpp (whose YaRN we follow) floors/ceils YaRN's correction dims; the fixture's
    # `hf_logits_yarn_truncated` is transformers with `truncate=True`, which does the same.
    key = 'hf_logits_yarn_truncated' if 'hf_logits_yarn_truncated' in ref.files else 'hf_logits'
    hf = np.asarray(ref[key], np.float32).reshape(ours.shape)
    err = np.abs(ours - hf).max(); scale = np.abs(hf).max()
    print(f'\n{arch}: max|ours-hf| = {err:.3e}, max|hf| = {scale:.3e}, ratio {err / scale:.2e} ({key})')
    assert err <= 1e-4 * scale
    if key != 'hf_logits':        # and transformers' default (the model's config: truncate=False) with our switch
        ad.hp.yarn_truncate = False
        ours2 = ad.forward(ids, np.arange(len(ids)), ad.new_cache(len(ids) + 64))
        hf2 = np.asarray(ref['hf_logits'], np.float32).reshape(ours.shape)
        assert np.abs(ours2 - hf2).max() <= 1e-4 * np.abs(hf2).max()
        ad.hp.yarn_truncate = True
    if 'llamacpp_greedy' in ref.files:
        want = [int(t) for t in np.asarray(ref['llamacpp_greedy']).reshape(-1)]
        prompt = [int(t) for t in np.asarray(ref['llamacpp_prompt_ids' if 'llamacpp_prompt_ids' in ref.files
                                                 else 'input_ids']).reshape(-1)]
        assert greedy(ad, prompt, len(want)) == want


def test_unsupported_architecture_is_named():
    class Fake:
        path = 'x.gguf'
        class metadata: architecture = 'mamba'
    with pytest.raises(A.UnsupportedArchitecture, match="'mamba'.*supported: llama"):
        A.load_adapter(Fake())


def test_missing_tensor_is_named():
    "A file without a tensor its recipe requires (a sink, a router bias of the synthetic gpt-oss) fails at load, naming it."
    g = FIX / 'synthetic' / 'gpt-oss.gguf'
    if not g.exists(): pytest.skip('synthetic gpt-oss not generated yet')
    gf = _open(g)

    class Hidden:                                   # the same file with one tensor hidden
        def __init__(self, gf, hide): self._gf, self.tensors = gf, {k: v for k, v in gf.tensors.items() if k != hide}
        def __getattr__(self, name): return getattr(self._gf, name)
    with pytest.raises(A.MissingTensorError, match=r'layer 1 needs tensor\(s\) blk\.1\.attn_sinks\.weight'):
        A.load_adapter(Hidden(gf, 'blk.1.attn_sinks.weight'))
    with pytest.raises(A.MissingTensorError, match=r'blk\.0\.ffn_gate_inp\.bias'):
        A.load_adapter(Hidden(gf, 'blk.0.ffn_gate_inp.bias'))
