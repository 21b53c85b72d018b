"""In-process checks of orcd.server through Starlette's TestClient and the fake engine: the same app as the
uvicorn tests, but in this process, so `--cov=orcd` sees the server's lines (the uvicorn subprocesses of
test_server.py are only measured when coverage's subprocess patch is on). Fast: no model, no sockets.

It also holds the tests of the server's contracts: errors are classified by their `code` only (a reworded
message changes no status), a body that is not JSON names no field, an unknown route answers in the project's
error shape, `tokens_out` equals the token events, `VRAM_OOM` fails one job and the next one runs, a CUDA fault
turns /health unhealthy and makes the server exit with status 3."""
import asyncio, json, time

import pytest
from fastapi.testclient import TestClient

from fake_engine import FakeEngine
from orcd import errors
from orcd.errors import ERROR_CODES, error_code
from orcd.server import create_app


def parse(text):
    evs = []
    for block in text.replace('\r\n', '\n').strip().split('\n\n'):
        f = {}
        for line in block.split('\n'):
            k, _, v = line.partition(': ')
            if k in ('event', 'data'): f[k] = v
        if 'data' in f: evs.append((f.get('event'), f['data']))
    return evs

@pytest.fixture
def tc():
    with TestClient(create_app(FakeEngine(delay=0))) as c: yield c


def test_execute_stream(tc):
    r = tc.post('/execute', json={'job_id': 'a', 'prompt': 'hello', 'max_tokens': 40, 'seed': 5, 'stop': ['zzz']})
    evs = [(k, json.loads(d)) for k, d in parse(r.text)]
    assert evs[0][0] == 'started' and evs[-1] == ('end', {**evs[-1][1], 'stop_reason': 'max_tokens', 'tokens_out': 40})
    assert 'x-correlation-id' in r.headers


def test_stop_sequence_and_eos(tc):
    r = tc.post('/execute', json={'job_id': 'b', 'prompt': 'hello', 'max_tokens': 200, 'seed': 5})
    text = ''.join(json.loads(d)['t'] for k, d in parse(r.text) if k == 'token')
    stop = text[20:24]
    r = tc.post('/execute', json={'job_id': 'c', 'prompt': 'hello', 'max_tokens': 200, 'seed': 5, 'stop': [stop]})
    evs = [(k, json.loads(d)) for k, d in parse(r.text)]
    assert ''.join(d['t'] for k, d in evs if k == 'token') == text[:text.find(stop)]
    assert evs[-1][1]['stop_reason'] == 'stop_sequence'
    with TestClient(create_app(FakeEngine(eos_after=3))) as c2:
        evs = [(k, json.loads(d)) for k, d in parse(c2.post('/execute', json={'job_id': 'e', 'prompt': 'x'}).text)]
        assert evs[-1][1]['stop_reason'] == 'eos' and evs[-1][1]['tokens_out'] == 3  # 3 tokens; the EOS is not counted
        assert sum(k == 'token' for k, _ in evs) == 3


def test_errors_and_cancel_unknown(tc):
    r = tc.post('/execute', json={'job_id': 'a', 'prompt': 'x', 'top_k': 'many'})
    assert r.status_code == 400 and r.json()['error']['details'][0]['field'] == 'top_k'
    assert tc.post('/cancel', json={'job_id': 'nope'}).status_code == 404
    r = tc.post('/cancel', json={})
    assert r.status_code == 400 and 'job_id' in r.json()['error']['message']
    r = tc.post('/execute', json={'job_id': 'a', 'prompt': 'x', 'top_p': 0})  # top_p 0 = the top token only
    assert parse(r.text)[-1][0] == 'end'


def test_inference_timeout_and_engine_failure():
    with TestClient(create_app(FakeEngine(delay=0.01), inference_timeout=0.1)) as c:
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 't', 'prompt': 'x'}).text)]
        assert evs[-1][0] == 'error' and evs[-1][1]['code'] == 'INFERENCE_TIMEOUT'
        r = c.post('/v1/completions', json={'prompt': 'x', 'max_tokens': 2000})
        assert r.status_code == 504 and r.json()['error']['code'] == 'inference_timeout'

    class Broken(FakeEngine):
        def generate(self, *a, **k):  # fails once running (as a device error would), not at the call
            def g():
                raise errors.VRAMOOMError('out of memory allocating 2 GiB'); yield
            return g()
    with TestClient(create_app(Broken())) as c:
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 'o', 'prompt': 'x'}).text)]
        assert evs[-1] == ('error', {'code': 'VRAM_OOM', 'message': 'out of memory allocating 2 GiB', 'retriable': True})
        assert [k for k, _ in evs] == ['started', 'error']
    assert error_code(ValueError('x')) == 'INTERNAL' and ERROR_CODES['CANCELLED'][0] == 499


