"""Tokenizer conformance against llama.cpp (fixtures from scripts/make_tokenizer_fixtures.py, written by
llama-cpp-python 0.3.36's tokenizer) and against the `tokenizers` library."""
import gzip, hashlib, json, re
from pathlib import Path

import pytest

from conftest import FIXTURES, real_model
from orcd import tokenizer as T
from orcd.gguf import GGUFFile

MODELS = ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct', 'gemma-3-270m']
FX_DIR = FIXTURES / 'tokenizer'


def _fixture(name):
    with gzip.open(FX_DIR / f'{name}.json.gz', 'rt', encoding='utf-8') as f: return json.load(f)


_cache = {}
def _loaded(name):
    "(GGUFFile, Tokenizer, fixture) for a real model, loaded once per session."
    if name not in _cache:
        gf = GGUFFile(real_model(name))
        _cache[name] = (gf, T.load_tokenizer(gf), _fixture(name))
    return _cache[name]


def _mismatches(fx, encode, key):
    bad = []
    for s, c in zip(fx['strings'], fx['cases']):
        got = encode(s)
        if got != c[key]: bad.append((s[:60], got[:12], c[key][:12]))
    return bad


# ---------------------------------------------------------------- ids == llama.cpp's, both modes

@pytest.mark.parametrize('name', MODELS)
def test_fixture_is_broad(name):
    fx = _fixture(name)
    S = fx['strings']
    assert len(S) >= 300 and '' in S and max(map(len, S)) == 20000
    text = ''.join(S)
    for needle in ['你好', 'مرحبا', 'नमस्ते', 'สวัสดี', '👨\u200d👩', '👍🏽', '\t\t', "'re", 'https://', '<|im_start|>',
                   '<start_of_turn>', 'def ', 'fn main', '31415926535']:
        assert needle in text, needle


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('mode', ['plain', 'special'])
def test_ids_match_llama_cpp(name, mode):
    _, tok, fx = _loaded(name)
    bad = _mismatches(fx, lambda s: tok.encode(s, add_special=True, parse_special=mode == 'special'), mode)
    assert not bad, f'{len(bad)}/{len(fx["strings"])} strings differ from llama.cpp, e.g. {bad[:3]}'


def test_spm_space_prefix_variant_matches_llama_cpp():
    "Gemma's vocabulary with add_space_prefix = true: the Phi-3 / Llama-2 SentencePiece path."
    fx = _fixture('gemma-3-270m+space-prefix')
    gf, _, _ = _loaded(fx['base'])
    tok = T.load_tokenizer(_FakeGGUF({**gf.kv, **fx['kv_overrides']}, gf.path))
    assert tok.kind == 'gguf-spm' and tok.v.add_space_prefix
    for mode in ('plain', 'special'):
        bad = _mismatches(fx, lambda s: tok.encode(s, parse_special=mode == 'special'), mode)
        assert not bad, f'{mode}: {len(bad)} strings differ from llama.cpp, e.g. {bad[:3]}'
    for s, c in zip(fx['strings'], fx['cases']):   # decode == llama_detokenize (leading space removed)
        ids = tok.encode(s, add_special=False)
        assert tok.decode(ids, special=False) == c['detok'], s[:80]
        st = tok.stream(special=False)
        assert ''.join([st.push(i) for i in ids] + [st.flush()]) == c['detok']


@pytest.mark.parametrize('name', MODELS)
def test_kind_and_special_ids(name):
    _, tok, fx = _loaded(name)
    v = fx['vocab']
    assert tok.kind == ('gguf-spm' if name.startswith('gemma') else 'gguf-bpe')
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == \
        (v['n_vocab'], v['bos'], v['eos'], v['add_bos'], v['add_eos'])
    assert tok.eot_ids == set(v['eog'])          # llama_vocab_is_eog over the whole vocabulary
    assert not tok.eot_ids & tok.padding_ids


def test_eot_and_padding_rules():
    _, q, _ = _loaded('qwen2.5-coder-0.5b-instruct')
    _, s, _ = _loaded('smollm2-135m-instruct')
    _, g, _ = _loaded('gemma-3-270m')
    vq = q.v.token_to_id
    assert {vq['<|im_end|>'], vq['<|endoftext|>']} <= q.eot_ids and vq['<|im_start|>'] not in q.eot_ids
    assert g.v.token_to_id['<end_of_turn>'] in g.eot_ids and g.v.token_to_id['<start_of_turn>'] not in g.eot_ids
    # Qwen: exactly the [PADnnn] filler tokens are never sampled
    pads = {i for i, t in enumerate(q.v.tokens) if re.fullmatch(r'\[PAD\d+\]', t)}
    assert q.padding_ids == pads and len(pads) == 271 and min(pads) == 151665
    assert s.padding_ids == set()                      # SmolLM2's pad id is <|im_end|>, an end token
    assert g.v.token_to_id['<pad>'] in g.padding_ids and g.v.token_to_id['<unused0>'] in g.padding_ids
    assert g.bos_id not in g.padding_ids and len(g.padding_ids) > 6000


