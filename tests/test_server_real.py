"""Server checks against the REAL engine and model (smollm2-135m-instruct on CPU), served by the real CLI path
(`orcd serve MODEL --api-key ...` in a subprocess): the official openai client (chat and completions, streaming
and not), /execute with a CJK/emoji prompt (strict UTF-8 on the wire, no U+FFFD), seed reproducibility, stop
strings, max_tokens. Generations are kept to a few tokens: the numpy CPU backend is slow on 2 shared cores."""
import httpx, pytest

from conftest import real_model
from fake_engine import real_server, sse_events

KEY = 'test-key-123'
AUTH = {'Authorization': f'Bearer {KEY}'}
MODEL = 'smollm2-135m-instruct'

@pytest.fixture(scope='module')
def rs():
    real_model(MODEL)  # pulled and verified (instant when cached)
    with real_server(MODEL, '--device', 'cpu', '--ctx', '256', '--api-key', KEY, '--inference-timeout', 240) as s:
        yield s
    assert s.proc.returncode == 0, s.log()[-2000:]  # SIGTERM drained and exited 0

@pytest.fixture(scope='module')
def tok():
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    return load_tokenizer(GGUFFile(real_model(MODEL)))

@pytest.fixture(scope='module')
def oai(rs):
    import openai
    return openai.OpenAI(base_url=rs.url + '/v1', api_key=KEY, max_retries=0, timeout=240)

@pytest.fixture
def hc(rs):
    with httpx.Client(base_url=rs.url, timeout=240, headers=AUTH) as c: yield c


def test_health_of_real_model(hc):
    h = hc.get('/health').json()
    assert h['model'] == MODEL and h['architecture'] == 'llama' and h['device'] == 'cpu' and h['context_length'] == 256
    assert h['vocab_size'] == 49152 and h['tokenizer_kind'].startswith('gguf') and h['resident'] is True


def test_openai_chat_stream_and_not(oai, tok):
    msgs = [{'role': 'user', 'content': 'What is the capital of France?'}]
    assert [m.id for m in oai.models.list().data] == [MODEL]
    r = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, temperature=0, seed=1)
    c = r.choices[0]
    assert c.message.role == 'assistant' and c.message.content and c.finish_reason in ('stop', 'length')
    assert r.usage.prompt_tokens == len(tok.encode_chat(msgs))  # the GGUF's chat template, as the tokenizer applies it
    assert 1 <= r.usage.completion_tokens <= 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if c.finish_reason == 'length': assert r.usage.completion_tokens == 5
    chunks = list(oai.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=5, temperature=0, seed=1,
                                              stream=True, stream_options={'include_usage': True}))
    text = ''.join(ch.choices[0].delta.content or '' for ch in chunks if ch.choices)
    assert text == c.message.content  # greedy: the stream carries exactly the same text
    fins = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert fins == [c.finish_reason] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    print(f'\nchat: {c.message.content!r} ({c.finish_reason})')


def test_openai_completions_stream_and_not(oai, tok):
    r = oai.completions.create(model=MODEL, prompt='The capital of France is', max_tokens=4, temperature=0)
    c = r.choices[0]
    assert c.text and c.finish_reason in ('stop', 'length')
    assert r.usage.prompt_tokens == len(tok.encode('The capital of France is'))
    text = ''.join(ch.choices[0].text for ch in oai.completions.create(
        model=MODEL, prompt='The capital of France is', max_tokens=4, temperature=0, stream=True) if ch.choices)
    assert text == c.text
    print(f'\ncompletion: {c.text!r}')


def test_execute_utf8_and_seed_reproducible(hc):
    body = {'job_id': 'u1', 'prompt': '用中文回答：我喜欢猫 🐱 和 咖啡 ☕。你呢？', 'max_tokens': 6, 'temperature': 1.0, 'seed': 1234}
    st, evs, _ = sse_events(hc, '/execute', body)  # decodes the raw bytes strictly as UTF-8
    assert st == 200 and evs[0][0] == 'started' and evs[0][1]['seed'] == 1234 and evs[-1][0] == 'end'
    toks = [(d['t'], d['i']) for k, d in evs if k == 'token']
    assert toks and all('\ufffd' not in t for t, _ in toks)
    st, evs2, _ = sse_events(hc, '/execute', {**body, 'job_id': 'u2'})
    assert [(d['t'], d['i']) for k, d in evs2 if k == 'token'] == toks  # same seed → same events
    assert evs2[-1][1]['tokens_out'] == evs[-1][1]['tokens_out'] and evs2[-1][1]['stop_reason'] == evs[-1][1]['stop_reason']
    print(f"\nseeded CJK/emoji run: {''.join(t for t, _ in toks)!r}")


def test_execute_max_tokens_and_stop_sequence(hc):
    body = {'job_id': 's1', 'prompt': 'The capital of France is', 'max_tokens': 6, 'temperature': 0}
    _, evs, _ = sse_events(hc, '/execute', body)
    end = evs[-1][1]
    text = ''.join(d['t'] for k, d in evs if k == 'token')
    assert evs[-1][0] == 'end' and end['stop_reason'] in ('max_tokens', 'eos')
    if end['stop_reason'] == 'max_tokens': assert end['tokens_out'] == 6
    k = max(1, len(text) // 2)
    stop = text[k:k + 3].strip() or text[k:k + 3]
    j = text.find(stop)
    _, evs2, _ = sse_events(hc, '/execute', {**body, 'job_id': 's2', 'stop': [stop]})
    text2 = ''.join(d['t'] for k, d in evs2 if k == 'token')
    print(f'\ngreedy: {text!r}; stop {stop!r} → {text2!r}')
    assert evs2[-1][0] == 'end' and evs2[-1][1]['stop_reason'] == 'stop_sequence'
    assert text2 == text[:j] and stop not in text2


def test_execute_with_chat_messages(hc, oai):
    "/execute renders `messages` with the model's chat template, as /v1/chat/completions does: same greedy text."
    msgs = [{'role': 'user', 'content': 'What is the capital of France?'}]
    _, evs, _ = sse_events(hc, '/execute', {'job_id': 'chat-1', 'messages': msgs, 'max_tokens': 5, 'temperature': 0})
    toks = [d for k, d in evs if k == 'token']
    assert evs[-1][0] == 'end' and evs[-1][1]['tokens_out'] == len(toks)
    r = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, temperature=0)
    assert ''.join(d['t'] for d in toks) == r.choices[0].message.content and r.usage.completion_tokens == len(toks)
