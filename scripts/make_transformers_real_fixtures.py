"""A second, independent fp32 reference for the real models: Hugging Face transformers on CPU.

Environment: the torch reference environment (``python scripts/make_reference_envs.py torch``, or the Python
that ``ORCD_TORCH_PYTHON`` names), NOT the project venv::

    build/refenv/torch/bin/python scripts/make_transformers_real_fixtures.py            # all three models
    build/refenv/torch/bin/python scripts/make_transformers_real_fixtures.py gemma-3-270m

(torch CPU + transformers + gguf-py.)  Models are read from ``$ORCD_HOME/models/<name>.gguf`` (default
``~/.cache/orcd/models``).  Each GGUF is loaded with transformers' OWN GGUF loader
(``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)``): its own name mapping, its own
config reading, and gguf-py's dequantisation -- no orcd code is involved.

For two cases per model taken from ``tests/fixtures/llamacpp/<model>.json.gz`` (``question_raw`` and
``code_chat``), the teacher-forced sequence ``prompt_ids + continuation_ids`` is run through the model in
ONE forward pass (fp32, eager attention, no cache) and, for every row from the last prompt token on (row j
predicts the token after ``prompt_ids + continuation_ids[:j]``, as in the llama.cpp fixture), it stores the
top-64 ids by logit, their fp32 logits, the row's logsumexp over the whole vocabulary and the row's
max |logit|, plus its logits at the 40 ids the llama.cpp fixture lists for that row.  Output: ``tests/fixtures/transformers/<model>.npz`` (format in tests/fixtures/README.md).

Before storing, the loaded configuration is checked against the GGUF's semantics as llama.cpp reads them
(tied output, vocabulary size, RoPE bases, no logit softcapping, Gemma's norm weights); a model that
transformers gets wrong is reported and skipped, never patched.
"""
import argparse, datetime, gzip, hashlib, json, os, sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM
import gguf
from importlib.metadata import version

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / 'tests' / 'fixtures' / 'transformers'
LLAMACPP = ROOT / 'tests' / 'fixtures' / 'llamacpp'
MODELS = ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct', 'gemma-3-270m']
CASES = ['question_raw', 'code_chat']
TOP_K = 64


def model_dir():
    return Path(os.environ.get('ORCD_HOME', Path.home() / '.cache' / 'orcd')) / 'models'


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''): h.update(b)
    return h.hexdigest()


def pick_cases(cases):
    "The named cases, else the first raw and the first chat case."
    by = {c['name']: c for c in cases}
    out = [by[n] for n in CASES if n in by]
    if len(out) < 2:
        out = [next(c for c in cases if not c['chat']), next(c for c in cases if c['chat'])]
    return out


def check_semantics(model, gf_path):
    """Compare what transformers loaded with the GGUF's own metadata and tensors (llama.cpp's reading).
    Returns a list of problems (empty: fine) and a list of notes."""
    r = gguf.GGUFReader(gf_path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith('tokenizer.ggml.')}
    arch = kv['general.architecture']
    tensors = {t.name: t for t in r.tensors}
    cfg = model.config
    problems, notes = [], []
    n_vocab = int(tensors['token_embd.weight'].shape[1])
    if cfg.vocab_size != n_vocab: problems.append(f'vocab_size {cfg.vocab_size} != GGUF {n_vocab}')
    tied = 'output.weight' not in tensors
    if bool(cfg.tie_word_embeddings) != tied: problems.append(f'tie_word_embeddings {cfg.tie_word_embeddings}, GGUF tied={tied}')
    if tied:
        same = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        if not same: problems.append('output embedding not tied to token_embd')
    for key, attr in [('block_count', 'num_hidden_layers'), ('embedding_length', 'hidden_size'),
                      ('feed_forward_length', 'intermediate_size'), ('attention.head_count', 'num_attention_heads'),
                      ('attention.head_count_kv', 'num_key_value_heads')]:
        v = kv.get(f'{arch}.{key}')
        if v is not None and int(v) != int(getattr(cfg, attr)): problems.append(f'{attr} {getattr(cfg, attr)} != GGUF {key} {v}')
    eps = kv.get(f'{arch}.attention.layer_norm_rms_epsilon')
    if eps is not None and abs(float(eps) - cfg.rms_norm_eps) > 1e-12: problems.append(f'rms_norm_eps {cfg.rms_norm_eps} != {eps}')
    base = kv.get(f'{arch}.rope.freq_base')
    rp = getattr(cfg, 'rope_parameters', None) or {}
    # transformers 5: rope_parameters is {rope_theta, rope_type} or, per layer type, {full_attention: {...}, ...}
    full_rp = rp.get('full_attention', rp)
    if base is not None and abs(float(full_rp.get('rope_theta')) - float(base)) > 1e-3:
        problems.append(f'rope_theta {full_rp.get("rope_theta")} != GGUF freq_base {base}')
    if full_rp.get('rope_type', 'default') != 'default': problems.append(f'rope_type {full_rp.get("rope_type")}')
    if 'sliding_attention' in rp:
        # llama.cpp gemma3: the sliding-window layers use a fixed RoPE base of 10000 (hparams.rope_freq_base_train_swa)
        sb = float(rp['sliding_attention'].get('rope_theta'))
        if sb != 10000.0: problems.append(f'sliding-window rope_theta {sb} != llama.cpp gemma3 10000')
        notes.append(f'rope_theta full {full_rp.get("rope_theta")} / sliding {sb}')
    for cap in ('final_logit_softcapping', 'attn_logit_softcapping'):
        v = getattr(cfg, cap, None)
        gv = kv.get(f'{arch}.{cap}')
        if v is not None and gv is None: problems.append(f'{cap} = {v} but the GGUF sets none')
    if arch == 'gemma3':   # GGUF stores Gemma norm weights with +1 folded in; HF computes x * (1 + w)
        w_hf = model.model.norm.weight.detach().double().numpy()
        w_gguf = np.asarray(tensors['output_norm.weight'].data, np.float64)
        if not np.allclose(w_hf + 1, w_gguf, atol=1e-6): problems.append('final norm weight is not GGUF - 1')
        notes.append(f'layer_types {list(cfg.layer_types).count("sliding_attention")} sliding / '
                     f'{list(cfg.layer_types).count("full_attention")} full, window {cfg.sliding_window}, '
                     f'query_pre_attn_scalar {cfg.query_pre_attn_scalar}, head_dim {cfg.head_dim}')
        # llama.cpp gemma3: hparams.set_swa_pattern(6) -- layer i attends fully iff i % 6 == 5, the others use the window
        want = ['full_attention' if i % 6 == 5 else 'sliding_attention' for i in range(cfg.num_hidden_layers)]
        if list(cfg.layer_types) != want: problems.append(f'layer_types {cfg.layer_types} != llama.cpp pattern {want}')
        swa = kv.get(f'{arch}.attention.sliding_window')
        if swa is not None and int(swa) != cfg.sliding_window: problems.append(f'sliding_window {cfg.sliding_window} != GGUF {swa}')
        if cfg.query_pre_attn_scalar != cfg.head_dim:
            problems.append(f'query_pre_attn_scalar {cfg.query_pre_attn_scalar} != head_dim {cfg.head_dim} (llama.cpp scales by 1/sqrt(head_dim))')
    return problems, notes