@pytest.mark.parametrize('name', MODELS)
def test_token_bytes_match_llama_cpp_pieces(name):
    _, tok, fx = _loaded(name)
    for special, key in ((True, 'pieces_sha256_special'), (False, 'pieces_sha256_plain')):
        h = hashlib.sha256()
        for i in range(tok.vocab_size):
            p = tok.token_bytes(i, special)
            h.update(len(p).to_bytes(4, 'little') + p)
        assert h.hexdigest() == fx['vocab'][key], f'token_bytes(special={special}) differs from llama_token_to_piece'


# ---------------------------------------------------------------- decode and streaming

@pytest.mark.parametrize('name', MODELS)
def test_roundtrip(name):
    _, tok, fx = _loaded(name)
    n = 0
    for s, c in zip(fx['strings'], fx['cases']):
        if not c['roundtrip']: continue
        n += 1
        assert tok.decode(tok.encode(s, add_special=False)) == s, s[:80]
    assert n >= 300


@pytest.mark.parametrize('name', MODELS)
def test_stream_yields_decoded_text(name):
    _, tok, fx = _loaded(name)
    for s, c in zip(fx['strings'], fx['cases']):
        for ids in (c['plain'], c['special']):
            st = tok.stream()
            chunks = [st.push(i) for i in ids] + [st.flush()]
            assert ''.join(chunks) == tok.decode(ids), s[:80]
            for ch in chunks:
                assert '\ufffd' not in ch and not any('\ud800' <= x <= '\udfff' for x in ch), (s[:80], ch)


def test_stream_utf8_policy():
    _, q, _ = _loaded('qwen2.5-coder-0.5b-instruct')
    byte_id = lambda b: q.v.token_to_id[T.BYTE_ENCODER[b]]
    smile = '😀'.encode()
    st = q.stream()
    assert [st.push(byte_id(b)) for b in smile] == ['', '', '', '😀']       # held until complete
    assert st.push(byte_id(0xFF)) == '\ufffd'                                # never valid: replaced at once
    assert st.push(byte_id(0xE4)) == '' and st.push(q.encode('a')[0]) == '\ufffda'   # broken by 'a'
    assert st.push(byte_id(0xF0)) == '' and st.flush() == '\ufffd'          # incomplete at end of stream
    st = q.stream()
    assert st.push(byte_id(0xF0)) == '' and st.flush(incomplete='drop') == ''   # a generation cut mid-character
    with pytest.raises(ValueError, match='incomplete'): st.flush(incomplete='keep')
    assert q.decode([byte_id(b) for b in smile[:2]]) == '\ufffd'


# ---------------------------------------------------------------- chat templates

@pytest.mark.parametrize('name', ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct'])
def test_chat_template_matches_llama_cpp(name):
    _, tok, fx = _loaded(name)
    assert len(fx['chats']) >= 6
    for ch in fx['chats']:
        assert tok.apply_chat_template(ch['messages'], ch['add_generation_prompt']) == ch['text']
        assert tok.encode_chat(ch['messages'], ch['add_generation_prompt']) == ch['ids']


def test_chat_template_errors():
    _, g, _ = _loaded('gemma-3-270m')
    with pytest.raises(T.ChatTemplateError, match='no chat template'):
        g.encode_chat([{'role': 'user', 'content': 'hi'}])
    _, q, _ = _loaded('qwen2.5-coder-0.5b-instruct')
    with pytest.raises(T.ChatTemplateError, match='messages must be'):
        q.apply_chat_template('hi')
    bad = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(T.ChatTemplateError, match='roles must alternate'):
        T.render_chat_template(q, [{'role': 'user', 'content': 'x'}], template=bad)
    with pytest.raises(T.ChatTemplateError, match='TemplateSyntaxError'):
        T.render_chat_template(q, [{'role': 'user', 'content': 'x'}], template='{% for %}')
    # the sandbox: templates cannot reach Python internals
    with pytest.raises(T.ChatTemplateError, match='SecurityError'):
        T.render_chat_template(q, [], template="{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_bos_written_by_template_is_not_doubled():
    _, g, _ = _loaded('gemma-3-270m')
    g2 = T.load_tokenizer(_loaded('gemma-3-270m')[0])
    g2.chat_template = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    ids = g2.encode_chat([{'role': 'user', 'content': 'hi'}], add_generation_prompt=False)
    assert ids[0] == g.bos_id and ids[1] == g.v.token_to_id['<start_of_turn>']


# ---------------------------------------------------------------- hf-json through the tokenizers library

def _write_tokenizer_json(gf, pre_tokenizer, path):
    "A tokenizer.json built with the `tokenizers` library from the GGUF's own vocabulary and merges."
    from tokenizers import AddedToken, Tokenizer, decoders, models
    kv = gf.kv
    tokens = list(kv['tokenizer.ggml.tokens'])
    types = T.GGUFVocab(kv).types   # after llama.cpp's corrections (e.g. Qwen's '</s>' is CONTROL there)
    merges = [tuple(m.split(' ', 1)) for m in kv['tokenizer.ggml.merges']]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, y in zip(tokens, types) if y == 3])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, y in zip(tokens, types) if y == 4])
    tk.save(str(path))
    return path


