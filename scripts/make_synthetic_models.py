"""Tiny random phi3, gpt-oss and gpt2 models: GGUF files written by llama.cpp's own converter, and
reference logits from Hugging Face transformers (PyTorch, CPU, fp32) and from llama.cpp.

Environment: the torch reference environment (torch 2.13 CPU, transformers, safetensors, sentencepiece,
tokenizers), made by ``python scripts/make_reference_envs.py`` (or named by ``ORCD_TORCH_PYTHON``)::

    build/refenv/torch/bin/python scripts/make_synthetic_models.py [phi3 gpt-oss gpt2]

It also needs what ``scripts/make_reference_envs.py llama-cpp`` makes (or the environment variables name):

* the llama-cpp-python 0.3.36 sdist (``build/refenv/dl/``, or ``ORCD_LLAMA_CPP_SDIST``); its
  ``vendor/llama.cpp/convert_hf_to_gguf.py`` (with the vendored ``gguf-py``) converts the Hugging Face
  checkpoints, ``--outtype f32``;
* a Python with llama-cpp-python (``build/refenv/llama-cpp``, or ``ORCD_LLAMA_CPP_PYTHON``), which this
  script re-runs itself under (``--llamacpp-part``) to load each GGUF and record llama.cpp's logits and
  greedy continuation.

Per architecture it

1. writes a small valid tokenizer (byte-level BPE trained with the ``tokenizers`` library for gpt2 and
   gpt-oss; a SentencePiece BPE model with byte fallback for phi3) and the HF config;
2. builds the ``*ForCausalLM`` model with weights from a seeded numpy generator, scaled so that
   activations stay O(1) (linear weights ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1^2), biases
   ~ N(0, 0.1^2)); gpt-oss's experts are drawn directly as MXFP4 (random 4-bit codes and E8M0 scales) and
   stored in OpenAI's checkpoint layout (``*_blocks`` / ``*_scales`` + ``quantization_config`` mxfp4), so
   the converter writes them as MXFP4 and transformers dequantises exactly the same values;
3. saves the checkpoint, reloads it with ``from_pretrained`` (fp32, eager attention), computes the logits
   of ``INPUT_IDS`` (24 ids, longer than gpt-oss's 8-token window) and a 16-token greedy continuation;
4. converts with llama.cpp's converter. The converter recognises BPE pre-tokenizers by hashing the
   encoding of a test string, which a made-up vocabulary cannot match, so ``get_vocab_base_pre`` is
   patched to return the real model's pre-tokenizer name ('gpt-2' for GPT-2, 'gpt-4o' for gpt-oss);
   nothing else in the converter is touched;
5. runs llama.cpp (F32 KV cache, one batch, ``logits_all``) on the same ids, and its greedy continuation;
6. writes ``tests/fixtures/synthetic/<arch>.gguf`` and ``<arch>.ref.npz``.

Deterministic: the same weights, tokenizers and GGUF bytes on every run.
"""
import json, math, os, shutil, subprocess, sys, tarfile, tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / 'tests' / 'fixtures' / 'synthetic'
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reference_envs import llama_cpp_sdist, reference_python  # noqa: E402  (where the reference environments are)
N_GREEDY = 16
SEED = 1234
CHECK_F32_EXPERTS = False

