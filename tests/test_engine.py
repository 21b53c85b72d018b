"""Engine without a real model: the sampler against straightforward numpy formulations, the stop-string
matcher against a character-by-character reference, and the generation loop against a scripted backend and a
toy byte tokenizer (every stop rule, cancel, context policy). Real-model evidence is in test_generation.py."""
import codecs, json, math, sys, threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from orcd.engine import (lookahead_for, CPUBackend, ContextOverflowError, Engine, Sampler, SamplingParams, StopMatcher,
                         TokenEvent, apply_penalties, choose_n_ctx, load_backend, resolve_device,
                         truncate, Backend, params_from_args, cuda_unavailable, logprobs_of, log_softmax)
from orcd.errors import BackendUnavailableError, InvalidRequestError


# ---------------------------------------------------------------- straightforward reference of the sampler
def ref_distribution(logits, p: SamplingParams, history=(), banned=(), vocab_limit=None):
    """The sampler written the obvious way: full sorts, python loops (llama.cpp's chain order)."""
    x = np.array(logits, np.float64)
    n = len(x)
    for i in banned: x[i] = -np.inf
    if vocab_limit is not None: x[vocab_limit:] = -np.inf
    win = list(history) if p.penalty_last_n == -1 else list(history)[max(0, len(history) - p.penalty_last_n):] if p.penalty_last_n else []
    for tok, c in Counter(win).items():
        v = x[tok]
        v = v * p.repetition_penalty if v <= 0 else v / p.repetition_penalty
        x[tok] = v - c * p.frequency_penalty - (1.0 if c > 0 else 0.0) * p.presence_penalty
    cand = [i for i in range(n) if np.isfinite(x[i])]
    if p.temperature == 0:
        best = max(cand, key=lambda i: (x[i], -i))
        return {best: 1.0}
    cand.sort(key=lambda i: (-x[i], i))
    # temperature, then ONE softmax over every unmasked id: each truncation is measured on it
    z = np.array([x[i] for i in cand]) / p.temperature
    pr = np.exp(z - z.max()); pr /= pr.sum()
    keep = len(cand)
    if p.top_k > 0: keep = min(keep, p.top_k)
    if p.top_p < 1.0:
        mass = 0.0
        for j, q in enumerate(pr):
            mass += q
            if mass >= p.top_p: keep = min(keep, j + 1); break
    if p.min_p > 0: keep = min(keep, sum(1 for q in pr if q >= p.min_p * pr[0]))
    kept = pr[:max(keep, 1)]
    return dict(zip(cand[:max(keep, 1)], kept / kept.sum()))


def as_dict(ids, probs): return {int(i): float(q) for i, q in zip(ids, probs)}


PARAMS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=40),
    SamplingParams(temperature=0.7, top_p=0.9),
    SamplingParams(temperature=1.3, top_p=0.5),
    SamplingParams(temperature=0.8, min_p=0.05),
    SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05),
    SamplingParams(temperature=1.0, top_k=500, top_p=0.99),
    SamplingParams(temperature=0.9, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2, top_p=0.9),
    SamplingParams(temperature=0, repetition_penalty=1.5, frequency_penalty=1.0),
    SamplingParams(temperature=1.0, repetition_penalty=1.2, penalty_last_n=4),
    SamplingParams(temperature=1.0, repetition_penalty=1.2, penalty_last_n=-1, top_k=10),
]


@pytest.mark.parametrize('p', PARAMS, ids=lambda p: repr(p)[15:80])
@pytest.mark.parametrize('spread', [1.0, 0.05])  # 0.05: flat logits, top-p needs far more than 256 candidates
def test_distribution_matches_reference(p, spread):
    rng = np.random.default_rng(0)
    n = 3000
    logits = (rng.normal(size=n) / spread * 0.3).astype(np.float32)
    history = list(rng.integers(0, n, 30)) + [5, 5, 5]
    banned = [7, 11, 2999]
    s = Sampler(p, banned=banned, vocab_limit=2990, history=history)
    got = as_dict(*s.distribution(logits))
    want = ref_distribution(logits, p, history, banned, 2990)
    assert set(got) == set(want)
    for i in want: assert got[i] == pytest.approx(want[i], rel=1e-9, abs=1e-12)
    if p.temperature == 0: assert s.sample(logits) == next(iter(want))


def test_top_p_mass_over_whole_vocabulary():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20000) * 0.1  # flat: the nucleus needs thousands of ids
    probs = np.exp(x - x.max()); probs /= probs.sum()
    for p in (0.1, 0.5, 0.9, 0.999):
        keep = truncate(np.arange(len(x)), probs, top_p=p)
        assert len(set(keep)) == len(keep)
        mass = probs[keep].sum()
        assert mass >= p - 1e-12 and mass - probs[keep[-1]] < p  # shortest prefix reaching p
        assert probs[keep].min() >= probs[np.setdiff1d(np.arange(len(x)), keep)].max()  # the most probable ones
    assert len(truncate(np.arange(len(x)), probs, top_p=0.9)) > 256


def test_top_p_is_not_measured_on_the_top_k_subset():
    "top_k=2, top_p=0.5 on (0.3, 0.3, 0.2, 0.2): on the whole vocabulary 0.5 needs both; renormalised over the top 2 it would need one."
    probs = np.array([0.3, 0.3, 0.2, 0.2])
    assert list(truncate(np.arange(4), probs, top_k=2, top_p=0.5)) == [0, 1]
    assert list(truncate(np.arange(4), probs, top_k=3, top_p=0.55)) == [0, 1]


def test_top_k_and_min_p_filters():
    x = np.array([1.0, 3.0, 2.0, 3.0, -1.0])
    probs = np.exp(x - x.max()); probs /= probs.sum()
    assert list(truncate(np.arange(5), probs, top_k=2)) == [1, 3]      # ties: lower id first
    keep = truncate(np.arange(5), probs, min_p=0.3)
    assert sorted(keep) == list(np.flatnonzero(probs >= 0.3 * probs.max()))


