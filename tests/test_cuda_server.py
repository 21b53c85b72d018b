"""`orcd serve --device cuda` through the real CLI path: /health reports the GPU and its VRAM, /execute streams,
the official openai client gets chat completions (streamed and not), greedy answers repeat. GPU-only.

The model: a file of the Qwen2.5-0.5B layout from $ORCD_SHAPED_DIR (made on the GPU machine by
scripts/make_shaped_model.py; its values are synthetic, so the text is not meaningful), else the registry model."""
import os
from pathlib import Path
import httpx, pytest
from orcd.cuda import cuda_device
from fake_engine import real_server, sse_events

cp, why = cuda_device()
pytestmark = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')

def _model():
    d = os.environ.get('ORCD_SHAPED_DIR')
    p = Path(d) / 'qwen2.5-coder-0.5b-instruct.gguf' if d else None
    return p if p and p.exists() else 'qwen2.5-coder-0.5b-instruct'

@pytest.fixture(scope='module')
def rs():
    with real_server(_model(), '--device', 'cuda', '--ctx', '1024', ready_timeout=240) as s:
        yield s
    assert s.proc.returncode == 0, s.log()[-2000:]

def test_health_execute_and_openai_on_cuda(rs):
    import openai
    with httpx.Client(base_url=rs.url, timeout=120) as hc:
        h = hc.get('/health').json()
        assert h['device'].startswith('cuda') and h['resident'] is True and h['status'] == 'ok', h
        assert 0 < h['vram_bytes_used'] <= h['vram_bytes_total']
        assert 'orcd_vram_bytes_used' in hc.get('/metrics').text
        runs = []
        for _ in range(2):
            code, evs, _ = sse_events(hc, '/execute', {'job_id': f'g{len(runs)}', 'prompt': 'def fibonacci(n):',
                                                      'max_tokens': 24, 'temperature': 0})
            assert code == 200 and evs[0][0] == 'started' and evs[-1][0] == 'end', evs[-3:]
            runs.append((''.join(d['t'] for e, d in evs if e == 'token'), evs[-1][1]['tokens_out']))
        assert runs[0][1] >= 1 and runs[0] == runs[1]
    oai = openai.OpenAI(base_url=rs.url + '/v1', api_key='none', max_retries=0, timeout=120)
    r = oai.chat.completions.create(model=oai.models.list().data[0].id, max_tokens=16, temperature=0,
                                    messages=[{'role': 'user', 'content': 'Write a haiku about GPUs'}])
    assert r.usage.completion_tokens >= 1 and r.choices[0].finish_reason in ('stop', 'length')
    chunks = list(oai.chat.completions.create(model=r.model, max_tokens=16, temperature=0, stream=True,
                                              messages=[{'role': 'user', 'content': 'Write a haiku about GPUs'}]))
    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    assert text == r.choices[0].message.content