# ---- tiny configs -------------------------------------------------------------------------------------
ARCHS = {
    'phi3': dict(
        hf_class='Phi3ForCausalLM', tokenizer='spm',
        config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    original_max_position_embeddings=128, rms_norm_eps=1e-5, hidden_act='silu',
                    rope_parameters=dict(rope_type='default', rope_theta=10000.0), sliding_window=None,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=480, pad_token_id=480)),
    'gpt-oss': dict(
        hf_class='GptOssForCausalLM', tokenizer='bpe', pre='gpt-4o',
        config=dict(vocab_size=512, hidden_size=64, intermediate_size=64, head_dim=16, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=4,
                    sliding_window=8, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    # as the real gpt-oss config, except original_max_position_embeddings (4096 there)
                    rope_parameters=dict(rope_type='yarn', rope_theta=150000.0, factor=32.0, beta_fast=32.0,
                                         beta_slow=1.0, truncate=False, original_max_position_embeddings=64),
                    swiglu_limit=7.0, attention_bias=True, tie_word_embeddings=False,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None)),   # set from the tokenizer
    'gpt2': dict(
        hf_class='GPT2LMHeadModel', tokenizer='bpe', pre='gpt-2',
        config=dict(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=None,
                    activation_function='gelu_new', resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    layer_norm_epsilon=1e-5, tie_word_embeddings=True)),   # bos/eos: <|endoftext|>
}
# 24 ids, the same for every architecture (all ordinary tokens of every vocabulary)
INPUT_IDS = np.random.default_rng(7).integers(10, 470, size=24).astype(np.int64)

CORPUS = """The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
In the beginning the GPU was a fixed-function device; today it runs general programs on thousands of threads.
Attention weights are computed from queries and keys, then used to mix the values of every earlier token.
def forward(self, x):\n    return self.norm(x + self.attn(x))\n
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 3.14159 2.71828.
Quantization stores blocks of 32 weights with one shared scale; MXFP4 uses four bits and an exponent.
Le ciel est bleu parce que la lumière du soleil est diffusée par l'atmosphère. 长城很长。 Привет, мир!
Once upon a time there lived a small model in a tiny file, and it predicted the next token as well as it could.
""" * 3

GPT_OSS_SPECIALS = ['<|startoftext|>', '<|endoftext|>', '<|return|>', '<|constrain|>', '<|channel|>',
                    '<|start|>', '<|end|>', '<|message|>', '<|call|>']
