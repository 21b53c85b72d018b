"""Tool calls without a model's weights (orcd.toolcalls): `tools`/`tool_choice` validation, the history as chat
templates expect it, the Hermes/Qwen parser against every way of cutting the stream, bare and fenced calls, gpt-oss
harmony text, and the forcing grammar: a backend of random logits under `tool_choice: required` or a named
function (Qwen2.5's real vocabulary) still writes well-formed calls whose arguments follow the schema."""
import json, random

import numpy as np
import pytest

from conftest import real_model
from orcd.engine import Engine, SamplingParams
from orcd.errors import InvalidRequestError
from orcd.toolcalls import (ToolCallParser, check_tools, parse_harmony, template_messages, tool_call_grammar, tool_syntax)

WEATHER = {'type': 'function', 'function': {'name': 'get_weather', 'parameters': {
    'type': 'object', 'properties': {'city': {'enum': ['Paris', 'Oslo']}, 'unit': {'enum': ['celsius', 'fahrenheit']}},
    'required': ['city', 'unit'], 'additionalProperties': False}}}
TIME = {'type': 'function', 'function': {'name': 'get_time', 'parameters': {
    'type': 'object', 'properties': {'city': {'enum': ['Paris', 'Oslo']}}, 'required': ['city'], 'additionalProperties': False}}}


def test_check_tools():
    fns, choice = check_tools([WEATHER, TIME], None)
    assert list(fns) == ['get_weather', 'get_time'] and choice == 'auto'
    assert check_tools(None, None) == ({}, 'none')
    assert check_tools([WEATHER], {'type': 'function', 'function': {'name': 'get_weather'}})[1] == 'get_weather'
    for tools, choice, param in [([WEATHER], {'type': 'function', 'function': {'name': 'nope'}}, 'tool_choice'),
                                 ([WEATHER], 'always', 'tool_choice'), (None, 'required', 'tool_choice'),
                                 ([{'type': 'retrieval'}], None, 'tools[0]'), ([{'type': 'function', 'function': {}}], None, 'tools[0]')]:
        with pytest.raises(InvalidRequestError) as e: check_tools(tools, choice)
        assert e.value.param == param


def test_template_messages_parse_arguments():
    call = {'id': 'c1', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': '{"city": "Paris"}'}}
    out = template_messages([{'role': 'assistant', 'content': None, 'tool_calls': [call]}, {'role': 'tool', 'content': '18'}])
    assert out[0]['tool_calls'][0]['function']['arguments'] == {'city': 'Paris'} and out[0]['content'] == ''
    assert call['function']['arguments'] == '{"city": "Paris"}'   # the request's own message is not changed


TEXT = ('I will check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>')


@pytest.mark.parametrize('seed', range(20))
def test_parser_is_independent_of_how_the_stream_is_cut(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(0, 30)))
    p, content, calls = ToolCallParser(['get_weather', 'get_time']), '', []
    for a, b in zip([0] + cuts, cuts + [len(TEXT)]):
        c, n = p.push(TEXT[a:b]); content += c; calls += n
    c, n = p.finish(); content += c; calls += n
    assert content == 'I will check. ' and [c['function']['name'] for c in calls] == ['get_weather', 'get_time']
    assert json.loads(calls[0]['function']['arguments']) == {'city': 'Paris', 'unit': 'celsius'}
    assert len({c['id'] for c in calls}) == 2


@pytest.mark.parametrize('text,names', [
    ('{"name": "get_time", "arguments": {"city": "Oslo"}}', ['get_time']),
    ('```json\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n```', ['get_time']),
    ('[{"name": "get_time", "arguments": {"city": "Oslo"}}]', ['get_time'])])
def test_bare_and_fenced_calls(text, names):
    p = ToolCallParser(names)
    assert p.push(text) == ('', [])
    content, calls = p.finish()
    assert content == '' and calls[0]['function']['name'] == 'get_time'


@pytest.mark.parametrize('text', ['{"answer": 42}', '{"name": "rm -rf", "arguments": {}}', '```python\nprint(1)\n```', '{not json'])
def test_json_that_is_not_a_call_stays_content(text):
    p = ToolCallParser(['get_time'])
    out, calls = p.push(text)
    more, calls2 = p.finish()
    assert out + more == text and calls == calls2 == []


def test_harmony():
    text = ('<|channel|>analysis<|message|>The user wants the time.<|end|><|start|>assistant<|channel|>commentary '
            'to=functions.get_time <|constrain|>json<|message|>{"city":"Oslo"}<|call|>')
    content, reasoning, calls = parse_harmony(text)
    assert reasoning == 'The user wants the time.' and content == ''
    assert calls[0]['function'] == {'name': 'get_time', 'arguments': '{"city":"Oslo"}'}


@pytest.fixture(scope='module')
def qwen_tok():
    pytest.importorskip('llguidance')
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    return load_tokenizer(GGUFFile(real_model('qwen2.5-coder-0.5b-instruct')))


def test_syntax_from_the_template(qwen_tok):
    assert tool_syntax(qwen_tok) == 'hermes'
    text = qwen_tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], tools=[WEATHER])
    assert '"name": "get_weather"' in text and '<tools>' in text
    with pytest.raises(InvalidRequestError): tool_call_grammar({'f': {}}, 'required', 'harmony')


class RandomBackend:
    def __init__(self, n): self.n, self.n_ctx = n, 4096
    def _l(self, pos): self.last = np.random.default_rng(pos).normal(size=self.n).astype(np.float32) * 3; return self.last
    def prefill(self, ids, start=0): return self._l(len(ids))
    def decode(self, tok, pos): return self._l(pos + 1)
    def decode_sample(self, tok, pos, sampler): raise AssertionError('constrained requests sample on the host')
    def reset(self): pass
    def status(self): return dict(healthy=True, reason=None, vram_bytes_used=None, vram_bytes_total=None)
    memory_bytes = 0


@pytest.mark.parametrize('choice', ['required', 'get_time'])
def test_forced_calls_are_well_formed_even_from_random_logits(qwen_tok, choice):
    fns, _ = check_tools([WEATHER, TIME], choice if choice == 'required' else {'type': 'function', 'function': {'name': choice}})
    eng = Engine.from_parts(RandomBackend(qwen_tok.vocab_size), qwen_tok)
    g = tool_call_grammar(fns, choice)
    for seed in range(3):
        evs = list(eng.generate('x', SamplingParams(temperature=1.0, seed=seed, max_tokens=150, grammar=g)))
        p = ToolCallParser(list(fns))
        content, calls = p.push(''.join(e.text for e in evs))
        more, calls2 = p.finish()
        calls += calls2
        assert evs[-1].finish_reason == 'eos' and (content + more).strip() == '' and calls, ''.join(e.text for e in evs)
        for c in calls:
            args = json.loads(c['function']['arguments'])
            assert c['function']['name'] in fns and (choice == 'required' or c['function']['name'] == choice)
            assert args['city'] in ('Paris', 'Oslo')
            if c['function']['name'] == 'get_weather': assert args['unit'] in ('celsius', 'fahrenheit')
