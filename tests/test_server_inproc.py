"""In-process checks of orcd.server through Starlette's TestClient and the fake engine: the same app as the
uvicorn tests, but in this process, so `--cov=orcd` sees the server's lines (the uvicorn subprocesses of
test_server.py are only measured when coverage's subprocess patch is on). Fast: no model, no sockets."""
import json, time

import pytest
from fastapi.testclient import TestClient

from fake_engine import FakeEngine
from orcd.server import create_app, classify_exception, ERROR_CODES


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
        assert evs[-1][1]['stop_reason'] == 'eos' and evs[-1][1]['tokens_out'] == 4  # 3 tokens + EOS


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

    class CudaOutOfMemoryError(RuntimeError): pass
    class Broken(FakeEngine):
        def generate(self, *a, **k):  # fails once running (as a device error would), not at the call
            def g():
                raise CudaOutOfMemoryError('out of memory allocating 2 GiB'); yield
            return g()
    with TestClient(create_app(Broken())) as c:
        evs = [(k, json.loads(d)) for k, d in parse(c.post('/execute', json={'job_id': 'o', 'prompt': 'x'}).text)]
        assert evs[-1] == ('error', {'code': 'VRAM_OOM', 'message': 'CudaOutOfMemoryError: out of memory allocating 2 GiB',
                                     'retriable': True})
        assert [k for k, _ in evs] == ['started', 'error']
    assert classify_exception(ValueError('x')) == 'INTERNAL' and ERROR_CODES['CANCELLED'][0] == 499

    class Picky(FakeEngine):  # the engine validates eagerly at the call: that is a 400 naming the field
        def generate(self, *a, **k): raise ValueError('sampling parameter top_k=3: not supported by this backend')
    with TestClient(create_app(Picky())) as c:
        r = c.post('/execute', json={'job_id': 'p', 'prompt': 'x', 'top_k': 3})
        assert r.status_code == 400 and r.json()['error']['code'] == 'INVALID_REQUEST' and 'top_k' in r.json()['error']['message']
        r = c.post('/v1/completions', json={'prompt': 'x', 'top_k': 3})
        assert r.status_code == 400 and r.json()['error']['param'] == 'top_k'


def test_openai_in_process(tc):
    r = tc.post('/v1/completions', json={'prompt': 'abc', 'max_tokens': 5, 'seed': 3, 'stop': 'qq'})
    j = r.json()
    assert j['object'] == 'text_completion' and j['usage'] == {'prompt_tokens': 3, 'completion_tokens': 5, 'total_tokens': 8}
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
    for body, param in (({'prompt': 'x', 'echo': True}, 'echo'), ({'prompt': 'x', 'best_of': 2}, 'best_of'),
                        ({'prompt': 'x', 'logprobs': 2}, 'logprobs'), ({'prompt': 'x', 'suffix': 'y'}, 'suffix'),
                        ({'prompt': ['a', 'b']}, 'prompt'), ({'prompt': [99999]}, 'prompt'),
                        ({'prompt': 'x', 'stop': ['a', 'b', 'c', 'd', 'e']}, 'stop')):
        r = tc.post('/v1/completions', json=body)
        assert r.status_code == 400 and r.json()['error']['param'] == param, (body, r.json())
    for body, param in (({'tool_choice': 'auto'}, 'tool_choice'), ({'response_format': {'type': 'json_object'}}, 'response_format'),
                        ({'top_logprobs': 2}, 'top_logprobs'), ({'functions': [{'name': 'f'}]}, 'functions')):
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
