"""What real clients use (issue 11), through the official openai client against `orcd serve` in a subprocess:
log-probabilities (chat and completions, streamed and not, `echo`) equal to the log-softmax of the model's logits
computed here independently (one forward pass of the adapter over prompt + completion); the prompt cache reported
as `usage.prompt_tokens_details.cached_tokens`; `/execute` logprob events; `/tokenize` and `/detokenize`.
smollm2-135m-instruct keeps it fast; the structured-output and tool-call evidence on Qwen is in
tests/test_server_qwen.py."""
import json, math

import httpx, numpy as np, pytest

from conftest import real_model
from fake_engine import real_server, sse_events

MODEL = 'smollm2-135m-instruct'
TOL = 2e-3   # the server's logits come from chunked prefill + single-token decode, ours from one pass: float32 rounding


@pytest.fixture(scope='module')
def rs():
    real_model(MODEL)
    with real_server(MODEL, '--device', 'cpu', '--ctx', '512', '--inference-timeout', 240) as s: yield s
    assert s.proc.returncode == 0, s.log()[-2000:]


@pytest.fixture(scope='module')
def oai(rs):
    import openai
    return openai.OpenAI(base_url=rs.url + '/v1', api_key='none', max_retries=0, timeout=240)


@pytest.fixture(scope='module')
def model():
    "The tokenizer, and the log-softmax rows of a sequence from one independent forward pass."
    from orcd.adapters import load_adapter
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    gf = GGUFFile(real_model(MODEL))
    tok, ad = load_tokenizer(gf), load_adapter(gf)
    def rows(ids):
        x = ad.forward(np.asarray(ids), np.arange(len(ids)), ad.new_cache(len(ids))).astype(np.float64)  # (T, vocab)
        m = x.max(axis=1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return tok, rows


def piece(tok, i): return tok.token_bytes(i).decode('utf-8', 'replace')


def test_chat_logprobs_equal_log_softmax_of_the_logits(oai, model):
    tok, rows = model
    msgs = [{'role': 'user', 'content': 'Name three fruits.'}]
    r = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0.8, seed=3,
                                    logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    by_bytes = {}                  # the chat shape names tokens by their bytes: back to ids (the first id wins)
    for i in range(tok.vocab_size): by_bytes.setdefault(tok.token_bytes(i), i)
    prompt, gen = tok.encode_chat(msgs), [by_bytes[bytes(c.bytes)] for c in content]
    lp = rows(prompt + gen)
    for k, c in enumerate(content):
        row = lp[len(prompt) - 1 + k]
        assert math.isclose(c.logprob, row[gen[k]], abs_tol=TOL)
        best = np.argsort(-row, kind='stable')[:3]
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(row[best], abs=TOL)
        assert [bytes(t.bytes) for t in c.top_logprobs] == [tok.token_bytes(int(i)) for i in best]
    # streamed: the same tokens and log-probabilities (same seed)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0.8, seed=3,
                                              logprobs=True, top_logprobs=3, stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]      # (the prompt cache changes the rounding only)
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=TOL)


def test_completion_logprobs_and_echo(oai, model):
    tok, rows = model
    prompt = 'The capital of France is'
    r = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    pids = tok.encode(prompt)
    lp = c.logprobs
    assert c.text.startswith(prompt) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    n = len(pids) + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == n
    assert lp.tokens[:len(pids)] == [piece(tok, i) for i in pids] and lp.text_offset[0] == 0
    assert all(b >= a for a, b in zip(lp.text_offset, lp.text_offset[1:]))
    by_bytes = {}
    for i in range(tok.vocab_size): by_bytes.setdefault(tok.token_bytes(i), i)
    seq = pids + [by_bytes[t.encode()] for t in lp.tokens[len(pids):]]
    ref = rows(seq)
    for k in range(1, n):
        assert math.isclose(lp.token_logprobs[k], ref[k - 1][seq[k]], abs_tol=TOL), k
        best = int(np.argmax(ref[k - 1]))
        assert math.isclose(max(lp.top_logprobs[k].values()), ref[k - 1][best], abs_tol=TOL)
    # greedy: every generated token is the top one
    for k in range(len(pids), n): assert math.isclose(lp.token_logprobs[k], max(lp.top_logprobs[k].values()), abs_tol=1e-6)
    # without echo: only the completion, offsets from 0
    r2 = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    assert r2.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[len(pids):], abs=TOL)
    assert r2.choices[0].logprobs.text_offset[0] == 0 and r2.choices[0].text == c.text[len(prompt):]
    # streamed, with echo: the prompt first, then one chunk per token; the same numbers
    chunks = [ch.choices[0] for ch in oai.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                                               logprobs=2, echo=True, stream=True) if ch.choices]
    assert ''.join(ch.text for ch in chunks) == c.text
    s_lps = [v for ch in chunks if ch.logprobs for v in ch.logprobs.token_logprobs]
    assert s_lps[0] is None and s_lps[1:] == pytest.approx(lp.token_logprobs[1:], abs=TOL)
    # echo without logprobs: the text only
    r3 = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0, echo=True)
    assert r3.choices[0].text.startswith(prompt) and r3.choices[0].logprobs is None


