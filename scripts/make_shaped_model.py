"""A synthetic model with the exact layout of a real GGUF file, and weights that make a usable model.

    python scripts/make_shaped_model.py PREFIX OUT.gguf [--seed S] [--workers N]

``PREFIX.head`` and ``PREFIX.json`` are a real file's skeleton (``gguf-skeleton save``): the header bytes up to
the tensor data (metadata, tokenizer, tensor table) and the tensor list (name, type, offset relative to the
data start, nbytes, shape in GGUF order). OUT.gguf gets the header verbatim, so every offset, the alignment and
the tokenizer are the real model's, and every tensor's data is synthetic values quantised by orcd's own
quantisers (``orcd.quants.quantize``) into the tensor's own block type.

Unlike ``gguf-skeleton fill`` (random blocks with tiny scales: the activations vanish), the values are scaled
so that a forward pass stays O(1) through the whole model and greedy decoding does not get stuck on one token,
which is what a GPU-vs-CPU correctness comparison needs (K below: the contiguous GGUF dimension of a matrix,
i.e. its input features; L: the number of layers):

* norm weights ~ 1 + N(0, 0.1²); biases ~ N(0, 0.1²), those added to the residual stream (attn_output,
  ffn_down) ~ N(0, 0.02²): they are the same vector for every token; ``rope_freqs`` exactly 1;
* matrices that read the residual stream (attn_q/k/v/qkv, ffn_gate/up, router, experts) ~ N(0, 1/K);
* ffn_down ~ N(0, g²/K) and attn_output ~ N(0, (g/2)²/K) with ``g = min(1, 2/sqrt(L))``: the residual
  stream stays O(1) however deep the model (rms 1.5-1.7 at the end of SmolLM2 and Qwen). The attention write
  gets half (ATTN_GAIN): with the full gain the softmax averages, which change slowly from one position to the
  next, dominate the last position's state and greedy decoding repeats a token (SmolLM2: runs of 10); at 0.5
  the context still moves the last position's logits by 0.5 (Qwen) to 1.4 (SmolLM2, Gemma) of their std;
* post-norms (Gemma's post_attention_norm ~ 0.5, post_ffw_norm ~ 1) fix the size of every write instead,
  whatever the projection's scale; the residual grows as sqrt(1.25·L) (4.9 at the end of Gemma 3 270M);
* untied models: embeddings ~ N(0, 1/s²) (s = the architecture's embedding scale, sqrt(d) for Gemma), the
  output matrix ~ N(0, 2.5²/K): logits with std ~ 2.5, peaked enough for a robust greedy choice;
* tied models (no ``output.weight``): the embedding is also the output matrix and the current token's
  logit has a self term ~|e|², so a large embedding makes it win every greedy step. The embedding is scaled
  so that the self term is SELF_Z = 1 standard deviation of the other logits (the best of 49k-262k other
  tokens lies ~4.5 std out), and the output norm's weights bring the logits to std ~ 2.5.

Work is split into chunks of whole rows (at most 2^22 values), each with its own generator seeded from
(seed, tensor index, chunk index): the bytes depend on --seed only, never on --workers. Chunks are quantised
in a process pool and written with ``os.pwrite`` into a preallocated file, which is renamed into place when
complete. The header is validated with ``orcd.gguf.GGUFFile`` and checked against the JSON, and every
tensor's size against ``orcd.quants.QUANT_TYPES``, before any data is made.
"""
from __future__ import annotations

import argparse, json, math, os, re, sys, time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

CHUNK_VALUES = 1 << 22          # values per work item (whole rows); fixed: the bytes must not depend on --workers
LOGIT_STD = 2.5                 # target spread of the logits
NORM_NOISE, BIAS_STD = 0.1, 0.1
OUT_BIAS_STD = 0.02             # biases added to the residual stream: the same vector for every token
SELF_Z = 1.0                    # tied models: the current token's own logit is raised by SELF_Z std
ATTN_GAIN = 0.5                 # the attention write's share of the residual gain: keeps greedy decoding varied


