"""The grammar engine (orcd.grammar, llguidance) on Qwen2.5's real vocabulary, without the model's weights: a
backend of random logits, constrained by a schema, must still produce JSON that parses and validates (the mask
is applied before every draw, greedy or not); unsupported schema features are refused by name; the tool-call
grammars admit exactly the forms they should."""
import json, math

import numpy as np
import pytest

from conftest import real_model
from orcd.engine import Engine, SamplingParams, logprobs_of
from orcd.errors import InvalidRequestError

llg = pytest.importorskip('llguidance')


@pytest.fixture(scope='module')
def tok():
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    return load_tokenizer(GGUFFile(real_model('qwen2.5-coder-0.5b-instruct')))


class RandomBackend:
    "Random logits (seeded by position) over the whole vocabulary; prefers `bias` ids when given."
    def __init__(self, n_vocab, n_ctx=512, bias=()):
        self.n_vocab, self.n_ctx, self.bias, self.steps = n_vocab, n_ctx, list(bias), 0
    def _logits(self, pos):
        x = np.random.default_rng(pos).normal(size=self.n_vocab).astype(np.float32) * 3
        if self.bias: x[self.bias] += 8
        self.last = x; self.steps += 1; return x
    def prefill(self, ids, start=0): return self._logits(len(ids))
    def decode(self, tok, pos): return self._logits(pos + 1)
    def decode_sample(self, tok, pos, sampler): raise AssertionError('a constrained request samples on the host')
    def top_logprobs(self, token, n): return logprobs_of(self.last, token, n)
    def prompt_logprobs(self, ids, n): raise NotImplementedError
    def reset(self): pass
    def status(self): return dict(healthy=True, reason=None, vram_bytes_used=None, vram_bytes_total=None)
    memory_bytes = 0


SCHEMA = {'type': 'object', 'additionalProperties': False, 'required': ['kind', 'ok', 'n', 'tags'],
          'properties': {'kind': {'enum': ['cat', 'dog', 'bird']}, 'ok': {'type': 'boolean'},
                         'n': {'type': 'integer', 'minimum': 0, 'maximum': 99},
                         'tags': {'type': 'array', 'items': {'enum': ['a', 'b']}, 'maxItems': 3}}}


def check(doc):
    assert set(doc) == {'kind', 'ok', 'n', 'tags'} and doc['kind'] in ('cat', 'dog', 'bird')
    assert isinstance(doc['ok'], bool) and isinstance(doc['n'], int) and 0 <= doc['n'] <= 99
    assert isinstance(doc['tags'], list) and len(doc['tags']) <= 3 and set(doc['tags']) <= {'a', 'b'}


@pytest.mark.parametrize('temperature,seed', [(0, 0), (1.0, 1), (1.0, 2), (0.7, 3)])
def test_random_model_under_a_schema_makes_valid_json(tok, temperature, seed):
    eng = Engine.from_parts(RandomBackend(tok.vocab_size), tok)
    evs = list(eng.generate('x', SamplingParams(temperature=temperature, seed=seed, max_tokens=200, json_schema=SCHEMA)))
    assert evs[-1].finish_reason == 'eos', evs[-1]
    check(json.loads(''.join(e.text for e in evs)))


def test_logprobs_under_a_grammar_are_the_unmasked_ones(tok):
    be = RandomBackend(tok.vocab_size)
    eng = Engine.from_parts(be, tok)
    evs = list(eng.generate('x', SamplingParams(temperature=0, max_tokens=60, json_schema=SCHEMA, logprobs=1)))
    # step k's logits are those of position len(prompt) + k: recompute them independently
    n0 = len(tok.encode('x'))
    for k, e in enumerate(evs):
        x = np.random.default_rng(n0 + k).normal(size=tok.vocab_size).astype(np.float32).astype(np.float64) * 3
        lse = np.log(np.exp(x - x.max()).sum()) + x.max()
        assert math.isclose(e.logprob, x[e.id] - lse, abs_tol=1e-4)
        assert e.top_logprobs[0][0] == int(np.argmax(x))   # the model's favourite, which the mask may have refused


def test_gbnf_and_lark_grammars(tok):
    eng = Engine.from_parts(RandomBackend(tok.vocab_size), tok)
    for g in ['root ::= ("yes" | "no") " sir"', 'start: ("yes" | "no") " sir"']:
        for seed in range(3):
            text = ''.join(e.text for e in eng.generate('x', SamplingParams(seed=seed, max_tokens=20, grammar=g)))
            assert text in ('yes sir', 'no sir')


@pytest.mark.parametrize('schema', [{'type': 'string', 'format': 'credit-card'}, {'$ref': '#/$defs/nope'},
                                    {'type': 'string', 'pattern': '(?<=a)b'}])
def test_unsupported_schema_is_refused_by_name(tok, schema):
    eng = Engine.from_parts(RandomBackend(tok.vocab_size), tok)
    with pytest.raises(InvalidRequestError) as e:
        eng.generate('x', SamplingParams(json_schema=schema))
    assert e.value.param == 'json_schema'


def test_params_validation():
    for kw, param in [({'logprobs': 21}, 'logprobs'), ({'logprobs': -1}, 'logprobs'), ({'prompt_logprobs': 'x'}, 'prompt_logprobs'),
                      ({'json_schema': 'x'}, 'json_schema'), ({'grammar': ''}, 'grammar'),
                      ({'json_schema': {}, 'grammar': 'start: "a"'}, 'grammar')]:
        with pytest.raises(InvalidRequestError) as e: SamplingParams(**kw).validate()
        assert e.value.param == param


def test_mask_time_is_measured(tok):
    from orcd.grammar import Constraint, compile_grammar
    c = Constraint(tok, compile_grammar(tok, SCHEMA))
    for t in tok.encode(json.dumps({'kind': 'dog', 'ok': True, 'n': 7, 'tags': ['a', 'b']}), add_special=False):
        assert c.allowed()[t]; c.accept(t)
    assert c.is_accepting() and c.masks > 10 and c.mask_seconds > 0