def test_penalties_follow_llamacpp_formula():
    x = np.array([2.0, -2.0, 0.0, 5.0])
    apply_penalties(x, {0: 2, 1: 1, 2: 3}, repetition=2.0, presence=0.5, frequency=0.25)
    assert np.allclose(x, [2 / 2 - 0.5 - 0.5, -2 * 2 - 0.25 - 0.5, 0 - 0.75 - 0.5, 5.0])


def test_penalty_window_counts_only_recent_tokens():
    s = Sampler(SamplingParams(penalty_last_n=3, temperature=0, repetition_penalty=10.0), history=[0, 0, 1, 2])
    assert s.counts == Counter({0: 1, 1: 1, 2: 1})
    s.accept(3)
    assert s.counts == Counter({1: 1, 2: 1, 3: 1})
    assert Sampler(SamplingParams(penalty_last_n=0), history=[1, 2]).counts == Counter()


def test_padding_and_out_of_vocab_never_sampled():
    logits = np.zeros(300, np.float32)
    logits[[250, 260, 299]] = 30.0  # padding id, beyond the tokenizer's vocabulary
    for p in (SamplingParams(temperature=0), SamplingParams(temperature=2.0, seed=4), SamplingParams(temperature=1.0, top_p=0.5, seed=4)):
        s = Sampler(p, banned={250}, vocab_limit=256)
        draws = {s.sample(logits) for _ in range(500)}
        assert not draws & {250, 260, 299} and max(draws) < 256
    with pytest.raises(ValueError, match='banned'):
        Sampler(SamplingParams(), banned=range(4)).sample(np.zeros(4))


def test_seeded_sampler_is_deterministic_and_seeds_differ():
    x = np.random.default_rng(2).normal(size=1000)
    p = SamplingParams(temperature=0.8, seed=1234)
    a = [Sampler(p).sample(x) for _ in range(3)]
    seqs = [[s.sample(x) for _ in range(50)] for s in (Sampler(p), Sampler(p))]
    assert seqs[0] == seqs[1]
    other = Sampler(SamplingParams(temperature=0.8, seed=99))
    assert [other.sample(x) for _ in range(50)] != seqs[0]
    s = Sampler(SamplingParams(temperature=0.8))  # no seed: a fresh one, reported, reproducible
    assert isinstance(s.seed, int)
    again = Sampler(SamplingParams(temperature=0.8, seed=s.seed))
    assert [s.sample(x) for _ in range(20)] == [again.sample(x) for _ in range(20)]


def test_draw_frequencies_follow_distribution():
    x = np.log(np.array([0.4, 0.3, 0.2, 0.05, 0.05]))
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.85, seed=5))
    ids, probs = s.distribution(x)
    assert list(ids) == [0, 1, 2]
    n = 20000
    f = np.bincount([s.sample(x) for _ in range(n)], minlength=5) / n
    assert f[3] == f[4] == 0
    assert np.all(np.abs(f[:3] - probs) < 4 * np.sqrt(probs * (1 - probs) / n) + 1e-3)


@pytest.mark.parametrize('kw,match', [
    (dict(temperature=-1), 'temperature'), (dict(top_p=0), 'top_p'), (dict(top_p=1.5), 'top_p'),
    (dict(min_p=2), 'min_p'), (dict(top_k=-1), 'top_k'), (dict(repetition_penalty=0), 'repetition_penalty'),
    (dict(max_tokens=0), 'max_tokens'), (dict(seed='x'), 'seed'), (dict(stop=[1]), 'stop'),
    (dict(frequency_penalty=float('nan')), 'frequency_penalty'), (dict(penalty_last_n=-2), 'penalty_last_n')])
def test_params_validation_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match): SamplingParams(**kw).validate()


