"""Ollama's API (orcd.ollama): the official `ollama` Python client against real uvicorn servers, and the field mapping.

* in process (Starlette's TestClient, the fake engine): options → sampling parameters as the engine receives them,
  the NDJSON stream and its last object, `context` round trips, errors in Ollama's shape;
* a fake-engine server (uvicorn subprocess): the client's `chat`/`generate`/`list`/`show`, 429 when the queue is full,
  a disconnect cancels the job;
* the real model (smollm2-135m-instruct on CPU) behind the real `orcd serve` CLI path: `chat` streamed and not,
  `generate`, `list`, `show`, and the same greedy text as `/v1/chat/completions`.

`create_app` registers the Ollama routes itself (07_server), so every server here is the plain one."""
import json, sys, threading, time
from pathlib import Path

import httpx, pytest

from conftest import real_model
from fake_engine import FakeEngine, ServerProc, free_port

try: import ollama   # the official client (the dev extra)
except ImportError: ollama = None
needs_client = pytest.mark.skipif(ollama is None, reason='the ollama client is not installed: pip install -e .[dev]')

from fastapi.testclient import TestClient
from orcd.ollama import OLLAMA_DEFAULTS, ollama_sampling
from orcd.server import create_app
from orcd.errors import InvalidRequestError

MODEL = 'smollm2-135m-instruct'
FAKE = str(Path(__file__).resolve().parent / 'fake_engine.py')


def ollama_fake_server(*args):
    "tests/fake_engine.py's server (its `create_app` has the Ollama routes)."
    port = free_port()
    return ServerProc([sys.executable, FAKE, '--port', str(port), *map(str, args)], port)

def ollama_real_server(model, *args, ready_timeout=120.0):
    "`orcd serve MODEL --port P ARGS`: the real CLI path."
    port = free_port()
    return ServerProc([sys.executable, '-m', 'orcd.cli', 'serve', str(model), '--port', str(port), *map(str, args)], port,
                      ready_timeout=ready_timeout)

def ndjson(text): return [json.loads(l) for l in text.splitlines() if l.strip()]


# ---- in process: the field mapping --------------------------------------------------------------------------------
class Recording(FakeEngine):
    "A fake engine that keeps the SamplingParams of every job."
    def __init__(self, **kw):
        super().__init__(**kw); self.params = []
    def generate(self, prompt, params, chat=False, cancel=None):
        self.params.append(params); return super().generate(prompt, params, chat, cancel)

@pytest.fixture
def app_engine():
    eng = Recording(eos_after=6)
    with TestClient(create_app(eng)) as tc: yield tc, eng


def test_options_reach_the_engine(app_engine):
    tc, eng = app_engine
    opts = {'temperature': 0.3, 'top_k': 7, 'top_p': 0.5, 'min_p': 0.05, 'repeat_penalty': 1.3, 'repeat_last_n': 16,
            'presence_penalty': 0.2, 'frequency_penalty': 0.1, 'seed': 42, 'num_predict': 4, 'stop': ['zz', 'yy'],
            'num_ctx': 99999, 'num_gpu': 1, 'mirostat': 0, 'typical_p': 1.0, 'unknown_option': 'x'}
    r = tc.post('/api/chat', json={'model': 'fake-model', 'stream': False, 'options': opts,
                                   'messages': [{'role': 'user', 'content': 'hi'}]})
    assert r.status_code == 200, r.text
    p = eng.params[-1]
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.penalty_last_n) == (0.3, 7, 0.5, 0.05, 1.3, 16)
    assert (p.presence_penalty, p.frequency_penalty, p.seed, p.max_tokens, tuple(p.stop)) == (0.2, 0.1, 42, 4, ('zz', 'yy'))
    # nothing given: Ollama's defaults, a fresh seed each time, and no token limit but the context
    for _ in range(2): tc.post('/api/generate', json={'model': 'fake-model', 'prompt': 'hi', 'stream': False})
    a, b = eng.params[-2:]
    assert (a.temperature, a.top_k, a.top_p, a.repetition_penalty, a.penalty_last_n) == (
        OLLAMA_DEFAULTS['temperature'], OLLAMA_DEFAULTS['top_k'], OLLAMA_DEFAULTS['top_p'], OLLAMA_DEFAULTS['repeat_penalty'],
        OLLAMA_DEFAULTS['repeat_last_n'])
    assert a.seed != b.seed and a.max_tokens == 4096 - len(eng.tokenizer.encode_chat([{'role': 'user', 'content': 'hi'}]))


