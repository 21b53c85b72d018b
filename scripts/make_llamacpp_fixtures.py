"""Reference fixtures for the real models, produced by llama.cpp (llama-cpp-python on CPU).

Environment: the llama-cpp reference environment (``python scripts/make_reference_envs.py llama-cpp``, or the
Python that ``ORCD_LLAMA_CPP_PYTHON`` names), NOT the project venv::

    build/refenv/llama-cpp/bin/python scripts/make_llamacpp_fixtures.py            # all three models
    build/refenv/llama-cpp/bin/python scripts/make_llamacpp_fixtures.py gemma-3-270m
    build/refenv/llama-cpp/bin/python scripts/make_llamacpp_fixtures.py --haiku    # optional haiku samples

(llama-cpp-python 0.3.36 built from the PyPI sdist for CPU; numpy.)  Models are read from
``$ORCD_HOME/models/<name>.gguf`` (default ``~/.cache/orcd/models``).

For every model and each of the 8 prompts below, raw and chat-templated, it records:

* ``prompt_ids``: raw text is tokenized as plain text (BOS only where the model's ``add_bos_token`` says
  so, specials not parsed); chat text comes from the GGUF's ``tokenizer.chat_template`` rendered by
  llama-cpp-python's Jinja2 formatter (or, where the GGUF has no template, llama.cpp's built-in template
  named in the case) and is tokenized with special tokens parsed;
* ``continuation_ids``: llama.cpp's greedy continuation (argmax of the logits, first index on ties — the
  same rule as llama.cpp's greedy sampler), decoded token by token from the KV cache, 64 tokens, stopping
  early only at an end-of-generation token (which is then the last id);
* teacher-forced rows: prompt + continuation evaluated in ONE batch with ``logits_all``; row j predicts
  the token after ``prompt_ids + continuation_ids[:j]``, j = 0 .. len(continuation_ids) (so there is one
  more row than continuation ids).  For each row: the 40 most likely ids and their log-probabilities
  from the full-vocabulary log-softmax (float64, descending), and the margin between the top two logits.

Everything is deterministic (greedy, fixed threads, gzip mtime 0); only ``header.date`` changes.
The format is documented in tests/fixtures/README.md.
"""
import argparse, datetime, gzip, hashlib, json, os, sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / 'tests' / 'fixtures' / 'llamacpp'
MODELS = ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct', 'gemma-3-270m']
# llama.cpp built-in template used when a GGUF carries no tokenizer.chat_template
BUILTIN_FALLBACK = {'gemma-3-270m': 'gemma'}
N_THREADS, N_CTX, N_GEN, TOP_K = 2, 512, 64, 40

# (key, system message for the chat case, user message for the chat case, plain text for the raw case).
# The raw texts are completion-style so that instruct models continue them instead of ending at once.
PROMPTS = [
    ('question', None, 'What is the capital of Australia, and why was it chosen over Sydney and Melbourne?',
     'Question: What is the capital of Australia, and why was it chosen over Sydney and Melbourne?\nAnswer:'),
    ('code', None, 'Write a Python function that checks whether a string is a palindrome, ignoring punctuation and case.',
     'import string\n\n\ndef is_palindrome(text: str) -> bool:\n    """Check whether text is a palindrome, ignoring punctuation and case."""\n'),
    ('list', None, 'List five common houseplants that tolerate low light, one per line.',
     'Five common houseplants that tolerate low light:\n1.'),
    ('french', None, 'Explique en quelques phrases pourquoi le ciel est bleu.',
     'Pourquoi le ciel est-il bleu ? La lumière du soleil'),
    ('story', None, 'Write the opening of a story about a village at the edge of a vast forest.',
     'Once upon a time, in a village at the edge of a vast forest, there lived'),
    ('math', 'You are a concise math tutor.',
     'If a train travels 120 km in 1.5 hours, what is its average speed in km/h? Show your reasoning.',
     'Problem: A train travels 120 km in 1.5 hours. What is its average speed in km/h?\nSolution: The average speed is'),
    ('code_completion', None, 'Complete this function:\n\ndef fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
     'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ('chinese', None, '请用三句话介绍一下长城的历史。', '长城是中国古代的伟大工程，它的历史可以追溯到'),
]


def models_dir():
    return Path(os.environ.get('ORCD_HOME', Path.home() / '.cache' / 'orcd')) / 'models'


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''): h.update(chunk)
    return h.hexdigest()