O200K_PATTERN = '|'.join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+"""])
PHI3_ADDED = ['<|endoftext|>', '<|assistant|>', '<|system|>', '<|end|>', '<|user|>']  # ids 480..484
PHI3_CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
                      "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
                      "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n'"
                      " + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
                      "{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


# ---- tokenizers -----------------------------------------------------------------------------------------
def write_bpe_tokenizer(d, arch, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex, AddedToken
    specials = GPT_OSS_SPECIALS if arch == 'gpt-oss' else ['<|endoftext|>']
    tok = Tokenizer(models.BPE())
    if arch == 'gpt-oss':
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(O200K_PATTERN), behavior='isolated', invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    n_train = vocab_size - len(specials) - (3 if arch == 'gpt-oss' else 0)  # gpt-oss: leave 3 [PAD] rows
    trainer = trainers.BpeTrainer(vocab_size=n_train, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.save(str(d / 'tokenizer.json'))
    # as the real models: gpt-oss bos <|startoftext|>, eos <|return|>, pad <|endoftext|>; gpt2 all <|endoftext|>
    eos, pad = ('<|return|>', '<|endoftext|>') if arch == 'gpt-oss' else (specials[0], None)
    cfg = dict(tokenizer_class='PreTrainedTokenizerFast', bos_token=specials[0], eos_token=eos, pad_token=pad,
               unk_token=None, model_max_length=2048, clean_up_tokenization_spaces=False)
    (d / 'tokenizer_config.json').write_text(json.dumps(cfg, indent=1))
    return {s: tok.token_to_id(s) for s in specials}


def write_spm_tokenizer(d, vocab_size):
    import sentencepiece as spm
    n_spm = vocab_size - 32  # 480 pieces; the added tokens follow at 480.. like Phi-3's at 32000..
    with open(d / 'tokenizer.model', 'wb') as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS.splitlines()), model_writer=f, vocab_size=n_spm, model_type='bpe',
            byte_fallback=True, character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, add_dummy_prefix=True, normalization_rule_name='identity', split_digits=True,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False,
            minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / 'tokenizer.model'))
    assert sp.vocab_size() <= n_spm, sp.vocab_size()
    added = {t: n_spm + i for i, t in enumerate(PHI3_ADDED)}
    (d / 'added_tokens.json').write_text(json.dumps(added, indent=1))
    cfg = dict(tokenizer_class='LlamaTokenizer', bos_token='<s>', eos_token='<|endoftext|>', unk_token='<unk>',
               pad_token='<|endoftext|>', add_bos_token=True, add_eos_token=False, legacy=False,
               chat_template=PHI3_CHAT_TEMPLATE,
               added_tokens_decoder={str(i): dict(content=t, lstrip=False, normalized=False, rstrip=t != '<|endoftext|>',
                                                  single_word=False, special=True) for t, i in added.items()})
    (d / 'tokenizer_config.json').write_text(json.dumps(cfg, indent=1))
    return added


# ---- weights --------------------------------------------------------------------------------------------
FP4_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def mxfp4_random(rng, shape_rows, n_in, fan_in):
    """Random MXFP4 weights in OpenAI's layout: blocks [*rows, n_in/32, 16] uint8 (element 2j = low nibble
    of byte j, 2j+1 = high nibble), scales [*rows, n_in/32] uint8 (E8M0, 2^(s-127)), and their values."""
    G = n_in // 32
    blocks = rng.integers(0, 256, size=(*shape_rows, G, 16), dtype=np.uint8)
    # rms of FP4_VALUES ~ 2.9: exponent chosen so the weights have rms ~ 1/sqrt(fan_in), varied per block
    e0 = 127 + int(round(math.log2(1 / (2.9 * math.sqrt(fan_in)))))
    scales = (e0 + rng.integers(-1, 2, size=(*shape_rows, G))).astype(np.uint8)
    vals = np.empty((*shape_rows, G, 32), np.float32)
    vals[..., 0::2] = FP4_VALUES[blocks & 0x0F]
    vals[..., 1::2] = FP4_VALUES[blocks >> 4]
    vals *= np.ldexp(np.float32(1), scales.astype(np.int32) - 127)[..., None]
    return blocks, scales, vals.reshape(*shape_rows, n_in)


def init_weights(model, rng):
    "Overwrite every parameter from the numpy generator (named_parameters order), O(1) activations."
    import torch
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith('bias'):
            w = 0.1 * rng.standard_normal(shape)
        elif 'sinks' in name:
            w = rng.standard_normal(shape)
        elif len(shape) == 1:                                    # norm weights
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif any(k in name for k in ('embed_tokens', 'wte', 'wpe')):
            w = 0.5 * rng.standard_normal(shape)
        elif 'experts' in name:                                  # gpt-oss: replaced by MXFP4 below
            w = np.zeros(shape)
        else:
            fan_in = shape[0] if type(model).__name__.startswith('GPT2') else shape[1]  # Conv1D is [in, out]
            # lm_head x3: peaked next-token distributions (robust greedy); gpt2's c_proj x3: the blocks
            # must outweigh the tied embedding, or the greedy continuation just repeats the input token
            gain = 3.0 if name.startswith('lm_head') or '.c_proj.' in name else (2.0 if 'router' in name else 1.0)
            w = gain * rng.standard_normal(shape) / math.sqrt(fan_in)
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.asarray(w, np.float32)))


# ---- build one architecture -----------------------------------------------------------------------------
def extract_llamacpp(work):
    "The llama.cpp tree (converter + gguf-py) from the sdist, unpacked once under work/."
    top = work / 'sdist'
    if not top.exists():
        sdist, why = llama_cpp_sdist()
        if sdist is None: sys.exit(why)
        with tarfile.open(sdist) as t:
            t.extractall(top, members=[m for m in t.getmembers() if '/vendor/llama.cpp/' in m.name and (
                '/conversion/' in m.name or '/gguf-py/' in m.name or m.name.endswith('convert_hf_to_gguf.py'))],
                filter='data')
    return next(top.glob('*/vendor/llama.cpp'))


def convert(llama_dir, hf_dir, out, pre):
    code = f"""