class ShapedModelError(ValueError):
    "The skeleton cannot be filled: a bad header/JSON, an unknown tensor name or an unsupported block type."


# ---- what each tensor is -------------------------------------------------------------------------------
_KINDS = [  # (regex on the name without 'blk.N.', kind); first match wins
    (r'token_embd\.weight', 'embed'),
    (r'position_embd\.weight', 'pos_embed'),
    (r'output\.weight', 'output'),
    (r'output_norm\.weight', 'out_norm'),
    (r'rope_freqs\.weight', 'ones'),
    (r'post_attention_norm\.weight', 'attn_post_norm'),            # see kind_of: gpt-oss's is a pre-norm
    (r'post_ffw_norm\.weight', 'post_norm'),
    (r'(attn_norm|ffn_norm|attn_q_norm|attn_k_norm)\.weight', 'norm'),
    (r'.*norm\.bias', 'bias'),
    (r'(attn_q|attn_k|attn_v|attn_qkv|ffn_gate|ffn_up|ffn_gate_inp|ffn_gate_exps|ffn_up_exps)\.weight', 'in_proj'),
    (r'attn_output\.weight', 'attn_out'),
    (r'(ffn_down|ffn_down_exps)\.weight', 'out_proj'),
    (r'(attn_output|ffn_down|ffn_down_exps)\.bias', 'out_bias'),
    (r'.*\.bias', 'bias'),
    (r'attn_sinks\.weight', 'sinks'),
]
_KINDS = [(re.compile(p), k) for p, k in _KINDS]


def kind_of(name: str, names: set) -> str:
    "The role of tensor `name` (`names`: all tensor names of the file); `ShapedModelError` if unknown."
    m = re.fullmatch(r'blk\.(\d+)\.(.+)', name)
    short = m.group(2) if m else name
    for rx, kind in _KINDS:
        if rx.fullmatch(short):
            if kind == 'attn_post_norm' and m and f'blk.{m.group(1)}.ffn_norm.weight' not in names:
                return 'norm'           # gpt-oss names its pre-FFN norm post_attention_norm
            return kind
    raise ShapedModelError(f'tensor {name!r}: unknown role (not an embedding, norm, bias or projection this '
                           'script knows); add it to _KINDS in scripts/make_shaped_model.py')


# ---- the skeleton ---------------------------------------------------------------------------------------
def read_skeleton(prefix: str):
    "(header bytes, JSON dict, file end) of PREFIX.head / PREFIX.json, with every tensor's size checked."
    from orcd.quants import QuantError, quant_type
    try:
        head = open(prefix + '.head', 'rb').read()
        meta = json.load(open(prefix + '.json'))
    except (OSError, ValueError) as e:
        raise ShapedModelError(f'cannot read the skeleton {prefix}.head / {prefix}.json: {e}') from None
    if meta.get('data_offset') != len(head):
        raise ShapedModelError(f'{prefix}.json: data_offset {meta.get("data_offset")} != {len(head)} bytes of {prefix}.head')
    for t in meta['tensors']:
        try: qt = quant_type(t['type'])
        except QuantError as e: raise ShapedModelError(f'tensor {t["name"]!r}: {e}') from None
        n = math.prod(t['shape'])
        if t['shape'][0] % qt.block_size or n // qt.block_size * qt.type_size != t['nbytes']:
            raise ShapedModelError(f'tensor {t["name"]!r}: shape {t["shape"]} of {qt.name} ({qt.block_size} values in '
                                   f'{qt.type_size} B) does not make the {t["nbytes"]} bytes the JSON gives')
    end = len(head) + max((t['offset'] + t['nbytes'] for t in meta['tensors']), default=0)
    return head, meta, end