def token_text(llm, i):
    return llm.detokenize([i], special=True).decode('utf-8', errors='replace')


def is_eog(llm, tok):
    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok))


def c_apply_template(llm, messages, tmpl=None):
    "llama.cpp's own (C++) llama_chat_apply_template; tmpl None = the model's template."
    arr = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m['role'].encode(), m['content'].encode()) for m in messages])
    if tmpl is None:
        t = llama_cpp.llama_model_chat_template(llm.model, None)
        if not t: return None
    else: t = tmpl.encode()
    buf = ctypes_buf = (llama_cpp.ctypes.c_char * 65536)()
    n = llama_cpp.llama_chat_apply_template(t, arr, len(messages), True, ctypes_buf, len(buf))
    if n < 0: return None
    return bytes(buf[:n]).decode('utf-8')


def apply_chat(llm, name, messages):
    """Chat text + how it was made. Jinja (the GGUF template) first; llama.cpp built-in as fallback."""
    tmpl = llm.metadata.get('tokenizer.chat_template')
    if tmpl:
        fmt = Jinja2ChatFormatter(tmpl, eos_token=token_text(llm, llm.token_eos()),
                                  bos_token=token_text(llm, llm.token_bos()), add_generation_prompt=True)
        text = fmt(messages=messages).prompt
        c_text = c_apply_template(llm, messages)
        return text, 'gguf tokenizer.chat_template (llama-cpp-python Jinja2ChatFormatter)', c_text
    builtin = BUILTIN_FALLBACK.get(name)
    if builtin is None: return None, 'none', None
    text = c_apply_template(llm, messages, builtin)
    return text, f"llama.cpp built-in template '{builtin}' (llama_chat_apply_template; the GGUF has none)", text


def tokenize_chat(llm, text):
    ids = llm.tokenize(text.encode('utf-8'), add_bos=True, special=True)  # BOS only if add_bos_token
    bos = llm.token_bos()
    if len(ids) >= 2 and ids[0] == bos and ids[1] == bos: ids = ids[1:]  # template already wrote BOS
    return ids


def top_rows(scores):
    "scores [R, V] float32 -> top-40 ids, their log-softmax, top-2 margin."
    s = scores.astype(np.float64)
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    ids, lps, margins = [], [], []
    for r in range(s.shape[0]):
        part = np.argpartition(-s[r], TOP_K)[:TOP_K]
        order = np.lexsort((part, -s[r, part]))  # by logit desc, then id asc
        top = part[order]
        ids.append([int(i) for i in top])
        lps.append([float(f'{v:.8g}') for v in (s[r, top] - lse[r])])
        margins.append(float(f'{float(scores[r, top[0]]) - float(scores[r, top[1]]):.8g}'))
    return ids, lps, margins


def run_case(llm, prompt_ids):
    # 1. free-running greedy decode, token by token through the KV cache
    llm.reset()
    llm.eval(prompt_ids)
    cont, eog = [], False
    for _ in range(N_GEN):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        cont.append(tok)
        if is_eog(llm, tok):
            eog = True
            break
        llm.eval([tok])
    # 2. teacher-forced: prompt + continuation in one batch, every row of logits
    llm.reset()
    llm.eval(prompt_ids + cont)
    p = len(prompt_ids)
    rows = np.array(llm.scores[p - 1: p + len(cont)], dtype=np.float32)
    ids, lps, margins = top_rows(rows)
    tf_mismatch = [j for j in range(len(cont)) if ids[j][0] != cont[j]]
    return cont, eog, ids, lps, margins, tf_mismatch