# ---------------------------------------------------------------- stop strings
def ref_stop(text, stops):
    "Character by character: cut where a stop string is first complete (the longest one at that point)."
    for e in range(1, len(text) + 1):
        done = [s for s in stops if s and text[:e].endswith(s)]
        if done: return text[:e - max(map(len, done))], True
    return text, False


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='ab#\n', max_size=30), stops=st.lists(st.text(alphabet='ab#\n', min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_stop_matcher_is_chunking_independent(text, stops, cuts):
    bounds = sorted(set(c for c in cuts if c <= len(text)) | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    m, out, hit = StopMatcher(stops), [], False
    for c in chunks:
        emit, hit = m.push(c)
        out.append(emit)
        if hit: break
    if not hit: out.append(m.flush())
    assert (''.join(out), hit) == ref_stop(text, stops)


# ---------------------------------------------------------------- the loop, against fakes
class ToyTokenizer:
    "One token per byte, a few words, an EOS and a padding id; a real incremental UTF-8 stream decoder."
    words = ['Hello', ' world', '#', '##', '<|im_end|>']
    def __init__(self):
        self.pieces = [bytes([b]) for b in range(256)] + [w.encode() for w in self.words] + [b'</s>', b'[PAD]']
        self.eos_id, self.pad_id = 256 + len(self.words), 257 + len(self.words)
        self.vocab_size, self.kind = len(self.pieces), 'toy'
        self.eot_ids, self.padding_ids = {self.eos_id, 260}, {self.pad_id}
        self.chats = []
    def encode(self, text, add_special=True, parse_special=False): return list(text.encode())
    def encode_chat(self, msgs, add_generation_prompt=True):
        self.chats.append(msgs)
        return self.encode(''.join(f"{m['role']}:{m['content']}\n" for m in msgs) + 'assistant:')
    def stream(self):
        d = codecs.getincrementaldecoder('utf-8')('replace')
        return SimpleNamespace(push=lambda i: d.decode(self.pieces[i]),
                               flush=lambda incomplete='replace': d.decode(b'', True) if incomplete == 'replace' else '')


TK = ToyTokenizer()
W = {w: 256 + i for i, w in enumerate(TK.words)}


class ScriptedBackend:
    "Step k prefers script[k] (an id or a list, best first); checks the engine's positions."
    def __init__(self, script=None, n_vocab=TK.vocab_size + 5, n_ctx=64):
        self.script, self.n_vocab, self.n_ctx, self.seq, self.calls = script, n_vocab, n_ctx, [], []
    def _logits(self):
        x = np.zeros(self.n_vocab, np.float32)
        k = len(self.seq) - self.n_prompt
        if self.script is not None and k < len(self.script):
            want = self.script[k] if isinstance(self.script[k], list) else [self.script[k]]
            for j, i in enumerate(want): x[i] = 20.0 - j
        else: x += np.random.default_rng(len(self.seq)).normal(size=self.n_vocab).astype(np.float32)
        return x
    def prefill(self, ids, start=0):
        assert 0 <= start < len(ids) and list(ids[:start]) == self.seq[:start]   # the engine's prompt cache is right
        self.calls.append(('prefill', start)); self.seq, self.n_prompt = list(ids), len(ids)
        self.last = self._logits(); return self.last
    def decode(self, tok, pos):
        assert pos == len(self.seq) < self.n_ctx, (pos, len(self.seq)); self.seq.append(tok)
        self.last = self._logits(); return self.last
    def decode_sample(self, tok, pos, sampler): return sampler.sample(self.decode(tok, pos))
    def top_logprobs(self, token, n): return logprobs_of(self.last, token, n)
    def prompt_logprobs(self, ids, n):
        rows = [np.random.default_rng(k).normal(size=self.n_vocab) for k in range(len(ids) - 1)]
        self.seq, self.n_prompt = list(ids), len(ids); self.last = self._logits(); self.rows = rows
        return self.last, [logprobs_of(r, ids[k + 1], n) for k, r in enumerate(rows)]
    def reset(self): self.seq = []
    def status(self): return dict(healthy=True, reason=None, vram_bytes_used=None, vram_bytes_total=None)
    memory_bytes = 0


def run(script, prompt='hi', n_ctx=64, **kw):
    be = ScriptedBackend(script, n_ctx=n_ctx)
    eng = Engine.from_parts(be, TK, model_name='toy')
    evs = list(eng.generate(prompt, SamplingParams(**{'temperature': 0, **kw})))
    return evs, be


def text(evs): return ''.join(e.text for e in evs)


def test_backend_protocol():
    assert isinstance(ScriptedBackend(), Backend)
    bare = SimpleNamespace(**{k: getattr(ScriptedBackend(), k) for k in ('n_ctx', 'prefill', 'decode', 'decode_sample', 'top_logprobs',
                                                                   'prompt_logprobs', 'reset', 'memory_bytes')})
    assert not isinstance(bare, Backend)   # status() is part of the protocol
    bare.status = lambda: {}
    assert isinstance(bare, Backend)


class AheadBackend(ScriptedBackend):
    "ScriptedBackend that decodes `lookahead` greedy tokens a call (the CPU backend's decode_greedy loop); calls noted."
    lookahead = 4
    def decode_greedy(self, tok, pos, n, sampler):
        self.calls.append(('ahead', pos, n)); return CPUBackend.decode_greedy(self, tok, pos, n, sampler)
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw); self.ahead = []
    def decode_sample(self, tok, pos, sampler):
        self.ahead.append(pos); return super().decode_sample(tok, pos, sampler)


def _events(be, prompt='hi', **kw):
    eng = Engine.from_parts(be, TK, model_name='toy')
    return eng, [(e.text, e.id, e.index, e.finish_reason, e.eog) for e in eng.generate(prompt, SamplingParams(**{'temperature': 0, **kw}))]


AHEAD_CASES = {'eos in a burst': dict(script=[W['Hello'], W[' world'], TK.eos_id, ord('x'), ord('y')]),
               'stop string': dict(script=[ord(c) for c in 'abcdefghij'], stop=['def']),
               'max_tokens': dict(script=[ord(c) for c in 'abcdefghij'], max_tokens=6),
               'context end': dict(script=[ord('a')] * 40, n_ctx=16)}


@pytest.mark.parametrize('case', AHEAD_CASES)
def test_lookahead_generates_the_same(case):
    """A backend with lookahead 4 (decode_greedy): the same events as one step at a time — what was decoded past a stop
    is dropped — at most 4 tokens a call and never past the context; the prompt cache holds only the kept tokens."""
    kw = dict(AHEAD_CASES[case]); script, n_ctx = kw.pop('script'), kw.pop('n_ctx', 64)
    _, want = _events(ScriptedBackend(script, n_ctx=n_ctx), **kw)
    be = AheadBackend(script, n_ctx=n_ctx)
    eng, got = _events(be, **kw)
    assert got == want, case
    calls = [c for c in be.calls if c[0] == 'ahead']
    assert calls and all(1 <= n <= 4 for _, _, n in calls) and max(be.ahead) < n_ctx and len(be.ahead) <= len(want) + 3
    n_prompt = len(TK.encode('hi'))
    assert eng._kv[n_prompt:] == [e[1] for e in got[:len(eng._kv) - n_prompt]]   # the prompt cache: kept tokens only
    assert be.seq[:len(eng._kv)] == eng._kv and len(be.seq) >= len(eng._kv)      # (the cache may hold more, unused)
    _, again = _events(be, **kw)                                        # the next request reuses the cache: the same
    assert again == want


@pytest.mark.parametrize('kw', [dict(temperature=0.7, seed=1), dict(repetition_penalty=1.2), dict(logprobs=2)],
                         ids=['sampled', 'penalty', 'logprobs'])
def test_lookahead_only_for_plain_greedy(kw):
    be = AheadBackend([ord(c) for c in 'abcdefgh'])
    p = SamplingParams(**{'temperature': 0, 'max_tokens': 5, **kw})
    assert lookahead_for(be, p) == 1 and lookahead_for(be, SamplingParams(temperature=0)) == 4
    assert lookahead_for(be, SamplingParams(temperature=0), constraint=object()) == 1
    list(Engine.from_parts(be, TK).generate('hi', p))
    assert len(be.ahead) == 4                                           # each step asked for alone (4 after the first)


def test_eos_ends_and_is_not_emitted():
    evs, be = run([W['Hello'], W[' world'], TK.eos_id, ord('x')])
    assert text(evs) == 'Hello world' and evs[-1].finish_reason == 'eos' and evs[-1].id == TK.eos_id
    assert [e.index for e in evs] == [0, 1, 2] and all(e.finish_reason is None for e in evs[:-1])
    assert evs[-1].prompt_tokens == 2 and evs[-1].eog and not any(e.eog for e in evs[:-1])
    assert evs[-1].completion_tokens == 2 == sum(e.counted for e in evs)  # the EOS that ended it is not counted
    evs, _ = run([W['Hello'], 260])  # any id of eot_ids (here the toy '<|im_end|>')
    assert text(evs) == 'Hello' and evs[-1].finish_reason == 'eos'


def test_harmony_return_and_call_end_a_generation():
    "gpt-oss's own tokenizer (the synthetic fixture): <|return|> and <|call|> end a generation; <|end|> does not."
    from pathlib import Path
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    tok = load_tokenizer(GGUFFile(Path(__file__).parent / 'fixtures' / 'synthetic' / 'gpt-oss.gguf'))
    msg = tok.encode('<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi',
                     parse_special=True)
    for end in ('<|return|>', '<|call|>'):
        e = tok.v.token_to_id[end]
        be = ScriptedBackend(msg + [e] + msg, n_vocab=tok.vocab_size)
        evs = list(Engine.from_parts(be, tok, model_name='gpt-oss').generate('hi', SamplingParams(temperature=0)))
        assert evs[-1].finish_reason == 'eos' and evs[-1].id == e and len(evs) == len(msg) + 1, end
        assert text(evs).endswith('<|channel|>final<|message|>Hi') and '<|end|>' in text(evs)


def test_padding_id_is_skipped_even_when_preferred():
    evs, _ = run([[TK.pad_id, ord('a')], [TK.vocab_size + 2, ord('b')], TK.eos_id])
    assert [e.id for e in evs] == [ord('a'), ord('b'), TK.eos_id]


def test_split_utf8_character_is_never_a_replacement_char():
    b = list('é世'.encode())
    evs, _ = run([*b, TK.eos_id])
    assert all('\ufffd' not in e.text for e in evs) and text(evs) == 'é世'
    assert [e.text for e in evs[:2]] == ['', 'é']


@pytest.mark.parametrize('script,stop,want', [
    ([W['Hello'], W['#'], W['##'], W[' world']], ['###'], 'Hello'),          # split over 2 tokens
    ([W['Hello'], ord(' '), ord('E'), ord('N'), ord('D'), ord('!')], ['END'], 'Hello '),
    ([W['Hello'], W['##'], ord('x'), W['#'], W['#'], W['#']], ['###'], 'Hello##x'),  # false start released
    ([W['Hello'], W[' world']], ['lo w'], 'Hel'),                              # across a token boundary
])
def test_stop_strings_across_tokens(script, stop, want):
    evs, _ = run(script, stop=stop)
    assert text(evs) == want and evs[-1].finish_reason == 'stop_sequence'
    assert all(s not in text(evs) for s in stop)


def test_held_back_text_is_released_at_eos_and_length():
    evs, _ = run([W['Hello'], W['#'], TK.eos_id], stop=['###'])
    assert text(evs) == 'Hello#' and evs[-1].finish_reason == 'eos'
    evs, _ = run([W['Hello'], W['#']], stop=['###'], max_tokens=2)
    assert text(evs) == 'Hello#' and evs[-1].finish_reason == 'length' and len(evs) == 2


def test_character_cut_off_by_the_end_is_left_out():
    "max_tokens reached after 2 of the 3 bytes of '猫': the half character is dropped, never sent as U+FFFD."
    cat = list('猫'.encode())
    evs, _ = run([W['Hello'], cat[0], cat[1]], max_tokens=3)
    assert text(evs) == 'Hello' and evs[-1].finish_reason == 'length'
    evs, _ = run([W['Hello'], cat[0], cat[1], cat[2]], max_tokens=4)
    assert text(evs) == 'Hello猫'


def test_max_tokens_and_full_context():
    evs, _ = run(None, max_tokens=7)
    assert len(evs) == 7 and evs[-1].finish_reason == 'length'
    evs, be = run(None, prompt='abcd', n_ctx=12, max_tokens=100)
    assert len(evs) == 12 - 4 and evs[-1].finish_reason == 'length'
    evs, _ = run(None, prompt='abcd', n_ctx=12, max_tokens=None)
    assert len(evs) == 8


def test_prompt_overflow_raises_before_generating():
    be = ScriptedBackend(n_ctx=8)
    eng = Engine.from_parts(be, TK)
    with pytest.raises(ContextOverflowError, match='8 tokens but the context holds 8'):
        eng.generate('x' * 8, SamplingParams())
    assert be.calls == []
    assert len(list(eng.generate('x' * 7, SamplingParams(temperature=0)))) == 1
    with pytest.raises(ValueError, match='empty'): eng.generate('', SamplingParams())
    with pytest.raises(ValueError, match='outside the vocabulary'): eng.generate([1, 10**6], SamplingParams())


def test_cancel_between_tokens_and_before_prefill():
    be = ScriptedBackend(n_ctx=64)
    eng = Engine.from_parts(be, TK)
    ev = threading.Event(); ev.set()
    evs = list(eng.generate('hi', SamplingParams(), cancel=ev))
    assert [(e.finish_reason, e.id) for e in evs] == [('cancelled', None)] and be.calls == []
    ev = threading.Event(); out = []
    for e in eng.generate('hi', SamplingParams(seed=0), cancel=ev):
        out.append(e)
        if len(out) == 3: ev.set()
    assert [e.finish_reason for e in out] == [None, None, None, 'cancelled'] and out[-1].completion_tokens == 3


def test_cancel_from_another_thread_releases_the_engine():
    eng = Engine.from_parts(ScriptedBackend([ord('a')] * 4000, n_ctx=4096), TK)   # 'a' forever: no EOS can end it first
    ev, got = threading.Event(), []
    def consume():
        for e in eng.generate('hi', SamplingParams(max_tokens=None, seed=1), cancel=ev): got.append(e)
    t = threading.Thread(target=consume); t.start()
    while len(got) < 5: pass
    ev.set(); t.join(5)
    assert not t.is_alive() and got[-1].finish_reason == 'cancelled'
    assert len(list(eng.generate('hi', SamplingParams(max_tokens=2)))) == 2  # the lock was released


def test_chat_wraps_prompt_and_accepts_messages():
    TK.chats.clear()
    evs, be = run([W['Hello'], TK.eos_id])
    be = ScriptedBackend([TK.eos_id]); eng = Engine.from_parts(be, TK)
    list(eng.generate('hi', SamplingParams(), chat=True))
    msgs = [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'u'}]
    list(eng.generate(None, SamplingParams(), chat=msgs))
    list(eng.generate(msgs, SamplingParams(), chat=True))
    assert TK.chats == [[{'role': 'user', 'content': 'hi'}], msgs, msgs]
    assert bytes(be.seq).decode() == 'system:s\nuser:u\nassistant:'
    assert eng.count_tokens('hi', chat=True) == len('user:hi\nassistant:')
    with pytest.raises(ValueError, match='chat=True'): eng.generate(123, SamplingParams(), chat=True)
    with pytest.raises(ValueError, match='list of token ids'): eng.generate(msgs, SamplingParams())


def test_closing_an_abandoned_stream_releases_the_engine():
    eng = Engine.from_parts(ScriptedBackend(n_ctx=4096), TK)
    g = eng.generate('hi', SamplingParams(max_tokens=None, seed=1))
    next(g); next(g)
    assert eng._lock.locked()
    g.close()
    assert not eng._lock.locked()


def test_seeded_generation_reproducible_and_seed_reported():
    eng = Engine.from_parts(ScriptedBackend(), TK)
    p = SamplingParams(temperature=0.8, seed=42, max_tokens=12)
    a = [e.id for e in eng.generate('hi', p)]
    b = [e.id for e in eng.generate('hi', p)]
    c = [e.id for e in eng.generate('hi', SamplingParams(temperature=0.8, seed=43, max_tokens=12))]
    assert a == b and a != c
    evs = list(eng.generate('hi', SamplingParams(temperature=0.8, max_tokens=12)))
    assert evs[-1].seed is not None
    assert [e.id for e in evs] == [e.id for e in eng.generate('hi', SamplingParams(temperature=0.8, max_tokens=12, seed=evs[-1].seed))]


def test_events_carry_timings_and_info():
    eng = Engine.from_parts(ScriptedBackend(), TK, meta=SimpleNamespace(architecture='toy', file_type_name='F32', context_length=64))
    evs = list(eng.generate('hi', SamplingParams(max_tokens=4, seed=0)))
    assert all(isinstance(e, TokenEvent) for e in evs)
    assert all(b.elapsed >= a.elapsed >= 0 for a, b in zip(evs, evs[1:]))
    info = eng.info()
    assert info['context_length'] == 64 and info['vocab_size'] == TK.vocab_size and info['architecture'] == 'toy'
    json.dumps(info)


# ---------------------------------------------------------------- CPU backend against a fake adapter
class FakeCache:
    def __init__(self, n_ctx): self.n_ctx, self.k, self.filled = n_ctx, np.zeros((2, n_ctx, 4), np.float32), []
    def reset(self): self.filled = []
    n_filled = property(lambda c: len(c.filled), lambda c, n: c.filled.__delitem__(slice(n, None)))  # KVCache's contract
    @property
    def memory_bytes(self): return self.k.nbytes


class FakeAdapter:
    "Logits = one-hot of (sum of all ids in the cache) mod vocab: wrong positions or a lost cache show."
    def __init__(self, vocab=50): self.vocab, self.w, self.calls = vocab, np.ones((vocab, 8), np.float32), []
    def new_cache(self, n_ctx): return FakeCache(n_ctx)
    @property
    def memory_bytes(self): return self.w.nbytes
    def forward(self, ids, positions, cache, all_logits=True):
        self.calls.append((list(ids), list(positions), all_logits))
        out = np.zeros((len(ids), self.vocab), np.float32)
        for r, (i, p) in enumerate(zip(ids, positions)):
            assert p == len(cache.filled), (p, len(cache.filled)); cache.filled.append(int(i))
            out[r, sum(cache.filled) % self.vocab] = 1.0 + (sum(cache.filled) % 7) / 10
        return out if all_logits else out[-1:]


def test_cpu_backend_prefills_in_chunks_and_decodes():
    ad = FakeAdapter()
    be = CPUBackend(ad, n_ctx=16, prefill_chunk=4)
    ids = list(range(1, 11))
    x = be.prefill(ids)
    assert [c[1] for c in ad.calls] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c[2] for c in ad.calls] == [False, False, False]          # the last row of logits only
    assert int(np.argmax(x)) == sum(ids) % 50 and x.shape == (50,) and x.dtype == np.float32
    nxt = be.decode_sample(3, 10, Sampler(SamplingParams(temperature=0)))
    assert nxt == (sum(ids) + 3) % 50
    assert be.memory_bytes == ad.w.nbytes + be.cache.k.nbytes
    assert be.status() == {'healthy': True, 'reason': None, 'vram_bytes_used': None, 'vram_bytes_total': None}
    assert isinstance(be, Backend)
    with pytest.raises(ContextOverflowError, match='outside the cache'): be.decode(1, 16)
    with pytest.raises(ContextOverflowError, match='prefill of 17'): be.prefill(list(range(17)))
    be.prefill([1, 2])  # a new prompt resets the cache
    assert ad.calls[-1][:2] == ([1, 2], [0, 1])