def check_header(path, meta):
    "Validate the header written to `path` with orcd's reader; it must list exactly the JSON's tensors."
    from orcd.gguf import GGUFFile, GGUFError
    try:
        with GGUFFile(path) as gf:
            tensors, kv = gf.tensors, dict(gf.kv)
            data_offset = gf.data_offset
    except GGUFError as e:
        raise ShapedModelError(f'the header does not validate: {e}') from None
    if data_offset != meta['data_offset'] or len(tensors) != len(meta['tensors']):
        raise ShapedModelError(f'header and JSON disagree: data offset {data_offset} vs {meta["data_offset"]}, '
                               f'{len(tensors)} vs {len(meta["tensors"])} tensors')
    for t in meta['tensors']:
        h = tensors.get(t['name'])
        if h is None or (list(h.shape), h.ggml_type, h.offset - data_offset, h.nbytes) != (
                list(t['shape']), t['type'], t['offset'], t['nbytes']):
            raise ShapedModelError(f'tensor {t["name"]!r}: header says {h}, JSON says {t}')
    return kv


# ---- the scales -----------------------------------------------------------------------------------------
def plan(meta, kv) -> tuple[dict, dict]:
    "(name → (mean, std) of the values of every tensor, a dict of the model-wide choices): see the docstring."
    names = {t['name'] for t in meta['tensors']}
    arch = kv.get('general.architecture', '')
    n_layers = 1 + max((int(m.group(1)) for n in names if (m := re.match(r'blk\.(\d+)\.', n))), default=0)
    emb = next((t for t in meta['tensors'] if t['name'] == 'token_embd.weight'), None)
    d = emb['shape'][0] if emb else 1
    try:
        from orcd.adapters import ARCHITECTURES
        s = math.sqrt(d) if arch in ARCHITECTURES and ARCHITECTURES[arch].recipe.embed_scale == 'sqrt_d' else 1.0
    except ImportError:
        s = 1.0
    post_norms = any(kind_of(n, names) in ('post_norm', 'attn_post_norm') for n in names)
    g = min(1.0, 2.0 / math.sqrt(n_layers))                         # gain of the residual writers
    # rms r of what the layers write into the residual stream. Post-normed: per layer an attention write of rms
    # ATTN_GAIN and an FFN write of rms 1. Pre-norm only: ~0.63·g·sqrt(1.25) per layer (softmax averages and
    # gated products have rms < 1), measured on the SmolLM2 and Qwen skeletons
    r = math.sqrt(n_layers * (ATTN_GAIN ** 2 + 1)) * (1.0 if post_norms else g * math.sqrt(0.4))
    tied = 'output.weight' not in names
    if tied:
        sigma_e = SELF_Z * r / (math.sqrt(d) * s)   # self term |e|²·s/r = SELF_Z × the std of the other logits
        out_norm = LOGIT_STD * s / (SELF_Z * r)     # std of the logits: out_norm·sqrt(d)·sigma_e
    else:
        sigma_e, out_norm = 1.0 / s, 1.0
    out = {}
    for t in meta['tensors']:
        name, k = t['name'], t['shape'][0]
        kind = kind_of(name, names)
        out[name] = {'embed': (0.0, sigma_e), 'pos_embed': (0.0, sigma_e * s), 'output': (0.0, LOGIT_STD / math.sqrt(k)),
                     'out_norm': (out_norm, NORM_NOISE * out_norm), 'ones': (1.0, 0.0),
                     'norm': (1.0, NORM_NOISE), 'post_norm': (1.0, NORM_NOISE),
                     'attn_post_norm': (ATTN_GAIN, NORM_NOISE * ATTN_GAIN), 'bias': (0.0, BIAS_STD),
                     'out_bias': (0.0, OUT_BIAS_STD),
                     'in_proj': (0.0, 1.0 / math.sqrt(k)), 'out_proj': (0.0, g / math.sqrt(k)),
                     'attn_out': (0.0, ATTN_GAIN * g / math.sqrt(k)),
                     'sinks': (0.0, 1.0)}[kind]
    info = dict(arch=arch, n_layers=n_layers, d_model=d, embed_scale=s, tied=tied, residual_gain=g,
                residual_rms=r, embed_std=sigma_e, out_norm_mean=out_norm)
    return out, info