def run_model(name, threads):
    path = model_dir() / f'{name}.gguf'
    fx = json.load(gzip.open(LLAMACPP / f'{name}.json.gz'))
    digest = sha256(path)
    if digest != fx['header']['model_sha256']:
        sys.exit(f'{path}: sha256 {digest} differs from the llama.cpp fixture ({fx["header"]["model_sha256"]})')
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation='eager')
    model.eval()
    problems, notes = check_semantics(model, path)
    print(f'{name}: {type(model).__name__}; {"; ".join(notes)}')
    if problems:
        print(f'{name}: transformers loads this GGUF differently from llama.cpp, NOT stored: {problems}')
        return None
    arrays, names = {}, []
    for case in pick_cases(fx['cases']):
        ids = case['prompt_ids'] + case['continuation_ids']
        with torch.no_grad():
            lg = model(torch.tensor([ids]), use_cache=False).logits[0, len(case['prompt_ids']) - 1:]
        lg = lg.float()
        assert lg.shape[0] == len(case['continuation_ids']) + 1 and lg.shape[1] == model.config.vocab_size
        lse = torch.logsumexp(lg.double(), -1)
        # top-64 by logit; ties ordered by id (stable sort of -logit)
        order = torch.sort(-lg, dim=-1, stable=True).indices[:, :TOP_K]
        top = torch.gather(lg, 1, order)
        n = case['name']; names.append(n)
        arrays[f'{n}__ids'] = np.asarray(ids, np.int64)
        arrays[f'{n}__n_prompt'] = np.asarray(len(case['prompt_ids']), np.int64)
        arrays[f'{n}__top_ids'] = order.numpy().astype(np.int32)
        arrays[f'{n}__top_logits'] = top.numpy().astype(np.float32)
        arrays[f'{n}__lse'] = lse.numpy()
        arrays[f'{n}__maxabs'] = lg.abs().max(-1).values.numpy().astype(np.float32)
        # transformers' logits at llama.cpp's 40 listed ids of the same row (for a three-way comparison)
        lids = torch.tensor(case['top_ids'], dtype=torch.int64)
        arrays[f'{n}__at_llamacpp_ids'] = torch.gather(lg, 1, lids).numpy().astype(np.float32)
        am = order[:, 0].numpy()
        print(f'  {n}: {len(ids)} tokens, {lg.shape[0]} rows, argmax = llama.cpp batch argmax at '
              f'{np.mean([am[j] == case["top_ids"][j][0] for j in range(len(am))]):.3f}')
    header = dict(model=name, model_file=path.name, model_sha256=digest, cases=names, top_k=TOP_K,
                  transformers_version=transformers.__version__, torch_version=torch.__version__,
                  gguf_py_version=version('gguf'), accelerate_version=version('accelerate'),
                  hf_class=type(model).__name__, dtype='float32', attn_implementation='eager',
                  torch_threads=threads, notes=notes,
                  date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
                  script='scripts/make_transformers_real_fixtures.py')
    arrays['header'] = np.asarray(json.dumps(header))
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f'{name}.npz'
    np.savez_compressed(out, **arrays)
    print(f'  wrote {out} ({out.stat().st_size} bytes)')
    del model
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('models', nargs='*', default=MODELS)
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for m in a.models:
        run_model(m, a.threads)


if __name__ == '__main__':
    main()