def test_engine_on_cpu_backend_uses_consecutive_positions():
    ad = FakeAdapter(vocab=TK.vocab_size)
    eng = Engine.from_parts(CPUBackend(ad, n_ctx=32), TK)
    evs = list(eng.generate('abc', SamplingParams(temperature=0, max_tokens=5)))
    assert [c[1] for c in ad.calls] == [[0, 1, 2], [3], [4], [5], [6]]
    want, s = [], sum(b'abc')              # the fake's logits pick (sum of the cache) mod vocab
    for _ in range(5): want.append(s % TK.vocab_size); s += want[-1]
    assert [e.id for e in evs] == want and evs[-1].finish_reason == 'length'



# ---------------------------------------------------------------- prompt cache and log-probabilities
def test_cpu_backend_prefill_from_start_continues_the_cache():
    ad = FakeAdapter()
    be = CPUBackend(ad, n_ctx=32, prefill_chunk=4)
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]
    be.prefill(a)
    x = be.prefill(b, 3)                                   # ids[:3] are in the cache: compute 3.. only
    assert ad.calls[-1][1] == [3, 4] and be.cache.filled == b
    fresh = CPUBackend(FakeAdapter(), n_ctx=32).prefill(b)
    np.testing.assert_array_equal(x, fresh)
    with pytest.raises(ValueError): be.prefill([1, 2], 2)        # at least one token is computed
    be.reset()
    with pytest.raises(ValueError): be.prefill(b, 3)             # nothing cached: cannot start at 3