import sys, runpy
llama_dir = {str(llama_dir)!r}
sys.path[:0] = [llama_dir, llama_dir + '/gguf-py']
import conversion.base as base
pre = {pre!r}
if pre is not None:   # a made-up vocabulary cannot match the converter's pre-tokenizer hashes
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ['convert_hf_to_gguf.py', {str(hf_dir)!r}, '--outfile', {str(out)!r}, '--outtype', 'f32']
runpy.run_path(llama_dir + '/convert_hf_to_gguf.py', run_name='__main__')
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f'convert_hf_to_gguf.py failed for {hf_dir}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}')


def hf_forward(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids, np.int64))[None]).logits[0].float().numpy()


def hf_greedy(model, ids, n):
    ids, out = list(ids), []
    for _ in range(n):          # full recompute each step: no cache involved in the reference
        t = int(np.argmax(hf_forward(model, ids)[-1]))
        out.append(t); ids.append(t)
    return np.array(out, np.int64)


def build(arch, work, llama_dir):
    import torch, transformers
    from safetensors.torch import save_file
    torch.manual_seed(0)
    spec = ARCHS[arch]
    rng = np.random.default_rng([SEED, list(ARCHS).index(arch)])
    hf_dir = work / f'orcd-synthetic-{arch}'
    shutil.rmtree(hf_dir, ignore_errors=True); hf_dir.mkdir(parents=True)
    cfg_kw = dict(spec['config'])
    if spec['tokenizer'] == 'spm':
        added = write_spm_tokenizer(hf_dir, cfg_kw['vocab_size'])
        assert added['<|endoftext|>'] == cfg_kw['eos_token_id']
    else:
        ids = write_bpe_tokenizer(hf_dir, arch, cfg_kw['vocab_size'])
        if arch == 'gpt-oss':
            cfg_kw.update(bos_token_id=ids['<|startoftext|>'], eos_token_id=ids['<|return|>'],
                          pad_token_id=ids['<|endoftext|>'])
        else:
            cfg_kw.update(bos_token_id=ids['<|endoftext|>'], eos_token_id=ids['<|endoftext|>'])
    Config = getattr(transformers, spec['hf_class'].replace('ForCausalLM', 'Config').replace('LMHeadModel', 'Config'))
    config = Config(**cfg_kw)
    config.architectures = [spec['hf_class']]
    if arch == 'gpt2': config.n_ctx = cfg_kw['n_positions']      # the converter reads n_ctx
    model = getattr(transformers, spec['hf_class'])(config).float().eval()
    init_weights(model, rng)
    # vocabulary padding ([PADn] rows the converter adds after the tokenizer's last id), as in real models
    # that pad their vocabulary (Qwen, Phi-3): zero output rows, so the logit is exactly 0 and these ids
    # never win the greedy choice (an engine must never sample them anyway)
    n_tok = 1 + max((added if spec['tokenizer'] == 'spm' else ids).values())
    if n_tok < config.vocab_size and not config.tie_word_embeddings:
        with torch.no_grad():
            model.lm_head.weight[n_tok:] = 0

    extra = {}
    if arch == 'gpt-oss':
        sd = {k: v.contiguous() for k, v in model.state_dict().items()
              if not k.endswith(('experts.gate_up_proj', 'experts.down_proj'))}
        E, H, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        ref_experts = {}
        for l in range(config.num_hidden_layers):
            p = f'model.layers.{l}.mlp.experts.'
            gb, gs, gv = mxfp4_random(rng, (E, 2 * I), H, fan_in=H)     # rows = output features
            db, ds, dv = mxfp4_random(rng, (E, H), I, fan_in=I)
            sd[p + 'gate_up_proj_blocks'], sd[p + 'gate_up_proj_scales'] = torch.from_numpy(gb), torch.from_numpy(gs)
            sd[p + 'down_proj_blocks'], sd[p + 'down_proj_scales'] = torch.from_numpy(db), torch.from_numpy(ds)
            ref_experts[p + 'gate_up_proj'] = gv.transpose(0, 2, 1)     # HF layout [E, in, out]
            ref_experts[p + 'down_proj'] = dv.transpose(0, 2, 1)
        config.quantization_config = dict(quant_method='mxfp4', modules_to_not_convert=[
            'model.layers.*.self_attn', 'model.layers.*.mlp.router', 'model.embed_tokens', 'lm_head'])
        config.save_pretrained(hf_dir)
        save_file(dict(sorted(sd.items())), str(hf_dir / 'model.safetensors'), metadata={'format': 'pt'})
    else:
        model.save_pretrained(hf_dir)
    # the reference: the checkpoint as transformers loads it (gpt-oss: MXFP4 dequantised on load)
    kw = dict(dtype=torch.float32, attn_implementation='eager')
    if arch == 'gpt-oss':
        kw['quantization_config'] = transformers.Mxfp4Config(dequantize=True)
    ref = getattr(transformers, spec['hf_class']).from_pretrained(hf_dir, **kw).eval()
    assert all(p.dtype == torch.float32 for p in ref.parameters())
    if arch == 'gpt-oss':
        got = dict(ref.named_parameters())
        for k, v in ref_experts.items():
            assert got[k].dtype == torch.float32 and np.array_equal(got[k].detach().numpy(), v), k
        extra['hf_experts_checked'] = np.array(True)
    else:
        for (k, v), (k2, v2) in zip(model.state_dict().items(), ref.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k
    hf_logits = hf_forward(ref, INPUT_IDS)
    hf_greedy_ids = hf_greedy(ref, INPUT_IDS, N_GREEDY)
    if arch == 'gpt-oss':   # llama.cpp's YaRN truncates the correction range (floor/ceil): same weights, truncate=True
        ref.config.rope_parameters['truncate'] = True
        ref.model.rotary_emb = type(ref.model.rotary_emb)(ref.config)
        extra['hf_logits_yarn_truncated'] = hf_forward(ref, INPUT_IDS)
        extra['hf_greedy_yarn_truncated'] = hf_greedy(ref, INPUT_IDS, N_GREEDY)

    if arch == 'gpt-oss' and CHECK_F32_EXPERTS:
        check_f32_experts(ref, config, hf_dir, work, llama_dir, extra['hf_logits_yarn_truncated'])

    OUT.mkdir(parents=True, exist_ok=True)
    gguf_path = OUT / f'{arch}.gguf'
    convert(llama_dir, hf_dir, gguf_path, spec.get('pre'))

    if arch == 'gpt-oss':
        check_gguf_experts(gguf_path, ref_experts, config.num_hidden_layers)
        extra['gguf_experts_checked'] = np.array(True)
    ll = run_llamacpp(gguf_path, work / f'{arch}.llamacpp.npz')
    np.savez_compressed(OUT / f'{arch}.ref.npz', input_ids=INPUT_IDS, hf_logits=hf_logits.astype(np.float32),
                        hf_greedy=hf_greedy_ids, llamacpp_logits=ll['logits'], llamacpp_greedy=ll['greedy'],
                        torch_version=np.array(torch.__version__), transformers_version=np.array(transformers.__version__),
                        llama_cpp_python_version=ll['version'], **extra)
    rel = np.abs(ll['logits'] - hf_logits).max() / np.abs(hf_logits).max()
    print(f'{arch}: gguf {gguf_path.stat().st_size} bytes; max|llama.cpp - hf| / max|hf| = {rel:.2e}; '
          f'hf greedy {hf_greedy_ids.tolist()}; llama.cpp greedy {ll["greedy"].tolist()}', flush=True)
    if 'hf_logits_yarn_truncated' in extra:
        rel_t = np.abs(ll['logits'] - extra['hf_logits_yarn_truncated']).max() / np.abs(hf_logits).max()
        print(f'{arch}: against hf with truncated YaRN: {rel_t:.2e}; hf greedy (truncated) '
              f'{extra["hf_greedy_yarn_truncated"].tolist()}', flush=True)


def check_gguf_experts(gguf_path, ref_experts, n_layers):
    "The converter's MXFP4 expert tensors, dequantised by gguf.quants, equal transformers' fp32 values."
    from gguf import GGUFReader, GGMLQuantizationType
    from gguf.quants import dequantize
    t = {x.name: x for x in GGUFReader(gguf_path).tensors}
    for l in range(n_layers):
        gu = ref_experts[f'model.layers.{l}.mlp.experts.gate_up_proj']     # [E, H, 2I]
        want = {'gate': gu[:, :, 0::2].transpose(0, 2, 1), 'up': gu[:, :, 1::2].transpose(0, 2, 1),
                'down': ref_experts[f'model.layers.{l}.mlp.experts.down_proj'].transpose(0, 2, 1)}
        for k, w in want.items():
            x = t[f'blk.{l}.ffn_{k}_exps.weight']
            assert x.tensor_type == GGMLQuantizationType.MXFP4, (x.name, x.tensor_type)
            got = dequantize(x.data, x.tensor_type).reshape(w.shape)
            assert np.array_equal(got, w), x.name


def run_llamacpp(gguf_path, tmp):
    py, why = reference_python('llama-cpp')
    if py is None: sys.exit(why)
    r = subprocess.run([str(py), __file__, '--llamacpp-part', str(gguf_path), str(tmp)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f'llama.cpp part failed for {gguf_path}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}')
    return dict(np.load(tmp))


def check_f32_experts(ref, config, hf_dir, work, llama_dir, hf_logits_truncated):
    """Diagnostic (--check-f32-experts, nothing written to the fixtures): the same gpt-oss weights with
    the experts stored as plain F32 (the converter's non-MXFP4 path), so llama.cpp does not quantise the
    activations to Q8_0 for the expert matmuls; compared with transformers using llama.cpp's YaRN."""
    from safetensors.torch import save_file
    d = work / 'orcd-synthetic-gpt-oss-f32experts'
    shutil.rmtree(d, ignore_errors=True); shutil.copytree(hf_dir, d)
    sd = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    save_file(dict(sorted(sd.items())), str(d / 'model.safetensors'), metadata={'format': 'pt'})
    cfg = json.loads((d / 'config.json').read_text()); cfg.pop('quantization_config')
    (d / 'config.json').write_text(json.dumps(cfg, indent=1))
    convert(llama_dir, d, work / 'gpt-oss-f32experts.gguf', 'gpt-4o')
    ll = run_llamacpp(work / 'gpt-oss-f32experts.gguf', work / 'f32experts.npz')
    rel = np.abs(ll['logits'] - hf_logits_truncated).max() / np.abs(hf_logits_truncated).max()
    print(f'gpt-oss diagnostic, F32 experts: max|llama.cpp - hf(truncated YaRN)| / max|hf| = {rel:.2e}', flush=True)


# ---- llama.cpp side (runs in the llama-cpp reference environment) ---------------------------------------------------------
def llamacpp_part(gguf_path, out):
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(gguf_path, n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2, n_threads_batch=2,
                logits_all=True, verbose=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    ids = [int(i) for i in INPUT_IDS]
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], np.float32)
    greedy = []
    for _ in range(N_GREEDY):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(t)
        llm.eval([t])
    np.savez(out, logits=logits, greedy=np.array(greedy, np.int64), version=np.array(llama_cpp.__version__))


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == '--llamacpp-part':
        llamacpp_part(sys.argv[2], sys.argv[3]); sys.exit()
    import torch
    torch.set_num_threads(2)
    CHECK_F32_EXPERTS = '--check-f32-experts' in sys.argv
    archs = [a for a in sys.argv[1:] if a != '--check-f32-experts'] or list(ARCHS)
    for a in archs:
        if a not in ARCHS: sys.exit(f'unknown architecture {a!r}; expected one of {list(ARCHS)}')
    with tempfile.TemporaryDirectory(prefix='orcd-synth-') as w:
        work = Path(w)
        llama_dir = extract_llamacpp(work)
        for a in archs:
            build(a, work, llama_dir)