# ---- the work -------------------------------------------------------------------------------------------
_COST = {'Q5_0': 8.0, 'Q4_1': 4.0, 'Q5_1': 8.0, 'Q4_0': 4.0, 'Q4_K': 2.5, 'Q5_K': 3.0, 'Q6_K': 2.2, 'MXFP4': 6.0,
         'Q8_0': 1.0, 'BF16': 0.5, 'F16': 0.3, 'F32': 0.3}


def work_items(meta, scales, seed):
    "One item per chunk of whole rows: (seed key, ggml type, n values, file offset, mean, std)."
    from orcd.quants import QUANT_TYPES
    items = []
    for ti, t in enumerate(meta['tensors']):
        qt = QUANT_TYPES[t['type']]
        row, n_rows = t['shape'][0], math.prod(t['shape'][1:])
        row_bytes = row // qt.block_size * qt.type_size
        per = max(1, CHUNK_VALUES // row)
        mean, std = scales[t['name']]
        for ci, r0 in enumerate(range(0, n_rows, per)):
            nr = min(per, n_rows - r0)
            items.append(((seed, ti, ci), t['type'], nr * row, meta['data_offset'] + t['offset'] + r0 * row_bytes,
                          mean, std))
    items.sort(key=lambda it: -it[2] * _COST.get(QUANT_TYPES[it[1]].name, 4.0))   # longest first
    return items


_FD = None


def _init_worker(path):
    global _FD
    _FD = os.open(path, os.O_WRONLY)


def _close_worker():
    global _FD
    os.close(_FD); _FD = None


def fill_chunk(item):
    "Make, quantise and write one chunk; returns (ggml type, values, bytes)."
    from orcd.quants import quantize
    key, ggml_type, n, offset, mean, std = item
    x = np.random.default_rng(key).standard_normal(n, dtype=np.float32)
    x *= np.float32(std)
    x += np.float32(mean)
    data = quantize(x, ggml_type)
    view = memoryview(data)
    while view:                               # pwrite may write less than asked
        k = os.pwrite(_FD, view, offset)
        view, offset = view[k:], offset + k
    return ggml_type, n, data.nbytes


def make_shaped_model(prefix: str, out: str, seed: int = 0, workers: int | None = None, log=print) -> dict:
    "Write OUT from the skeleton PREFIX (see the module docstring); returns a summary dict."
    from orcd.quants import QUANT_TYPES
    t0 = time.perf_counter()
    head, meta, end = read_skeleton(prefix)
    tmp = f'{out}.tmp{os.getpid()}'
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, head, 0)
            os.ftruncate(fd, end)             # sparse: the workers fill it
        finally: os.close(fd)
        kv = check_header(tmp, meta)
        scales, info = plan(meta, kv)
        items = work_items(meta, scales, seed)
        workers = max(1, workers or os.cpu_count() or 1)
        values = Counter()
        if workers == 1:
            _init_worker(tmp)
            try:
                for t, n, _ in map(fill_chunk, items): values[QUANT_TYPES[t].name] += n
            finally: _close_worker()
        else:
            pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(tmp,))
            try:
                for t, n, _ in pool.map(fill_chunk, items, chunksize=1): values[QUANT_TYPES[t].name] += n
            finally: pool.shutdown(cancel_futures=True)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp): os.remove(tmp)
        raise
    dt = time.perf_counter() - t0
    summary = dict(out=out, bytes=end, seconds=round(dt, 2), workers=workers, chunks=len(items), seed=seed,
                   values=dict(values), **info)
    log(f'{out}: {end:,} bytes, {len(meta["tensors"])} tensors in {len(items)} chunks, {sum(values.values()):,} values '
        f'({", ".join(f"{k} {v / 1e6:.1f}M" for k, v in values.most_common())}), {workers} workers, {dt:.1f} s')
    log('  ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in info.items()))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('prefix', help='skeleton prefix: PREFIX.head and PREFIX.json')
    ap.add_argument('out', help='the GGUF file to write')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--workers', type=int, default=os.cpu_count(), help='processes (default: all CPUs)')
    a = ap.parse_args(argv)
    try:
        make_shaped_model(a.prefix, a.out, a.seed, a.workers)
    except ShapedModelError as e:
        print(f'make_shaped_model: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