def test_cpu_backend_logprobs_are_log_softmax_of_the_logits():
    ad = FakeAdapter()
    be = CPUBackend(ad, n_ctx=32, prefill_chunk=3)
    ids = [4, 8, 15, 16, 23, 42, 7]
    last, rows = be.prompt_logprobs(ids, 3)
    assert len(rows) == len(ids) - 1 and be.cache.filled == ids
    ref = CPUBackend(FakeAdapter(), n_ctx=32)
    for i in range(1, len(ids)):
        x = ref.prefill(ids[:i]).astype(np.float64)
        lse = np.log(np.exp(x - x.max()).sum()) + x.max()       # independent log-sum-exp
        lp, top, tlp = rows[i - 1]
        assert math.isclose(lp, x[ids[i]] - lse, abs_tol=1e-5)
        order = sorted(range(len(x)), key=lambda j: (-x[j], j))[:3]
        assert list(top) == order and np.allclose(tlp, x[order] - lse, atol=1e-6) and top.dtype == np.int64
        if ids[i] in top: assert lp == float(tlp[list(top).index(ids[i])])   # exactly: clients compare with ==
    np.testing.assert_array_equal(last, ref.prefill(ids))
    lp, top, tlp = be.top_logprobs(5, 0)                         # n = 0: the token's own only
    assert len(top) == 0 and tlp.dtype == np.float32 and lp == float(np.float32(log_softmax(last)[5]))