def test_prompt_cache_second_turn(oai):
    msgs = [{'role': 'system', 'content': 'You are terse.'}, {'role': 'user', 'content': 'Say one word.'}]
    r1 = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
    msgs += [{'role': 'assistant', 'content': r1.choices[0].message.content}, {'role': 'user', 'content': 'Another.'}]
    r2 = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r1.usage.prompt_tokens - 1 <= cached < r2.usage.prompt_tokens   # the first turn's prompt (and more) reused
    # a different system prompt shares only the template's first tokens
    r3 = oai.chat.completions.create(model=MODEL, messages=[{'role': 'system', 'content': 'Be verbose.'}, msgs[1]],
                                     max_tokens=2, temperature=0)
    assert r3.usage.prompt_tokens_details.cached_tokens < 8


def test_execute_logprobs_and_cached_tokens(rs, model):
    tok, rows = model
    with httpx.Client(base_url=rs.url, timeout=240) as hc:
        body = {'job_id': 'lp-1', 'prompt': 'Once upon a time', 'max_tokens': 4, 'temperature': 0, 'logprobs': 2}
        _, evs, _ = sse_events(hc, '/execute', body)
        toks = [d for k, d in evs if k == 'token']
        assert all(set(d) == {'t', 'i', 'logprob', 'top_logprobs'} and len(d['top_logprobs']) == 2 for d in toks)
        assert all(math.isclose(d['logprob'], d['top_logprobs'][0]['logprob'], abs_tol=1e-6) for d in toks)  # greedy
        ids = tok.encode('Once upon a time', add_special=True, parse_special=True)
        ref = rows(ids + [d['top_logprobs'][0]['id'] for d in toks])
        assert math.isclose(toks[0]['logprob'], ref[len(ids) - 1].max(), abs_tol=TOL)
        _, evs2, _ = sse_events(hc, '/execute', {**body, 'job_id': 'lp-2'})
        assert evs2[-1][1]['cached_tokens'] == len(ids) - 1 and [d['t'] for k, d in evs2 if k == 'token'] == [d['t'] for d in toks]


def test_tokenize_detokenize(rs, model):
    tok, _ = model
    with httpx.Client(base_url=rs.url, timeout=60) as hc:
        text = 'Hello <|im_start|> wörld 🙂'
        ids = hc.post('/tokenize', json={'content': text}).json()['tokens']
        assert ids == tok.encode(text, add_special=False, parse_special=True)
        assert hc.post('/tokenize', json={'content': text, 'parse_special': False}).json()['tokens'] == tok.encode(text, add_special=False)
        pieces = hc.post('/tokenize', json={'content': text, 'with_pieces': True}).json()['tokens']
        assert [p['id'] for p in pieces] == ids
        assert b''.join(p['piece'].encode() if isinstance(p['piece'], str) else bytes(p['piece']) for p in pieces) == text.encode()
        assert hc.post('/detokenize', json={'tokens': ids}).json() == {'content': text, 'prompt': text}
        # vLLM's spellings, which lm-evaluation-harness's remote tokenizer uses
        assert hc.post('/tokenize', json={'prompt': text, 'add_special_tokens': False}).json()['tokens'] == ids
        info = hc.get('/tokenizer_info').json()
        assert info['eos_token'] == tok.eos_token and info['chat_template'] == tok.chat_template
        r = hc.post('/detokenize', json={'tokens': [1, 10**9]})
        assert r.status_code == 400 and r.json()['error']['code'] == 'INVALID_REQUEST'