def make_model(name):
    path = models_dir() / f'{name}.gguf'
    llm = Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=N_THREADS,
                n_threads_batch=N_THREADS, logits_all=True, verbose=False, seed=0)
    header = dict(model=name, model_file=path.name, model_sha256=sha256(path),
                  llama_cpp_python_version=llama_cpp.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
                  n_threads=N_THREADS, n_ctx=N_CTX, n_gen=N_GEN, top_k=TOP_K, n_vocab=llm.n_vocab(),
                  add_bos=llm.metadata.get('tokenizer.ggml.add_bos_token'),
                  chat_template_in_gguf='tokenizer.chat_template' in llm.metadata,
                  script='scripts/make_llamacpp_fixtures.py')
    cases, notes = [], []
    for key, system, text, raw_text in PROMPTS:
        for chat in (False, True):
            if chat:
                messages = ([{'role': 'system', 'content': system}] if system else []) + \
                           [{'role': 'user', 'content': text}]
                ptext, source, c_text = apply_chat(llm, name, messages)
                if ptext is None:
                    notes.append(f'{key}: no chat template, chat case skipped'); continue
                if c_text is not None and c_text != ptext:
                    notes.append(f'{key}: llama_chat_apply_template differs from the Jinja rendering')
                prompt_ids = tokenize_chat(llm, ptext)
                prompt = messages
            else:
                prompt_ids = llm.tokenize(raw_text.encode('utf-8'), add_bos=True, special=False)
                prompt, ptext, source = raw_text, raw_text, None
            cont, eog, ids, lps, margins, tf_mm = run_case(llm, prompt_ids)
            case = dict(name=f"{key}_{'chat' if chat else 'raw'}", chat=chat, prompt=prompt,
                        prompt_text=ptext, prompt_ids=[int(i) for i in prompt_ids],
                        continuation_ids=cont, stopped_at_eog=eog,
                        continuation_text=llm.detokenize(cont, special=True).decode('utf-8', errors='replace'),
                        top_ids=ids, top_logprobs=lps, margin=margins,
                        teacher_forced_argmax_mismatch=tf_mm)
            if chat: case['template_source'] = source
            cases.append(case)
            print(f"  {name} {case['name']}: prompt {len(prompt_ids)} tok, {len(cont)} generated"
                  f"{' (EOG)' if eog else ''}, tf mismatches {tf_mm}: {case['continuation_text'][:60]!r}",
                  flush=True)
    header['notes'] = notes
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f'{name}.json.gz'
    data = json.dumps(dict(header=header, cases=cases), ensure_ascii=False, separators=(',', ':'))
    with open(out, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0, filename='') as f:
        f.write(data.encode('utf-8'))
    print(f'wrote {out} ({out.stat().st_size} bytes)', flush=True)
    del llm


HAIKU_WORDS = ['thirty-one', 'seventeen', 'fifty-four']
HAIKU_SEEDS = [1, 2, 3]
HAIKU_SAMPLING = dict(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, max_tokens=96)


def make_haiku():
    "Optional: llama.cpp's sampled haiku answers (Qwen, chat, temperature 0.7, 3 seeds) for a few words."
    name = 'qwen2.5-coder-0.5b-instruct'
    path = models_dir() / f'{name}.gguf'
    llm = Llama(str(path), n_ctx=N_CTX, n_threads=N_THREADS, n_threads_batch=N_THREADS, verbose=False)
    out = []
    for word in HAIKU_WORDS:
        prompt = f'Write a haiku about GPU computing that includes the word "{word}"'
        for seed in HAIKU_SEEDS:
            r = llm.create_chat_completion([{'role': 'user', 'content': prompt}], seed=seed, **HAIKU_SAMPLING)
            text = r['choices'][0]['message']['content']
            out.append(dict(word=word, seed=seed, prompt=prompt, text=text,
                            contains_word=word.lower() in text.lower(),
                            finish_reason=r['choices'][0]['finish_reason']))
            print(f'  {word} seed {seed}: {out[-1]["contains_word"]} {text!r}', flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / 'haiku.json').write_text(json.dumps(dict(
        header=dict(model=name, llama_cpp_python_version=llama_cpp.__version__, sampling=HAIKU_SAMPLING,
                    note='llama-cpp-python create_chat_completion; sampled, so only the word check matters'),
        samples=out), ensure_ascii=False, indent=1) + '\n')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('models', nargs='*', default=MODELS)
    ap.add_argument('--haiku', action='store_true', help='only the optional haiku samples')
    a = ap.parse_args()
    if a.haiku: make_haiku(); sys.exit()
    for m in a.models:
        if m not in MODELS: sys.exit(f'unknown model {m!r}; expected one of {MODELS}')
        make_model(m)