def _toy_engine(cache=True):
    ad = FakeAdapter(vocab=TK.vocab_size)
    eng = Engine.from_parts(CPUBackend(ad, n_ctx=64), TK)
    eng.prompt_cache = cache
    return eng, ad


def test_prompt_cache_reuses_the_shared_prefix():
    eng, ad = _toy_engine()
    p = SamplingParams(temperature=0, max_tokens=4)
    first = list(eng.generate('hello world', p))
    assert first[-1].cached_tokens == 0
    n0 = len(ad.calls)
    second = list(eng.generate('hello there', p))
    assert ad.calls[n0][1][0] == len('hello ') and second[-1].cached_tokens == len('hello ')
    ref, _ = _toy_engine(cache=False)
    assert [e.id for e in second] == [e.id for e in ref.generate('hello there', p)]     # same result as from scratch
    # the same prompt again: all but the last token are reused (one is always computed for its logits)
    third = list(eng.generate('hello there', p))
    assert third[-1].cached_tokens == len('hello there') - 1 and [e.id for e in third] == [e.id for e in second]
    # a continuation of prompt + completion reuses the generated tokens too (they are in the cache)
    ids = list(b'hello there') + [e.id for e in third[:-1]]
    fourth = list(eng.generate(ids + [33], p))
    assert fourth[-1].cached_tokens == len(ids)


def test_prompt_cache_is_forgotten_after_an_error():
    eng, ad = _toy_engine()
    list(eng.generate('hello world', SamplingParams(temperature=0, max_tokens=2)))
    boom = ad.forward
    def failing(*a, **k): raise RuntimeError('device lost')
    ad.forward = failing
    with pytest.raises(RuntimeError): list(eng.generate('hello world!', SamplingParams(temperature=0, max_tokens=2)))
    assert eng._kv == []
    ad.forward = boom
    evs = list(eng.generate('hello world!', SamplingParams(temperature=0, max_tokens=2)))
    assert evs[-1].cached_tokens == 0


def test_backend_without_start_gets_no_prompt_cache():
    class Old(ScriptedBackend):
        def prefill(self, ids): return super().prefill(ids)
    eng = Engine.from_parts(Old(None), TK)
    assert not eng.prompt_cache
    for _ in range(2): assert list(eng.generate('hi', SamplingParams(max_tokens=2, seed=1)))[-1].cached_tokens == 0