def test_option_mapping_edges():
    assert ollama_sampling({'stop': 'END'})['stop'] == ('END',) and ollama_sampling({'stop': ['', 'x']})['stop'] == ('x',)
    for n in (-1, -2, 0): assert ollama_sampling({'num_predict': n})['max_tokens'] is None
    assert ollama_sampling({'seed': 2**64 + 5})['seed'] == 5
    for bad in ({'mirostat': 1}, {'typical_p': 0.5}, {'tfs_z': 0.9}):
        with pytest.raises(InvalidRequestError) as ei: ollama_sampling(bad)
        assert ei.value.param == 'options.' + next(iter(bad))


def test_stream_lines_and_last_object(app_engine):
    tc, eng = app_engine
    r = tc.post('/api/chat', json={'model': 'fake-model:latest', 'messages': [{'role': 'user', 'content': 'hello'}]})
    assert r.status_code == 200 and r.headers['content-type'].startswith('application/x-ndjson')
    lines = ndjson(r.text)
    *parts, last = lines
    assert parts and all(l['done'] is False and l['model'] == 'fake-model' and l['message']['role'] == 'assistant'
                         and l['message']['content'] and l['created_at'].endswith('Z') for l in parts)
    assert last['done'] is True and last['message'] == {'role': 'assistant', 'content': ''} and last['done_reason'] == 'stop'
    assert last['eval_count'] == 6  # eos_after=6: six tokens, the end-of-turn token not counted
    assert last['prompt_eval_count'] == len(eng.tokenizer.encode_chat([{'role': 'user', 'content': 'hello'}]))
    for k in ('total_duration', 'load_duration', 'prompt_eval_duration', 'eval_duration'): assert isinstance(last[k], int) and last[k] >= 0
    assert last['total_duration'] >= last['prompt_eval_duration'] + last['eval_duration']
    r2 = tc.post('/api/chat', json={'model': 'fake-model', 'stream': False, 'messages': [{'role': 'user', 'content': 'hello'}]})
    one = r2.json()
    assert one['done'] is True and one['eval_count'] == 6 and one['done_reason'] == 'stop'
    # the fake engine's text depends on the seed: same seed, same text, streamed or not
    body = {'model': 'fake-model', 'messages': [{'role': 'user', 'content': 'hello'}], 'options': {'seed': 9, 'num_predict': 5}}
    s = ''.join(l['message']['content'] for l in ndjson(tc.post('/api/chat', json=body).text))
    n = tc.post('/api/chat', json={**body, 'stream': False}).json()
    assert s == n['message']['content'] and n['done_reason'] == 'length' and n['eval_count'] == 5


def test_generate_context_round_trip(app_engine):
    tc, eng = app_engine
    r = tc.post('/api/generate', json={'model': 'fake-model', 'prompt': 'one', 'stream': False, 'options': {'num_predict': 3}}).json()
    assert len(r['context']) == r['prompt_eval_count'] + r['eval_count'] and r['eval_count'] == 3
    assert r['context'][:r['prompt_eval_count']] == eng.tokenizer.encode_chat([{'role': 'user', 'content': 'one'}])
    r2 = tc.post('/api/generate', json={'model': 'fake-model', 'prompt': 'two', 'context': r['context'], 'stream': False,
                                        'system': 'be brief'}).json()
    turn = eng.tokenizer.encode_chat([{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'two'}])
    assert r2['prompt_eval_count'] == len(r['context']) + len(turn)
    raw = tc.post('/api/generate', json={'model': 'fake-model', 'prompt': 'abc', 'raw': True, 'stream': False}).json()
    assert raw['prompt_eval_count'] == 3 and 'context' not in raw
    # streamed: the context comes on the last line
    last = ndjson(tc.post('/api/generate', json={'model': 'fake-model', 'prompt': 'one', 'options': {'num_predict': 3}}).text)[-1]
    assert last['done'] and len(last['context']) == last['prompt_eval_count'] + 3


def test_load_requests_and_listing(app_engine):
    tc, _ = app_engine
    r = tc.post('/api/chat', json={'model': 'fake-model', 'messages': []}).json()
    assert r['done'] is True and r['done_reason'] == 'load' and r['message']['content'] == ''
    assert tc.post('/api/generate', json={'model': 'fake-model'}).json()['done_reason'] == 'load'
    tags = tc.get('/api/tags').json()['models']
    assert [m['name'] for m in tags] == ['fake-model:latest'] and len(tags[0]['digest']) == 64
    ps = tc.get('/api/ps').json()['models'][0]
    assert ps['context_length'] == 4096 and ps['size_vram'] == 0
    assert tc.get('/api/version').json()['version']


USER = [{'role': 'user', 'content': 'x'}]