# ---------------------------------------------------------------- the contracts
@pytest.mark.parametrize('message', ['sampling parameter top_k=3: not supported by this backend',
                                     'a reworded message that names no field at all', ''])
def test_a_renamed_message_changes_no_status(message):
    "The engine validates eagerly and raises a typed error: the status and `param` come from it, never from its text."
    class Picky(FakeEngine):
        def generate(self, *a, **k): raise errors.InvalidRequestError(message, param='top_k')
    with TestClient(create_app(Picky())) as c:
        r = c.post('/execute', json={'job_id': 'p', 'prompt': 'x', 'top_k': 3})
        assert r.status_code == 400 and r.json()['error']['code'] == 'INVALID_REQUEST' and r.json()['error']['message'] == message
        r = c.post('/v1/completions', json={'prompt': 'x', 'top_k': 3})
        assert r.status_code == 400 and r.json()['error']['param'] == 'top_k'

    class Odd(FakeEngine):   # an untyped error is a bug (500 INTERNAL), whatever its message says
        def generate(self, *a, **k): raise ValueError('sampling parameter top_k=3: out of memory, CUDA error')
    with TestClient(create_app(Odd()), raise_server_exceptions=False) as c:
        r = c.post('/execute', json={'job_id': 'p', 'prompt': 'x'})
        assert r.status_code == 500 and r.json()['error']['code'] == 'INTERNAL'


@pytest.mark.parametrize('body', [b'{"job_id": ', b'{"job_id": "a", "prompt": "x",}', b'not json', b'{"prompt": "\\x"}'])
def test_invalid_json_names_no_field(tc, body):
    r = tc.post('/execute', content=body, headers={'content-type': 'application/json', 'X-Correlation-Id': 'bad-json'})
    e = r.json()['error']
    assert r.status_code == 400 and e['code'] == 'INVALID_REQUEST' and e['correlation_id'] == 'bad-json'
    assert e['message'].startswith('the request body is not valid JSON') and "invalid field" not in e['message']
    assert [d['field'] for d in e['details']] == [None] and isinstance(e['details'][0]['position'], int)
    r = tc.post('/v1/completions', content=body, headers={'content-type': 'application/json'})
    assert r.status_code == 400 and r.json()['error']['param'] is None and r.json()['error']['type'] == 'invalid_request_error'


def test_unknown_route_and_method_give_the_project_error_shape(tc):
    for method, path, status, code in (('GET', '/nope', 404, 'NOT_FOUND'), ('POST', '/v2/execute', 404, 'NOT_FOUND'),
                                       ('GET', '/execute', 405, 'METHOD_NOT_ALLOWED')):
        r = tc.request(method, path, headers={'X-Correlation-Id': 'route-1'})
        e = r.json()['error']
        assert r.status_code == status and set(e) == {'code', 'message', 'details', 'correlation_id'}, r.json()
        assert e['code'] == code and e['correlation_id'] == 'route-1' and path in e['message']
    r = tc.get('/v1/nope')
    assert r.status_code == 404 and r.json()['error']['type'] == 'not_found_error' and r.json()['error']['code'] == 'not_found'


@pytest.mark.parametrize('body', [{'prompt': 'héllo wörld ☕ 🙂', 'max_tokens': 40},   # multi-byte characters
                                  {'prompt': 'x', 'max_tokens': 30, 'stop': ['o']},
                                  {'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 25}])
def test_tokens_out_equals_the_token_events(tc, body):
    evs = [(k, json.loads(d)) for k, d in parse(tc.post('/execute', json={'job_id': 'n', **body}).text)]
    toks = [d for k, d in evs if k == 'token']
    assert evs[-1][0] == 'end' and evs[-1][1]['tokens_out'] == len(toks) > 0
    assert [d['i'] for d in toks] == list(range(len(toks)))
    with TestClient(create_app(FakeEngine(eos_after=4))) as c:     # the EOS ends the stream and is not counted
        eos_body = {k: v for k, v in body.items() if k != 'stop'}   # (a stop string could come first: the seed is random)
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 'e', **eos_body}).text)]
        assert evs[-1][1]['stop_reason'] == 'eos' and evs[-1][1]['tokens_out'] == sum(k == 'token' for k, _ in evs) == 4
        r = c.post('/v1/completions', json={'prompt': 'x', 'max_tokens': 40}).json()
        assert r['usage']['completion_tokens'] == 4