def test_backend_without_logprob_calls_refuses_logprobs_up_front():
    class Old(ScriptedBackend):
        top_logprobs = prompt_logprobs = None
    eng = Engine.from_parts(Old(None), TK)
    for field in ('logprobs', 'prompt_logprobs'):
        with pytest.raises(InvalidRequestError) as e: eng.generate('hi', SamplingParams(**{field: 1}))
        assert e.value.param == field
    assert list(eng.generate('hi', SamplingParams(max_tokens=2, seed=1)))

def test_token_events_carry_logprobs_of_the_raw_logits():
    be = ScriptedBackend(None)
    eng = Engine.from_parts(be, TK)
    seen = []
    orig = be._logits
    be._logits = lambda: seen.append(orig()) or seen[-1]
    # penalties and temperature change the draw, not the reported distribution
    p = SamplingParams(temperature=0.7, repetition_penalty=1.3, seed=5, max_tokens=6, logprobs=3)
    evs = list(eng.generate('abc', p))
    for e, x in zip(evs, seen):
        x = np.asarray(x, np.float64); lse = np.log(np.exp(x - x.max()).sum()) + x.max()
        assert math.isclose(e.logprob, x[e.id] - lse, abs_tol=1e-6)
        assert [i for i, _ in e.top_logprobs] == sorted(range(len(x)), key=lambda j: (-x[j], j))[:3]
        assert all(math.isclose(v, x[i] - lse, abs_tol=1e-5) for i, v in e.top_logprobs)
    assert all(e.logprob is None for e in eng.generate('abc', SamplingParams(max_tokens=2)))


def test_prompt_logprobs_on_the_first_event():
    be = ScriptedBackend(None)
    eng = Engine.from_parts(be, TK)
    evs = list(eng.generate('abcd', SamplingParams(max_tokens=3, seed=2, prompt_logprobs=2)))
    plp = evs[0].prompt_logprobs
    assert len(plp) == 3 and all(e.prompt_logprobs is None for e in evs[1:])
    for k, (lp, top) in enumerate(plp):
        want = log_softmax(be.rows[k])
        assert math.isclose(lp, want[b'abcd'[k + 1]], abs_tol=1e-6) and len(top) == 2
        assert top[0][0] == int(np.argmax(want))
    assert evs[-1].cached_tokens == 0

# ---------------------------------------------------------------- device, context, CLI args
def test_device_and_context_choice(monkeypatch):
    import orcd.engine as E
    assert resolve_device('cpu') == 'cpu'
    with pytest.raises(InvalidRequestError, match='unknown device') as ei: resolve_device('tpu')
    assert ei.value.param == 'device'
    monkeypatch.setattr(E, 'cuda_unavailable', lambda: None)                      # a machine that can run CUDA
    assert resolve_device('auto') == 'cuda:0' and resolve_device('cuda') == 'cuda:0' and resolve_device('CUDA:1') == 'cuda:1'
    monkeypatch.setattr(E, 'cuda_unavailable', lambda: 'no CUDA device')           # one that cannot
    assert resolve_device('auto') == 'cpu'
    with pytest.raises(BackendUnavailableError, match='--device cuda:1: no CUDA device') as ei: resolve_device('cuda:1')
    assert ei.value.code == 'BACKEND_UNAVAILABLE' and ei.value.status == 503
    assert choose_n_ctx(32768, None, 'cpu') == 4096 and choose_n_ctx(8192, None, 'cuda') == 8192
    with pytest.raises(ValueError, match='trained for'): choose_n_ctx(2048, 4096)
    with pytest.raises(ValueError, match='at least 2'): choose_n_ctx(2048, 1)
    assert load_backend('cpu').__self__ is CPUBackend


def test_cuda_device_refused_before_anything_loads(monkeypatch):
    import orcd.engine as E, orcd.pull
    monkeypatch.setattr(E, 'cuda_unavailable', lambda: 'CuPy is not installed')
    monkeypatch.setattr(orcd.pull, 'resolve_model', lambda *a, **k: pytest.fail('the model was resolved'))
    with pytest.raises(BackendUnavailableError, match='CuPy is not installed'): Engine('smollm2-135m-instruct', device='cuda')


def test_missing_backend_is_a_clear_error(monkeypatch, tmp_path):
    import orcd.engine as E, orcd.cuda
    assert E.BACKENDS['cuda'] == 'orcd.cuda_backend:CUDABackend'
    monkeypatch.setattr(orcd.cuda, 'cuda_device', lambda: (None, 'CuPy is not installed (ModuleNotFoundError)'))
    assert cuda_unavailable() == 'CuPy is not installed (ModuleNotFoundError)'
    monkeypatch.setattr(orcd.cuda, 'cuda_device', lambda: (object(), 1))           # CuPy and a device: the backend decides
    (tmp_path / 'orcd_broken_backend.py').write_text('import orcd_no_such_dependency\n')
    (tmp_path / 'orcd_empty_backend.py').write_text('')
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, why in [('orcd.no_such_backend:CUDABackend', 'this orcd has no module orcd.no_such_backend'),
                        ('orcd_broken_backend:CUDABackend', "orcd_broken_backend failed to import (ModuleNotFoundError: No module named 'orcd_no_such_dependency')"),
                        ('orcd_empty_backend:CUDABackend', 'orcd_empty_backend has no CUDABackend')]:
        monkeypatch.setitem(E.BACKENDS, 'cuda', target)
        with pytest.raises(BackendUnavailableError, match='cuda backend is not available') as ei: load_backend('cuda')
        assert why in str(ei.value) and why in cuda_unavailable()
        assert load_backend('cuda', quiet=True) is None and resolve_device('auto') == 'cpu'
    monkeypatch.setitem(E.BACKENDS, 'cuda', 'orcd.engine:CPUBackend')              # one that imports: auto takes it
    assert cuda_unavailable() is None and resolve_device('auto') == 'cuda:0'