@pytest.mark.parametrize('body, status', [
    ({'messages': USER}, 400),                                                        # no model
    ({'model': 'llama3.2', 'messages': USER}, 404),                                   # another model
    ({'model': 'fake-model', 'messages': USER, 'format': 'json'}, 400),               # structured output
    ({'model': 'fake-model', 'messages': USER, 'tools': [{'type': 'function'}]}, 400),
    ({'model': 'fake-model', 'messages': USER, 'think': True}, 400),
    ({'model': 'fake-model', 'messages': USER, 'options': {'temperature': 'hot'}}, 400),  # pydantic
    ({'model': 'fake-model', 'messages': USER, 'options': {'temperature': -1}}, 400),     # the engine's validation
    ({'model': 'fake-model', 'messages': USER, 'options': {'mirostat': 2}}, 400),
    ({'model': 'fake-model', 'messages': [{'role': 'wizard', 'content': 'x'}]}, 400),
    ({'model': 'fake-model', 'messages': [{'role': 'user', 'content': 'x' * 5000}]}, 400),  # longer than the context
])
def test_errors_in_ollama_shape(app_engine, body, status):
    tc, eng = app_engine
    n = len(eng.params)
    r = tc.post('/api/chat', json=body)
    assert r.status_code == status and list(r.json()) == ['error'] and isinstance(r.json()['error'], str) and r.json()['error']
    assert len(eng.params) == n  # refused before any job ran


def test_refusals_name_the_field():
    from orcd.ollama import OllamaChatRequest, OllamaGenerateRequest, ModelCard, _refuse_unsupported
    for req, param in ((OllamaChatRequest(tools=[{}]), 'tools'), (OllamaChatRequest(format={'type': 'object'}), 'format'),
                       (OllamaChatRequest(logprobs=True), 'logprobs'), (OllamaGenerateRequest(images=['x']), 'images'),
                       (OllamaChatRequest(messages=[{'role': 'assistant', 'content': '', 'tool_calls': [{}]}]), 'messages[0].tool_calls'),
                       (OllamaGenerateRequest(template='{{ .Prompt }}'), 'template')):
        with pytest.raises(InvalidRequestError) as ei: _refuse_unsupported(req)
        assert ei.value.param == param
    card = ModelCard(FakeEngine())
    for name, code in ((None, 'INVALID_REQUEST'), ('x', 'NOT_FOUND')):
        with pytest.raises(Exception) as ei: card.check(name)
        assert ei.value.code == code and ei.value.param == 'model'


def test_generate_refusals_and_bad_json(app_engine):
    tc, _ = app_engine
    for extra, name in (({'suffix': 'end'}, 'suffix'), ({'images': ['aGk=']}, 'images'), ({'template': '{{ .Prompt }}'}, 'template'),
                        ({'context': [10**9]}, 'context')):
        r = tc.post('/api/generate', json={'model': 'fake-model', 'prompt': 'x', **extra})
        assert r.status_code == 400 and list(r.json()) == ['error'], name
    r = tc.post('/api/show', content=b'{not json', headers={'content-type': 'application/json'})
    assert r.status_code == 400 and list(r.json()) == ['error']
    assert tc.post('/api/show', json={'model': 'other'}).status_code == 404


# ---- a fake-engine server: the official client, back-pressure, disconnect -------------------------------------------
@pytest.fixture(scope='module')
def fake_srv():
    s = ollama_fake_server('--delay', 0.01, '--eos-after', 12)
    try: yield s
    finally: s.stop()


@needs_client
def test_client_against_fake_server(fake_srv):
    c = ollama.Client(host=fake_srv.url, timeout=30)
    assert [m.model for m in c.list().models] == ['fake-model:latest']
    show = c.show('fake-model')
    assert show.details.format == 'gguf' and show.modelinfo['general.architecture'] == 'fake'
    r = c.chat('fake-model', messages=[{'role': 'user', 'content': 'hi'}], options={'seed': 3})
    parts = list(c.chat('fake-model', messages=[{'role': 'user', 'content': 'hi'}], options={'seed': 3}, stream=True))
    assert ''.join(p.message.content for p in parts) == r.message.content and parts[-1].done and r.eval_count == 12
    g = c.generate('fake-model', 'hi', options={'num_predict': 4})
    assert g.done_reason == 'length' and g.eval_count == 4 and g.context
    with pytest.raises(ollama.ResponseError) as ei: c.chat('nope', messages=[{'role': 'user', 'content': 'hi'}])
    assert ei.value.status_code == 404 and ei.value.error == "model 'nope' not found"


@needs_client
def test_queue_full_and_disconnect_cancel():
    body = {'model': 'fake-model', 'messages': [{'role': 'user', 'content': 'long'}]}
    long = {**body, 'options': {'num_predict': 2000}}   # 2000 tokens x 20 ms: runs until cancelled
    srv = ollama_fake_server('--delay', 0.02, '--max-queue', 1)
    try: _queue_full_and_disconnect(srv, body, long)
    finally: srv.stop()