def test_execute_takes_messages_like_the_chat_route(tc):
    msgs = [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}]
    evs = [(k, json.loads(d)) for k, d in parse(tc.post('/execute', json={'job_id': 'm', 'messages': msgs, 'max_tokens': 8, 'seed': 1}).text)]
    chat = tc.post('/v1/chat/completions', json={'messages': msgs, 'max_tokens': 8, 'seed': 1}).json()
    assert ''.join(d['t'] for k, d in evs if k == 'token') == chat['choices'][0]['message']['content']
    for body in ({'job_id': 'b'}, {'job_id': 'b', 'prompt': 'x', 'messages': msgs}):
        r = tc.post('/execute', json=body)
        assert r.status_code == 400 and r.json()['error']['details'][0]['field'] == 'prompt'
    r = tc.post('/execute', json={'job_id': 'b', 'messages': [{'role': 'user', 'content': [{'type': 'image_url'}]}]})
    assert r.status_code == 400 and 'messages[0].content[0]' in r.json()['error']['message']


def test_vram_oom_fails_one_job_and_the_next_runs():
    eng = FakeEngine(fail={1: ('VRAMOOMError', 2)}, vram=(3 << 30, 80 << 30))
    with TestClient(create_app(eng)) as c:
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 'a', 'prompt': 'x', 'max_tokens': 9}).text)]
        assert evs[-1] == ('error', {'code': 'VRAM_OOM', 'message': 'fake VRAMOOMError at token 2', 'retriable': True})
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 'b', 'prompt': 'x', 'max_tokens': 9}).text)]
        assert evs[-1][0] == 'end' and evs[-1][1]['tokens_out'] == 9
        h = c.get('/health')
        assert h.status_code == 200 and h.json()['healthy'] and h.json()['vram_bytes_total'] == 80 << 30
        m = c.get('/metrics').text
        from prometheus_client.parser import text_string_to_metric_families
        got = {f.name: f.samples[0].value for f in text_string_to_metric_families(m) if f.samples}
        assert got['orcd_vram_bytes_total'] == 80 << 30 and got['orcd_vram_bytes_used'] == 3 << 30 and got['orcd_healthy'] == 1
        assert 'orcd_requests_total{endpoint="execute",outcome="error"} 1.0' in m


def test_cuda_fault_fails_the_job_marks_unhealthy_and_exits_3():
    eng = FakeEngine(delay=0.01, fail={1: ('CUDAFaultError', 2)})
    app = create_app(eng)
    rt, exits = app.state.orcd, []
    rt.exit_hook = lambda: exits.append(rt.exit_status)
    with TestClient(app) as c:
        assert c.get('/health').json()['vram_bytes_used'] is None       # the CPU reports no device memory
        assert 'orcd_vram_bytes' not in c.get('/metrics').text
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 'a', 'prompt': 'x', 'max_tokens': 9}).text)]
        assert evs[-1] == ('error', {'code': 'CUDA_ERROR', 'message': 'fake CUDAFaultError at token 2', 'retriable': False})
        t0 = time.monotonic()
        while not exits and time.monotonic() - t0 < 5: time.sleep(0.01)
        assert exits == [3]
        h = c.get('/health')
        assert h.status_code == 503 and h.json()['status'] == 'unhealthy' and not h.json()['healthy']
        assert 'CUDA_ERROR' in h.json()['reason'] and 'orcd_healthy 0.0' in c.get('/metrics').text
        r = c.post('/execute', json={'job_id': 'b', 'prompt': 'x'})
        assert r.status_code == 503 and r.json()['error']['code'] == 'SHUTTING_DOWN' and eng.jobs == 1


def test_backend_reporting_unhealthy_makes_health_503():
    eng = FakeEngine()
    with TestClient(create_app(eng)) as c:
        eng.backend.healthy, eng.backend.reason = False, 'the device fell off the bus'
        c.post('/execute', json={'job_id': 'a', 'prompt': 'x', 'max_tokens': 2})    # status() is read after each job
        h = c.get('/health')
        assert h.status_code == 503 and h.json()['status'] == 'unhealthy' and h.json()['reason'] == 'the device fell off the bus'