def test_params_from_cli_args():
    from orcd.cli import make_parser
    a = make_parser().parse_args(['generate', 'm', 'p', '--temperature', '0.5', '--top-k', '3', '--top-p', '0.9',
                                  '--min-p', '0.1', '--repetition-penalty', '1.1', '--seed', '9', '--stop', 'A', '--stop', 'B',
                                  '--max-tokens', '5', '--presence-penalty', '0.3', '--frequency-penalty', '0.2'])
    p = params_from_args(a)
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.seed, p.stop, p.max_tokens) == \
           (0.5, 3, 0.9, 0.1, 1.1, 9, ('A', 'B'), 5)
    assert (p.presence_penalty, p.frequency_penalty) == (0.3, 0.2)
    assert params_from_args(make_parser().parse_args(['generate', 'm', 'p'])).temperature == 0.0


# ---------------------------------------------------------------- orcd bench (fast parts; llama-bench faked)
FAKE_LLAMA_BENCH = '''#!/usr/bin/env python3
import json, sys
a = sys.argv[1:]
if a[a.index('-m') + 1].endswith('bad.gguf'): sys.exit('boom')
ps, n = [int(p) for p in a[a.index('-p') + 1].split(',')], int(a[a.index('-n') + 1])
print(json.dumps([{"n_prompt": p, "n_gen": 0, "avg_ts": 400.0 / (1 + k)} for k, p in enumerate(ps)]
                 + [{"n_prompt": 0, "n_gen": n, "avg_ts": 20.0}]))
'''


def fake_llama_bench(tmp_path):
    exe = tmp_path / 'llama-bench'
    exe.write_text(FAKE_LLAMA_BENCH); exe.chmod(0o755)
    return exe


def test_bench_backend_counts_tokens():
    from orcd.bench import bench_backend
    be = ScriptedBackend(n_ctx=64)
    r = bench_backend(be, TK.vocab_size, prompt_tokens=10, gen_tokens=5, reps=2)
    assert r['prompt_tokens'] == 10 and r['gen_tokens'] == 5 and r['prefill_tps']['n'] == r['decode_tps']['n'] == 2
    assert 0 < r['prefill_tps']['min'] <= r['prefill_tps']['median'] <= r['prefill_tps']['max'] and r['decode_tps']['median'] > 0
    assert len(be.seq) == 8 + 5  # the last decode run: a prefill of 8, then 5 decode steps at consecutive positions
    with pytest.raises(ValueError, match='needs a context of 70'): bench_backend(be, TK.vocab_size, 70, 5)
    ahead = AheadBackend(n_ctx=64)                                    # decoding ahead: 5 steps as 4 + 1, as the engine asks
    bench_backend(ahead, TK.vocab_size, prompt_tokens=10, gen_tokens=5, reps=1)
    assert len(ahead.seq) == 8 + 5 and [c for c in ahead.calls if c[0] == 'ahead'][-2:] == [('ahead', 8, 4), ('ahead', 12, 1)]


def test_llama_bench_parse_and_run(tmp_path):
    from orcd.bench import parse_llama_bench, run_llama_bench, llama_bench_cmd, format_table
    model = tmp_path / 'm.gguf'; model.write_text('x')
    assert run_llama_bench(fake_llama_bench(tmp_path), model, 16, 4) == {'prefill_tps': {'median': 400.0, 'stddev': 0.0},
                                                                         'decode_tps': {'median': 20.0, 'stddev': 0.0}}
    bad = tmp_path / 'bad.gguf'; bad.write_text('--fail')
    with pytest.raises(RuntimeError, match='llama-bench failed'): run_llama_bench(tmp_path / 'llama-bench', bad)
    with pytest.raises(FileNotFoundError): run_llama_bench(tmp_path / 'nope', model)
    with pytest.raises(RuntimeError, match='JSON'): parse_llama_bench('error: no model')
    with pytest.raises(RuntimeError, match='no pp/tg'): parse_llama_bench('[]')
    assert '-ngl' in llama_bench_cmd('x', model, device='cpu')
    s = lambda v: dict(median=v, min=v, max=v, n=1)
    t = format_table(dict(prompt_tokens=16, gen_tokens=4, prefill_tps=s(100.0), decode_tps=s(5.0)),
                     {'prefill_tps': {'median': 400.0}, 'decode_tps': {'median': 20.0}})
    assert 'pp16' in t and 'tg4' in t and t.count('0.25×') == 2


def test_cli_bench_with_fake_engine(tmp_path, monkeypatch, capsys):
    import orcd.bench as B
    from orcd.cli import main
    model = tmp_path / 'm.gguf'; model.write_text('x')
    def fake_engine(name, device='auto', **kw):
        e = Engine.from_parts(ScriptedBackend(n_ctx=256), TK, meta=SimpleNamespace(architecture='toy', file_type_name='F32'), model_name='toy')
        e.path = model
        return e
    monkeypatch.setattr(B, 'Engine', fake_engine)
    assert main(['bench', 'toy', '--prompt-tokens', '8', '--gen-tokens', '3', '--long-prompt', '0',
                 '--llama-bench', str(fake_llama_bench(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert 'pp8' in out and 'tg3' in out and 'llama.cpp' in out and 'toy' in out
    assert main(['bench', 'toy', '--prompt-tokens', '8', '--gen-tokens', '3', '--long-prompt', '24',
                 '--llama-bench', str(fake_llama_bench(tmp_path)), '--json']) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got['orcd']['prefill_long_tps']['n'] == 3 and got['llama_cpp']['prefill_long_tps']['median'] == 200.0
    assert main(['bench', 'toy', '--prompt-tokens', '300']) == 1
    err = capsys.readouterr().err
    assert err.startswith('orcd bench: error: ') and 'needs a context of 300' in err
