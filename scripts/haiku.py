"""The haiku test from the command line: Qwen2.5-Coder-0.5B-Instruct with its chat template is asked for a
haiku about GPU computing that includes a word it cannot have memorised for this prompt (by default the
current UTC minute spelled out), at temperature 0.7 with three seeds; prints each answer and whether the word
is in it. Sampling otherwise uses llama.cpp's defaults (top-k 40, top-p 0.95, min-p 0.05), the settings of
the llama.cpp reference samples (scripts/make_llamacpp_fixtures.py --haiku).

    python scripts/haiku.py [--model NAME|PATH] [--word thirty-one] [--seeds 1 2 3] [--device cpu]
"""
import argparse, datetime, re, sys, time

ONES = ('zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen '
        'seventeen eighteen nineteen').split()
TENS = {2: 'twenty', 3: 'thirty', 4: 'forty', 5: 'fifty'}


def spell(n: int) -> str:
    "0..59 in words: 31 → 'thirty-one'."
    if n < 20: return ONES[n]
    t, u = divmod(n, 10)
    return TENS[t] + ('' if u == 0 else '-' + ONES[u])


def contains_word(text, word):
    "Case-insensitive; a hyphenated number also counts written with a space."
    return re.search(r'\b' + r'[-\s]'.join(map(re.escape, word.split('-'))) + r'\b', text, re.IGNORECASE) is not None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--word', default=None, help='default: the current UTC minute spelled out')
    ap.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    ap.add_argument('--temperature', type=float, default=0.7)
    ap.add_argument('--max-tokens', type=int, default=64)
    ap.add_argument('--device', default='auto')
    a = ap.parse_args(argv)
    from orcd.engine import Engine, SamplingParams
    now = datetime.datetime.now(datetime.timezone.utc)
    word = a.word or spell(now.minute)
    t = time.perf_counter()
    eng = Engine(a.model, device=a.device, n_ctx=512)
    print(f'{eng.model_name} on {eng.device}, loaded in {time.perf_counter() - t:.1f} s; UTC {now:%H:%M}')
    prompt = f'Write a haiku about GPU computing that includes the word "{word}"'
    print(f'prompt: {prompt}\n')
    hits = 0
    for s in a.seeds:
        t = time.perf_counter()
        evs = list(eng.generate(prompt, SamplingParams(temperature=a.temperature, top_k=40, top_p=0.95, min_p=0.05,
                                                       seed=s, max_tokens=a.max_tokens), chat=True))
        text = ''.join(e.text for e in evs)
        ok = contains_word(text, word); hits += ok
        print(f'--- seed {s}: word {"PRESENT" if ok else "absent"} ({evs[-1].completion_tokens} tokens, '
              f'{evs[-1].finish_reason}, {time.perf_counter() - t:.1f} s)\n{text.strip()}\n')
    print(f'"{word}" appears in {hits} of {len(a.seeds)} outputs')
    return 0 if hits else 1


if __name__ == '__main__':
    sys.exit(main())
