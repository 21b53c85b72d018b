#!/usr/bin/env python3
"""Figures for issue 11 on the CPU backend (Qwen2.5-Coder-0.5B-Instruct by default):

* the time to first token of a second chat turn with the prompt cache and without it (the cache forgotten
  before the turn), median of `--reps` runs;
* decode tokens/s with and without a JSON schema (greedy, the same chat prompt), and the grammar engine's mask
  time per token (llguidance, measured inside the constraint).

    python scripts/bench_features.py [--model qwen2.5-coder-0.5b-instruct] [--reps 3] [--json]
"""
import argparse, json, statistics, sys, time

from orcd.engine import Engine, SamplingParams

LONG = ('Here is the design of a small key-value store. Writes go to an append-only log and to an in-memory '
        'table; when the table reaches 4 MB it is written out as a sorted file. Reads look in the table first, '
        'then in the sorted files from newest to oldest, using a bloom filter per file to skip files that cannot '
        'hold the key. A background task merges sorted files so that at most ten exist at a time. Deletes write '
        'a tombstone that the merge removes once no older file can hold the key. ') * 3

SCHEMA = {'type': 'object', 'additionalProperties': False, 'required': ['components', 'risks', 'summary'],
          'properties': {'components': {'type': 'array', 'items': {'type': 'string'}},
                         'risks': {'type': 'array', 'items': {'type': 'object', 'additionalProperties': False,
                                   'required': ['risk', 'severity'], 'properties': {
                                       'risk': {'type': 'string'}, 'severity': {'enum': ['low', 'medium', 'high']}}}},
                         'summary': {'type': 'string'}}}


def first_token_time(eng, msgs, max_tokens=8, forget=False):
    if forget: eng.forget_prompt_cache()
    t = time.perf_counter()
    gen = eng.generate(msgs, SamplingParams(temperature=0, max_tokens=max_tokens), chat=True)
    first = next(gen)
    ttft = time.perf_counter() - t
    rest = list(gen)
    return ttft, first.cached_tokens, first.prompt_tokens, ''.join(e.text for e in [first, *rest])


def decode_rate(eng, msgs, params):
    "Tokens per second after the first token, and the constraint (if any) the request used."
    made = {}
    orig = eng.new_constraint
    def capture(p):
        made['c'] = orig(p); return made['c']
    eng.new_constraint = capture
    try:
        eng.forget_prompt_cache()
        times, n, text = [], 0, []
        for ev in eng.generate(msgs, params, chat=True):
            times.append(time.perf_counter()); n += ev.counted; text.append(ev.text)
    finally: eng.new_constraint = orig
    return (len(times) - 1) / (times[-1] - times[0]), made.get('c'), ''.join(text), n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--tokens', type=int, default=48, help='tokens generated for the decode rates')
    ap.add_argument('--json', action='store_true')
    a = ap.parse_args(argv)
    eng = Engine(a.model, device='cpu', n_ctx=2048)
    turn1 = [{'role': 'system', 'content': 'You are a careful reviewer.'}, {'role': 'user', 'content': LONG + '\nName its parts.'}]
    _, _, _, answer = first_token_time(eng, turn1, max_tokens=24)
    turn2 = turn1 + [{'role': 'assistant', 'content': answer}, {'role': 'user', 'content': 'What is its weakest point?'}]
    warm, cold = [], []
    for _ in range(a.reps):
        first_token_time(eng, turn1, max_tokens=24)               # turn 1 again: its KV is what the cache holds
        t, cached, n_prompt, _ = first_token_time(eng, turn2); warm.append(t)
        t, c0, _, _ = first_token_time(eng, turn2, forget=True); cold.append(t)
        assert c0 == 0 and cached > 0
    out = {'model': a.model, 'second_turn_prompt_tokens': n_prompt, 'second_turn_cached_tokens': cached,
           'ttft_second_turn_cached_s': round(statistics.median(warm), 3),
           'ttft_second_turn_uncached_s': round(statistics.median(cold), 3)}
    msgs = [{'role': 'user', 'content': LONG + '\nList its components, its risks and a one-sentence summary, as JSON.'}]
    free, _, _, _ = decode_rate(eng, msgs, SamplingParams(temperature=0, max_tokens=a.tokens))
    cons, c, text, n = decode_rate(eng, msgs, SamplingParams(temperature=0, max_tokens=a.tokens, json_schema=SCHEMA))
    out.update(decode_tok_s_free=round(free, 2), decode_tok_s_schema=round(cons, 2), schema_over_free=round(cons / free, 3),
               mask_us_per_token=round(c.mask_seconds / c.masks * 1e6, 1), masks=c.masks, schema_tokens=n)
    if a.json: print(json.dumps(out))
    else:
        for k, v in out.items(): print(f'{k:32} {v}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