def _queue_full_and_disconnect(srv, body, long):
    with httpx.Client(base_url=srv.url, timeout=30) as hc:
        with hc.stream('POST', '/api/chat', json=long) as running, hc.stream('POST', '/api/chat', json=long) as queued:
            assert running.status_code == 200 and queued.status_code == 200
            lines = running.iter_lines()  # kept: a dropped iterator closes the response (a disconnect)
            next(lines)                   # the first job produces tokens
            assert hc.get('/health').json()['queue_depth'] == 1
            with pytest.raises(ollama.ResponseError) as ei:
                ollama.Client(host=srv.url, timeout=10).chat('fake-model', messages=[{'role': 'user', 'content': 'x'}])
            assert ei.value.status_code == 429 and isinstance(ei.value.error, str)
            r = hc.post('/api/chat', json={**body, 'stream': False})
            assert r.status_code == 429 and int(r.headers['retry-after']) >= 1 and list(r.json()) == ['error']
        # both streams closed after (at most) one line: their jobs are cancelled, and the slot frees at once
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            m = hc.get('/metrics').text
            if 'orcd_requests_total{endpoint="ollama_chat",outcome="cancelled"} 2.0' in m and hc.get('/health').json()['status'] == 'ok': break
            time.sleep(0.1)
        else: raise AssertionError(m)


# ---- the real model behind `orcd serve` ------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def real_srv():
    real_model(MODEL)
    s = ollama_real_server(MODEL, '--device', 'cpu', '--ctx', '256', '--inference-timeout', 240)
    try: yield s
    finally: assert s.stop() == 0, s.log()[-2000:]

@pytest.fixture(scope='module')
def tok():
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    return load_tokenizer(GGUFFile(real_model(MODEL)))


@needs_client
def test_real_list_show_version(real_srv):
    c = ollama.Client(host=real_srv.url, timeout=240)
    (m,) = c.list().models
    from orcd.pull import REGISTRY
    assert m.model == f'{MODEL}:latest' and m.size == real_model(MODEL).stat().st_size and m.digest == REGISTRY[MODEL].sha256
    assert (m.details.family, m.details.quantization_level, m.details.format) == ('llama', 'Q4_1', 'gguf')
    s = c.show(MODEL)
    assert s.modelinfo['general.architecture'] == 'llama' and s.modelinfo['llama.context_length'] == 8192
    assert '<|im_start|>' in s.template and s.details.parameter_size.endswith('M')
    assert httpx.get(real_srv.url + '/api/version').json()['version']


@needs_client
def test_real_chat_stream_and_not(real_srv, tok):
    c = ollama.Client(host=real_srv.url, timeout=240)
    msgs = [{'role': 'user', 'content': 'What is the capital of France?'}]
    opts = {'temperature': 0, 'num_predict': 8, 'repeat_penalty': 1.0}
    r = c.chat(MODEL, messages=msgs, options=opts)
    assert r.done and r.message.role == 'assistant' and r.message.content and r.done_reason in ('stop', 'length')
    assert r.prompt_eval_count == len(tok.encode_chat(msgs)) and 1 <= r.eval_count <= 8
    if r.done_reason == 'length': assert r.eval_count == 8
    assert r.total_duration > 0 and r.prompt_eval_duration > 0 and r.eval_duration >= 0
    parts = list(c.chat(MODEL, messages=msgs, options=opts, stream=True))
    assert ''.join(p.message.content for p in parts) == r.message.content  # greedy: the same text, streamed
    assert [p.done for p in parts].count(True) == 1 and parts[-1].eval_count == r.eval_count
    # the same job through the OpenAI route: the same greedy text
    o = httpx.post(real_srv.url + '/v1/chat/completions', timeout=240,
                   json={'messages': msgs, 'max_tokens': 8, 'temperature': 0}).json()
    assert o['choices'][0]['message']['content'] == r.message.content
    print(f'\nollama chat: {r.message.content!r} ({r.done_reason}, {r.eval_count} tokens)')


@needs_client
def test_real_generate(real_srv, tok):
    c = ollama.Client(host=real_srv.url, timeout=240)
    q = 'What is the capital of France?'
    opts = {'temperature': 0, 'num_predict': 8, 'repeat_penalty': 1.0}
    g = c.generate(MODEL, q, options=opts)
    ch = c.chat(MODEL, messages=[{'role': 'user', 'content': q}], options=opts)
    assert g.response == ch.message.content  # generate renders the prompt through the same chat template
    assert list(g.context[:g.prompt_eval_count]) == tok.encode_chat([{'role': 'user', 'content': q}])
    assert len(g.context) == g.prompt_eval_count + g.eval_count
    raw = c.generate(MODEL, 'The capital of France is', raw=True, options={**opts, 'num_predict': 4})
    assert raw.prompt_eval_count == len(tok.encode('The capital of France is', parse_special=True)) and raw.response