def test_openai_in_process(tc):
    r = tc.post('/v1/completions', json={'prompt': 'abc', 'max_tokens': 5, 'seed': 3, 'stop': 'qq'})
    j = r.json()
    assert j['object'] == 'text_completion' and j['usage'] == {'prompt_tokens': 3, 'completion_tokens': 5, 'total_tokens': 8,
                                                               'prompt_tokens_details': {'cached_tokens': 0}}
    r2 = tc.post('/v1/completions', json={'prompt': [[97, 98, 99]], 'max_tokens': 5, 'seed': 3, 'stop': 'qq'})
    assert r2.json()['choices'][0]['text'] == j['choices'][0]['text']  # token-id prompt == the same text
    s = tc.post('/v1/completions', json={'prompt': 'abc', 'max_tokens': 5, 'seed': 3, 'stream': True})
    datas = [d for _, d in parse(s.text)]
    assert datas[-1] == '[DONE]'
    assert ''.join(json.loads(d)['choices'][0]['text'] for d in datas[:-1]) == j['choices'][0]['text']
    msgs = [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': [{'type': 'text', 'text': 'hi'}]}]
    s = tc.post('/v1/chat/completions', json={'messages': msgs, 'max_tokens': 4, 'stream': True,
                                              'stream_options': {'include_usage': True}})
    chunks = [json.loads(d) for _, d in parse(s.text)[:-1]]
    assert chunks[0]['choices'][0]['delta']['role'] == 'assistant' and chunks[-1]['usage']['completion_tokens'] == 4
    assert chunks[-2]['choices'][0]['finish_reason'] == 'length'
    for body, param in (({'prompt': 'x', 'logprobs': 21}, 'logprobs'), ({'prompt': 'x', 'best_of': 2}, 'best_of'),
                        ({'prompt': 'x', 'logprobs': -1}, 'logprobs'), ({'prompt': 'x', 'suffix': 'y'}, 'suffix'),
                        ({'prompt': ['a', 'b']}, 'prompt'), ({'prompt': [99999]}, 'prompt'),
                        ({'prompt': 'x', 'stop': ['a', 'b', 'c', 'd', 'e']}, 'stop')):
        r = tc.post('/v1/completions', json=body)
        assert r.status_code == 400 and r.json()['error']['param'] == param, (body, r.json())
    tool = {'type': 'function', 'function': {'name': 'f'}}
    for body, param in (({'tool_choice': {'type': 'function', 'function': {'name': 'g'}}, 'tools': [tool]}, 'tool_choice'),
                        ({'tool_choice': 'sometimes', 'tools': [tool]}, 'tool_choice'), ({'tools': [{'type': 'web'}]}, 'tools[0]'),
                        ({'tools': [tool]}, 'tools'),          # the fake's template has no tool syntax: refused, not ignored
                        ({'response_format': {'type': 'xml'}}, 'response_format'),
                        ({'response_format': {'type': 'json_schema'}}, 'response_format'),
                        ({'logprobs': True, 'top_logprobs': 21}, 'top_logprobs'), ({'functions': [{'name': 'f'}]}, 'functions')):
        r = tc.post('/v1/chat/completions', json={'messages': [{'role': 'user', 'content': 'x'}], **body})
        assert r.status_code == 400 and r.json()['error']['param'] == param, (body, r.json())


def test_health_metrics_auth_shutdown():
    app = create_app(FakeEngine(delay=0), api_key='k')
    with TestClient(app) as c:
        assert c.get('/health').json()['status'] == 'ok'
        assert c.get('/metrics').status_code == 401
        h = {'Authorization': 'Bearer k'}
        assert 'orcd_uptime_seconds' in c.get('/metrics', headers=h).text
        assert c.post('/shutdown', headers=h).status_code == 202
        t0 = time.monotonic()
        while c.get('/health').status_code != 503 and time.monotonic() - t0 < 2: time.sleep(0.01)
        assert c.get('/health').json()['status'] == 'draining'
        r = c.post('/execute', json={'job_id': 'z', 'prompt': 'x'}, headers=h)
        assert r.status_code == 503 and r.json()['error']['code'] == 'SHUTTING_DOWN' and r.headers['retry-after']