@pytest.mark.parametrize('name', ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct'])
def test_hf_json_matches_llama_cpp(name, tmp_path):
    from tokenizers import Regex, pre_tokenizers as P
    gf, ref, fx = _loaded(name)
    if name.startswith('qwen'):   # Qwen2's tokenizer.json pre-tokenizer (regex as Hugging Face writes it)
        pre = P.Sequence([P.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), 'isolated'),
                          P.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:                         # SmolLM2's
        pre = P.Sequence([P.Digits(individual_digits=True), P.ByteLevel(add_prefix_space=False, use_regex=True)])
    path = _write_tokenizer_json(gf, pre, tmp_path / 'tokenizer.json')
    tok = T.load_tokenizer(gf, tokenizer_json=str(path))
    assert tok.kind == 'hf-json' and tok.vocab_size == ref.vocab_size
    assert (tok.bos_id, tok.eos_id, tok.eot_ids, tok.padding_ids) == (ref.bos_id, ref.eos_id, ref.eot_ids, ref.padding_ids)
    for mode in ('plain', 'special'):
        bad = _mismatches(fx, lambda s: tok.encode(s, parse_special=mode == 'special'), mode)
        assert not bad, f'{mode}: {len(bad)} strings differ from llama.cpp, e.g. {bad[:3]}'
    for s, c in zip(fx['strings'][:120], fx['cases']):
        assert tok.decode(c['plain']) == ref.decode(c['plain'])
        st = tok.stream()
        assert ''.join([st.push(i) for i in c['special']] + [st.flush()]) == ref.decode(c['special'])


def test_hf_json_beside_the_model(tmp_path, capsys):
    from tokenizers import pre_tokenizers as P
    gf, _, fx = _loaded('smollm2-135m-instruct')
    model = tmp_path / 'm.gguf'
    model.symlink_to(gf.path)
    _write_tokenizer_json(gf, P.ByteLevel(add_prefix_space=False), tmp_path / 'm.tokenizer.json')
    tok = T.load_tokenizer(GGUFFile(model))
    assert tok.kind == 'hf-json' and tok.path.name == 'm.tokenizer.json'
    assert tok.encode('Hello world') == fx['cases'][fx['strings'].index('Hello world')]['plain']
    from orcd.cli import main
    assert main(['tokenize', str(gf.path), 'Hello world', '--json', '--tokenizer', str(tmp_path / 'm.tokenizer.json')]) == 0
    assert json.loads(capsys.readouterr().out)['ids'] == tok.encode('Hello world')
    with pytest.raises(FileNotFoundError, match='nope.json'):
        T.load_tokenizer(gf, tokenizer_json=str(tmp_path / 'nope.json'))


def test_hf_json_sentencepiece_style_pieces(tmp_path):
    "A non-byte-level tokenizer.json (SentencePiece style): '▁' is a space, <0xNN> a byte."
    from tokenizers import Tokenizer, decoders, models, normalizers
    vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, '▁a': 3, 'b': 4, **{f'<0x{b:02X}>': 5 + b for b in range(256)},
             '▁': 261, 'a': 262}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[('▁', 'a')], unk_token='<unk>', byte_fallback=True))
    tk.normalizer = normalizers.Replace(' ', '▁')
    tk.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens(['</s>'])   # '<s>' only in the model vocabulary: the GGUF type says it is CONTROL
    tk.save(str(tmp_path / 't.json'))
    toks = list(vocab)
    kv = {'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': toks, 'tokenizer.ggml.scores': [0.0] * len(toks),
          'tokenizer.ggml.token_type': [2, 3, 3, 1, 1] + [6] * 256 + [1, 1], 'tokenizer.ggml.add_space_prefix': False}
    tok = T.load_tokenizer(_FakeGGUF(kv), tokenizer_json=str(tmp_path / 't.json'))
    assert tok.kind == 'hf-json' and tok.add_bos and tok.bos_id == 1
    ids = tok.encode(' ab€')
    assert ids[:3] == [1, 3, 4] and ids[3:] == [5 + b for b in '€'.encode()]
    assert tok.decode(ids, special=False) == ' ab€' and tok.decode(ids) == '<s> ab€'
    assert tok.token_bytes(5 + 0x41) == b'A' and tok.token_bytes(2, special=False) == b'' and tok.token_bytes(2) == b'</s>'
    spm = T.load_tokenizer(_FakeGGUF(kv))            # the same vocabulary through gguf-spm
    assert spm.kind == 'gguf-spm' and spm.encode(' ab€') == ids and spm.decode(ids) == '<s> ab€'


