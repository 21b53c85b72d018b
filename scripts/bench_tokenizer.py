#!/usr/bin/env python
"""Encode throughput of orcd's gguf-bpe tokenizer against the `tokenizers` library on the same vocabulary.

    python scripts/bench_tokenizer.py [MODEL] [--mb 1.0] [--repeat 3]

MODEL (default qwen2.5-coder-0.5b-instruct) is a registry name or a .gguf path with a byte-level BPE
vocabulary. The `tokenizers` side is built in this run from the GGUF's own tokens and merges, with the
pre-tokenizer regex Hugging Face ships for the model, and must produce the same ids (checked). The text
is ~1 MB of mixed, deterministic (seeded) content: English prose, code, CJK/Arabic/Hindi/Thai, emoji,
numbers, whitespace runs — the conformance strings of tests/fixtures/tokenizer plus seeded random words,
so that the word cache does not see only repeats.

Reported: MB/s of each, and the ratio orcd / tokenizers, with a cold word cache (first pass over the text)
and a warm one (best of the following passes). `tokenizers` runs `Tokenizer.encode` on one string in
this process (TOKENIZERS_PARALLELISM=false, so one thread, like ours).
"""
import argparse, gzip, json, os, random, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
ROOT = Path(__file__).resolve().parent.parent

HF_PRE = {  # the pre-tokenizer regex of the models' tokenizer.json files, by tokenizer.ggml.pre
    'qwen2': r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    'llama-bpe': r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def mixed_text(n_bytes, seed=0):
    "About `n_bytes` of mixed text: fixture strings and random words, shuffled with a fixed seed."
    with gzip.open(ROOT / 'tests' / 'fixtures' / 'tokenizer' / 'qwen2.5-coder-0.5b-instruct.json.gz', 'rt') as f:
        pool = [s for s in json.load(f)['strings'] if 0 < len(s) < 2000]
    rng = random.Random(seed)
    latin = 'etaoinshrdlcumwfgypbvkjxqz'
    scripts = ['的一是不了人我在有他这为之大来以个中上们', 'ابتثجحخدذرزسشصضطظعغفقكلمنهوي', 'कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह',
               'กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮ', 'абвгдежзийклмнопрстуфхцчшщыэюя']
    out, size = [], 0
    while size < n_bytes:
        r = rng.random()
        if r < 0.35: s = rng.choice(pool)
        elif r < 0.85:
            s = ' '.join(''.join(rng.choice(latin) for _ in range(rng.randint(1, 11))) for _ in range(rng.randint(3, 20)))
            if rng.random() < 0.3: s = s.capitalize() + rng.choice(['.', ',', '!', '?', ';', ':']) + ' '
        elif r < 0.95:
            sc = rng.choice(scripts); s = ''.join(rng.choice(sc) for _ in range(rng.randint(2, 30)))
        else: s = str(rng.randint(0, 10 ** rng.randint(1, 12))) + rng.choice([' ', '\n', '\n\n', '\t', '    '])
        out.append(s); size += len(s.encode())
    return ' '.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model', nargs='?', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--mb', type=float, default=1.0)
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args()
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers as P
    from orcd import tokenizer as T
    from orcd.gguf import GGUFFile
    from orcd.pull import resolve_model
    gf = GGUFFile(resolve_model(a.model))
    ours = T.load_tokenizer(gf)
    if ours.kind != 'gguf-bpe': sys.exit(f'{a.model}: {ours.kind} vocabulary; this benchmark needs gguf-bpe')
    pre = ours.v.pre
    if pre not in HF_PRE: sys.exit(f'{a.model}: no tokenizer.json regex known for pre-tokenizer {pre!r}')
    kv = gf.kv
    toks = list(kv['tokenizer.ggml.tokens'])
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)},
                              merges=[tuple(m.split(' ', 1)) for m in kv['tokenizer.ggml.merges']]))
    hf.pre_tokenizer = P.Sequence([P.Split(Regex(HF_PRE[pre]), 'isolated'), P.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, y in zip(toks, ours.v.types) if y == T.CONTROL])
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t, y in zip(toks, ours.v.types) if y == T.USER_DEFINED])
    hf.encode_special_tokens = True   # parse_special=False on both sides

    text = mixed_text(int(a.mb * 1e6))
    mb = len(text.encode()) / 1e6

    def timed(f):
        t = time.perf_counter(); r = f(); return time.perf_counter() - t, r

    ours._cache.clear()
    t_cold, ids = timed(lambda: ours.encode(text, add_special=False))
    t_warm = min(timed(lambda: ours.encode(text, add_special=False))[0] for _ in range(a.repeat))
    t_hf, hf_ids = min((timed(lambda: hf.encode(text, add_special_tokens=False).ids) for _ in range(a.repeat)),
                       key=lambda x: x[0])
    same = ids == hf_ids
    print(f'model {a.model} (pre {pre}), text {mb:.2f} MB, {len(ids)} tokens, ids identical: {same}')
    print(f'tokenizers     : {mb / t_hf:7.2f} MB/s')
    print(f'orcd cold cache: {mb / t_cold:7.2f} MB/s   ratio {t_hf / t_cold:.2f}x')
    print(f'orcd warm cache: {mb / t_warm:7.2f} MB/s   ratio {t_hf / t_warm:.2f}x')
    if not same: sys.exit('ids differ from the tokenizers library')


if __name__ == '__main__':
    main()