# ---------------------------------------------------------------- pre-tokenizers and errors

def _hf_split(pattern, s):
    from tokenizers import Regex, pre_tokenizers as P
    return [p for p, _ in P.Split(Regex(pattern), 'isolated').pre_tokenize_str(s)]


@pytest.mark.parametrize('pre,hf_pattern,ascii_only', [
    ('llama-bpe', r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", False),
    ('qwen2', r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", False),
    ('gpt2', r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", False),
    # o200k's original pattern; llama.cpp rewrites the case classes for std::regex, equal on ASCII text
    ('gpt-4o', r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+", True),
])
def test_pre_tokenizer_regexes_agree_with_tokenizers_library(pre, hf_pattern, ascii_only):
    fx = _fixture('qwen2.5-coder-0.5b-instruct')
    pats = T._compile(T.PRE_TOKENIZERS[pre][0])
    n = 0
    for s in fx['strings']:
        if ascii_only and not s.isascii(): continue
        n += 1
        assert T.pre_split(s, pats) == _hf_split(hf_pattern, s), s[:80]
    assert n > 100


def test_default_and_smollm_pre_split_are_lossless():
    fx = _fixture('smollm2-135m-instruct')
    for pre in ('default', 'smollm', 'gpt-4o'):
        pats = T._compile(T.PRE_TOKENIZERS[pre][0])
        for s in fx['strings']:
            assert ''.join(T.pre_split(s, pats)) == s
    assert T.pre_split('a 1234 5', T._compile(T.PRE_TOKENIZERS['default'][0])) == ['a', ' ', '123', '4', ' ', '5']


class _FakeGGUF:
    def __init__(self, kv, path='fake.gguf'): self.kv, self.path = kv, Path(path)


def _tiny_bpe_kv(**over):
    toks = [T.BYTE_ENCODER[b] for b in range(256)] + ['ab', '<|end|>']
    kv = {'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'gpt2', 'tokenizer.ggml.tokens': toks,
          'tokenizer.ggml.token_type': [1] * 257 + [3], 'tokenizer.ggml.merges': ['a b'],
          'tokenizer.ggml.eos_token_id': 257}
    kv.update(over)
    return kv


def test_errors_name_the_cause():
    with pytest.raises(T.UnknownPreTokenizerError, match=r"tokenizer.ggml.pre = 'klingon'.*qwen2"):
        T.load_tokenizer(_FakeGGUF(_tiny_bpe_kv(**{'tokenizer.ggml.pre': 'klingon'})))
    with pytest.raises(ValueError, match="unsupported tokenizer.ggml.model = 'bert'"):
        T.load_tokenizer(_FakeGGUF(_tiny_bpe_kv(**{'tokenizer.ggml.model': 'bert'})))
    with pytest.raises(ValueError, match='no tokenizer.ggml.tokens'):
        T.load_tokenizer(_FakeGGUF({'tokenizer.ggml.model': 'gpt2'}))
    kv = _tiny_bpe_kv(); del kv['tokenizer.ggml.merges']
    with pytest.raises(ValueError, match='without tokenizer.ggml.merges'):
        T.load_tokenizer(_FakeGGUF(kv))
    tok = T.load_tokenizer(_FakeGGUF(_tiny_bpe_kv()))
    with pytest.raises(TypeError): tok.encode(b'bytes')
    with pytest.raises(ValueError, match='lone surrogate U\\+D800 at position 1'): tok.encode('a\ud800')
    with pytest.raises(IndexError, match='out of range'): tok.token_bytes(10**6)


def test_gpt_oss_end_rules():
    "o200k_harmony: <|return|> and <|call|> end a generation, <|end|> (end of a message) does not."
    extra = ['<|return|>', '<|call|>', '<|end|>', '<|start|>', '<|channel|>', '<|message|>', '<|endoftext|>']
    kv = _tiny_bpe_kv(**{'tokenizer.ggml.pre': 'gpt-4o',
                         'tokenizer.ggml.tokens': _tiny_bpe_kv()['tokenizer.ggml.tokens'][:257] + extra,
                         'tokenizer.ggml.token_type': [1] * 257 + [3] * len(extra),
                         'tokenizer.ggml.eos_token_id': 257 + extra.index('<|return|>')})
    tok = T.load_tokenizer(_FakeGGUF(kv))
    ids = {t: 257 + k for k, t in enumerate(extra)}
    assert tok.eot_ids == {ids['<|return|>'], ids['<|call|>'], ids['<|endoftext|>']}
    # channel markers are always rendered and matched (llama.cpp makes them USER_DEFINED)
    assert tok.encode('<|channel|>analysis') [0] == ids['<|channel|>']
    assert tok.decode([ids['<|channel|>'], ids['<|end|>'], ids['<|return|>']], special=False) == '<|channel|><|end|>'


def test_every_named_pre_tokenizer_loads_and_encodes():
    for pre in ('qwen2', 'smollm', 'llama-bpe', 'gpt-4o', 'gpt2', 'gpt-2', 'default'):
        tok = T.load_tokenizer(_FakeGGUF(_tiny_bpe_kv(**{'tokenizer.ggml.pre': pre})))
        ids = tok.encode("abc d'll 12<|end|>", parse_special=True)
        assert 256 in ids and ids[-1] == 257 and tok.decode(ids) == "abc d'll 12<|end|>"
        assert 257 in tok.eot_ids


def test_long_words_use_the_heap_path_identically():
    _, q, fx = _loaded('qwen2.5-coder-0.5b-instruct')
    n = 0
    for s in fx['strings'][:200]:
        for w in T.pre_split(s, q._pats):
            syms = [T.BYTE_ENCODER[b] for b in w.encode()]
            if len(syms) < 8: continue
            n += 1
            assert T._bpe_merge_heap(list(syms), q._ranks) == T._bpe_merge_scan(list(syms), q._ranks), w
    assert n > 50
    word = 'ภาษาไทยไม่มีช่องว่างระหว่างคำ' * 3   # one long \p{L} run: > 32 symbols, heap path in encode
    assert q.decode(q.encode(word)) == word


# ---------------------------------------------------------------- the command line, in-process

def test_cli_tokenize(capsys):
    from orcd.cli import main
    _, _, fx = _loaded('smollm2-135m-instruct')
    path = str(real_model('smollm2-135m-instruct'))
    s = '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
    c = fx['cases'][fx['strings'].index(s)]
    assert main(['tokenize', path, s, '--json']) == 0
    r = json.loads(capsys.readouterr().out)
    assert r['ids'] == c['plain'] and ''.join(r['pieces']) == s    # the pieces of the plain ids spell the text
    assert main(['tokenize', 'smollm2-135m-instruct', s, '--json', '--special']) == 0
    r = json.loads(capsys.readouterr().out)
    assert r['ids'] == c['special'] and r['pieces'][0] == '<|im_start|>' and ''.join(r['pieces']) == s
    assert main(['tokenize', path, s, '--special']) == 0           # one line per token: id, then the piece's repr
    lines = capsys.readouterr().out.splitlines()
    assert [int(l.split()[0]) for l in lines] == c['special'] and lines[0].split(None, 1)[1] == repr('<|im_start|>')
    assert main(['tokenize', path, 'é', '--json']) == 0              # a character split over byte tokens shows its bytes
    r = json.loads(capsys.readouterr().out)
    assert ''.join(r['pieces']).encode('latin-1', 'backslashreplace').decode('unicode_escape').encode('latin-1') == 'é'.encode() \
        or ''.join(r['pieces']) == 'é'
    assert main(['tokenize', '/no/such/model.gguf', 'x']) == 1
    err = capsys.readouterr().err
    assert err.startswith('orcd tokenize: error: ') and 'no such file' in err
