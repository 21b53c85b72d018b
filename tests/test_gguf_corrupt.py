"""A corruption corpus for orcd.gguf: every malformed file raises the intended GGUFError subclass with a
message naming the cause; random byte flips let nothing but GGUFError escape.

The synthetic files come from a small hand-written GGUF encoder (`G` below) that knows where each field
lies; it is checked byte for byte against gguf-py's GGUFWriter, so the corpus starts from a file that
llama.cpp's own writer would produce. Real-file corruptions patch a per-session copy of SmolLM2, with
field positions found by searching the bytes for key and tensor names."""
import os, shutil, struct
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as VT, GGMLQuantizationType as QT
from hypothesis import HealthCheck, given, settings, strategies as st

import orcd.gguf as G_
from orcd.gguf import (GGUFFile, GGUFError, GGUFTruncatedError, GGUFMagicError, GGUFVersionError, GGUFLimitError,
                       GGUFValueTypeError, GGUFTensorTypeError, GGUFShapeError, GGUFOffsetError, GGUFAlignmentError,
                       GGUFOverlapError, GGUFDuplicateError, GGUFEncodingError, GGUFMetadataError,
                       UnsupportedArchitectureError, format_inspect)
from conftest import real_model

FMT = {VT.UINT8: '<B', VT.INT8: '<b', VT.UINT16: '<H', VT.INT16: '<h', VT.UINT32: '<I', VT.INT32: '<i',
       VT.FLOAT32: '<f', VT.BOOL: '<?', VT.UINT64: '<Q', VT.INT64: '<q', VT.FLOAT64: '<d'}


def _s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack('<Q', len(b)) + b


def _val(vt, v):
    if vt == VT.STRING: return _s(v)
    if vt == VT.ARRAY:
        it, items = v
        return struct.pack('<IQ', it, len(items)) + b''.join(_val(it, x) for x in items)
    return struct.pack(FMT[vt], v)


class G:
    "A tiny independent GGUF encoder that records where every field lies (`off[...]`)."
    def __init__(self, alignment=32):
        self.magic, self.version, self.alignment = b'GGUF', 3, alignment
        self.kv, self.tensors, self.n_kv, self.n_tensors = [], [], None, None

    def add_kv(self, key, vt, v): self.kv.append((key, vt, v)); return self
    def add_tensor(self, name, dims, t, data, offset=None): self.tensors.append([name, list(dims), t, data, offset]); return self

    def build(self):
        out, off = bytearray(), {}
        out += self.magic + struct.pack('<I', self.version)
        off['n_tensors'] = len(out); out += struct.pack('<Q', len(self.tensors) if self.n_tensors is None else self.n_tensors)
        off['n_kv'] = len(out); out += struct.pack('<Q', len(self.kv) if self.n_kv is None else self.n_kv)
        off['kv'] = len(out)
        for key, vt, v in self.kv:
            off[f'kv:{key}'] = len(out); out += _s(key)
            off[f'type:{key}'] = len(out); out += struct.pack('<I', vt)
            off[f'val:{key}'] = len(out); out += _val(vt, v)
        off['ti'] = len(out)
        rel = 0
        for i, (name, dims, t, data, offset) in enumerate(self.tensors):
            if offset is None: offset = rel
            if offset < 1 << 20:  # a lying offset far away gets no data (and no huge buffer)
                rel = max(rel, offset + -(-len(data) // self.alignment) * self.alignment)
            self.tensors[i][4] = offset
            off[f'ti:{i}'] = len(out); out += _s(name)
            off[f'ndims:{i}'] = len(out); out += struct.pack('<I', len(dims))
            off[f'dims:{i}'] = len(out); out += b''.join(struct.pack('<Q', d) for d in dims)
            off[f'ttype:{i}'] = len(out); out += struct.pack('<I', t)
            off[f'offset:{i}'] = len(out); out += struct.pack('<Q', offset)
        off['ti_end'] = len(out)
        out += b'\0' * (-len(out) % self.alignment)
        off['data'] = len(out)
        data = bytearray(rel)
        for i, (name, dims, t, d, offset) in enumerate(self.tensors):
            if offset < 1 << 20: data[offset:offset + len(d)] = d; off[f'end:{i}'] = off['data'] + offset + len(d)
        out += data
        return bytes(out), off


RNG = np.random.default_rng(0)
EMB = RNG.standard_normal((4, 64)).astype(np.float32)           # numpy (rows, contiguous) -> GGUF [64, 4]
NORM = np.ones(64, dtype=np.float32)
Q8 = gguf.quants.quantize(RNG.standard_normal((2, 64)).astype(np.float32), QT.Q8_0)  # (2, 68) uint8
TOKENS = ['<s>', 'a', 'b', 'ab', 'é']


def base():
    "The valid synthetic model (llama) every corruption starts from."
    g = G()
    g.add_kv('general.architecture', VT.STRING, 'llama')
    g.add_kv('general.name', VT.STRING, 'corpus')
    for k, v in (('block_count', 1), ('context_length', 64), ('embedding_length', 64), ('feed_forward_length', 128),
                 ('attention.head_count', 4), ('attention.head_count_kv', 2)):
        g.add_kv(f'llama.{k}', VT.UINT32, v)
    g.add_kv('llama.attention.layer_norm_rms_epsilon', VT.FLOAT32, 1e-5)
    g.add_kv('llama.rope.freq_base', VT.FLOAT32, 10000.0)
    g.add_kv('general.flag', VT.BOOL, True)
    g.add_kv('tokenizer.ggml.model', VT.STRING, 'gpt2')
    g.add_kv('tokenizer.ggml.tokens', VT.ARRAY, (VT.STRING, TOKENS))
    g.add_kv('tokenizer.ggml.token_type', VT.ARRAY, (VT.INT32, [1] * len(TOKENS)))
    g.add_tensor('token_embd.weight', [64, 4], QT.F32, EMB.tobytes())
    g.add_tensor('output_norm.weight', [64], QT.F32, NORM.tobytes())
    g.add_tensor('blk.0.attn_q.weight', [64, 2], QT.Q8_0, Q8.tobytes())
    return g


def gguf_writer_bytes(path):
    "The same model written by gguf-py's GGUFWriter."
    w = gguf.GGUFWriter(str(path), 'llama')
    w.add_name('corpus')
    w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(64); w.add_feed_forward_length(128)
    w.add_head_count(4); w.add_head_count_kv(2); w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
    w.add_bool('general.flag', True)
    w.add_tokenizer_model('gpt2'); w.add_token_list(TOKENS); w.add_token_types([1] * len(TOKENS))
    w.add_tensor('token_embd.weight', EMB); w.add_tensor('output_norm.weight', NORM)
    w.add_tensor('blk.0.attn_q.weight', Q8, raw_dtype=QT.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return Path(path).read_bytes()


def test_encoder_matches_gguf_writer(tmp_path):
    data, _ = base().build()
    assert data == gguf_writer_bytes(tmp_path / 'w.gguf')


def _write(tmp_path, data, name='c.gguf'):
    p = tmp_path / name; p.write_bytes(data); return p


def test_base_is_valid(tmp_path):
    with GGUFFile(_write(tmp_path, base().build()[0])) as gf:
        assert list(gf.tensors) == ['token_embd.weight', 'output_norm.weight', 'blk.0.attn_q.weight']
        assert gf.kv['tokenizer.ggml.tokens'] == TOKENS and gf.kv['general.flag'] is True
        assert (gf.raw('token_embd.weight').view(np.float32).reshape(4, 64) == EMB).all()
        assert (gf.raw('blk.0.attn_q.weight') == Q8.ravel()).all()
        assert gf.metadata.n_layers == 1


def patch(data, at, fmt, value):
    b = bytearray(data); struct.pack_into(fmt, b, at, value); return bytes(b)


def poke(data, at, new: bytes):
    b = bytearray(data); b[at:at + len(new)] = new; return bytes(b)


def mod(fn):
    "A corruption built by editing the encoder's model before encoding."
    def make():
        g = base(); fn(g); return g.build()[0]
    return make


def bytepatch(fn):
    "A corruption made by patching the encoded bytes (fn(data, offsets) -> bytes)."
    def make():
        data, off = base().build(); return fn(data, off)
    return make


def _dup_tensor(g): g.tensors[1][0] = 'token_embd.weight'
def _dup_key(g): g.kv.insert(3, ('general.name', VT.STRING, 'again'))
def _overlap(g): g.tensors[1][4] = 32  # inside token_embd's 1024 bytes
def _nested(g): g.kv.append(('x.nested', VT.ARRAY, (VT.ARRAY, [])))
def _set_type(i, t): return lambda g: g.tensors[i].__setitem__(2, t)
def _set_dims(i, dims): return lambda g: g.tensors[i].__setitem__(1, dims)
def _set_offset(i, o): return lambda g: g.tensors[i].__setitem__(4, o)
def _set_align(vt, v): return lambda g: g.kv.append(('general.alignment', vt, v))


# (id, factory, expected class, message fragment). Each is a distinct way a file can be wrong.
CORPUS = [
    # header
    ('bad-magic', bytepatch(lambda d, o: poke(d, 0, b'GGUG')), GGUFMagicError, "expected b'GGUF', found b'GGUG'"),
    ('ggml-magic', bytepatch(lambda d, o: poke(d, 0, b'ggml')), GGUFMagicError, 'not a GGUF file'),
    ('version-1', bytepatch(lambda d, o: patch(d, 4, '<I', 1)), GGUFVersionError, 'GGUF v1'),
    ('version-4', bytepatch(lambda d, o: patch(d, 4, '<I', 4)), GGUFVersionError, '4: unknown version'),
    ('big-endian', bytepatch(lambda d, o: patch(d, 4, '>I', 3)), GGUFVersionError, 'big-endian'),
    ('tensor-count-billions', bytepatch(lambda d, o: patch(d, o['n_tensors'], '<Q', 3_000_000_000)), GGUFLimitError, 'tensor count at byte 8: 3000000000 exceeds'),
    ('kv-count-billions', bytepatch(lambda d, o: patch(d, o['n_kv'], '<Q', 2**62)), GGUFLimitError, 'kv count at byte 16'),
    ('counts-beyond-file', bytepatch(lambda d, o: patch(d, o['n_tensors'], '<Q', 5000)), GGUFTruncatedError, 'need at least'),
    ('kv-count-too-high', bytepatch(lambda d, o: patch(d, o['n_kv'], '<Q', 20)), GGUFError, ''),
    # key-value section
    ('key-length-past-eof', bytepatch(lambda d, o: patch(d, o['kv:general.name'], '<Q', 2**40)), GGUFTruncatedError, 'key of KV #1'),
    ('string-value-past-eof', bytepatch(lambda d, o: patch(d, o['val:general.name'], '<Q', 10**9)), GGUFTruncatedError, "key 'general.name'"),
    ('array-length-billions', bytepatch(lambda d, o: patch(d, o['val:tokenizer.ggml.tokens'] + 4, '<Q', 3 * 10**9)), GGUFLimitError, 'array length 3000000000 exceeds'),
    ('string-array-cannot-fit', bytepatch(lambda d, o: patch(d, o['val:tokenizer.ggml.tokens'] + 4, '<Q', 10**6)), GGUFTruncatedError, 'array of 1000000 STRING items'),
    ('int-array-cannot-fit', bytepatch(lambda d, o: patch(d, o['val:tokenizer.ggml.token_type'] + 4, '<Q', 10**5)), GGUFTruncatedError, 'array of 100000 INT32 items'),
    ('array-item-past-eof', bytepatch(lambda d, o: patch(d, o['val:tokenizer.ggml.tokens'] + 12 + 8 + 3, '<Q', 2**33)), GGUFTruncatedError, "tokenizer.ggml.tokens'[1]"),
    ('unknown-value-type', bytepatch(lambda d, o: patch(d, o['type:general.name'], '<I', 13)), GGUFValueTypeError, 'unknown value type 13'),
    ('unknown-array-item-type', bytepatch(lambda d, o: patch(d, o['val:tokenizer.ggml.tokens'], '<I', 99)), GGUFValueTypeError, 'unknown array item type 99'),
    ('nested-array', mod(_nested), GGUFValueTypeError, 'arrays of arrays'),
    ('non-utf8-key', bytepatch(lambda d, o: poke(d, o['kv:general.name'] + 8, b'\xff')), GGUFEncodingError, 'key of KV #1'),
    ('non-utf8-string', bytepatch(lambda d, o: poke(d, o['val:general.name'] + 8, b'\xc3\x28')), GGUFEncodingError, "key 'general.name'"),
    ('non-utf8-array-item', bytepatch(lambda d, o: poke(d, o['val:tokenizer.ggml.tokens'] + 12 + 8 + 3 + 8, b'\x80')), GGUFEncodingError, "tokens'[1]"),
    ('duplicate-key', mod(_dup_key), GGUFDuplicateError, "key 'general.name'"),
    ('key-longer-than-limit', mod(lambda g: g.kv.append(('k' * 70000, VT.UINT8, 1))), GGUFLimitError, 'string length 70000 exceeds the limit 65536'),
    ('alignment-not-power-of-two', mod(_set_align(VT.UINT32, 48)), GGUFAlignmentError, '48 is not a power of two'),
    ('alignment-zero', mod(_set_align(VT.UINT32, 0)), GGUFAlignmentError, '0 is not a power of two'),
    ('alignment-string', mod(_set_align(VT.STRING, '32')), GGUFAlignmentError, 'must be an integer'),
    # tensor descriptions
    ('tensor-name-past-eof', bytepatch(lambda d, o: patch(d, o['ti:1'], '<Q', 2**50)), GGUFTruncatedError, 'name of tensor #1'),
    ('non-utf8-tensor-name', bytepatch(lambda d, o: poke(d, o['ti:1'] + 8, b'\xfe')), GGUFEncodingError, 'name of tensor #1'),
    ('n-dims-0', mod(_set_dims(1, [])), GGUFShapeError, '0 dimensions'),
    ('n-dims-5', mod(_set_dims(1, [2, 2, 2, 2, 4])), GGUFShapeError, '5 dimensions'),
    ('zero-dim', mod(_set_dims(0, [64, 0])), GGUFShapeError, 'dimension 1 is zero'),
    ('negative-dim', mod(_set_dims(0, [64, 2**64 - 4])), GGUFShapeError, 'negative (-4 as int64)'),
    ('dim-not-multiple-of-block', mod(_set_dims(2, [48, 2])), GGUFShapeError, 'not a multiple of the block size 32 of Q8_0'),
    ('unknown-tensor-type', mod(_set_type(1, 99)), GGUFTensorTypeError, 'unknown ggml type 99'),
    ('unsupported-tensor-type', mod(_set_type(1, int(QT.IQ2_XXS))), GGUFTensorTypeError, 'IQ2_XXS (16) is not supported'),
    ('shape-larger-than-file', mod(_set_dims(0, [64, 2**40])), GGUFTruncatedError, "tensor 'token_embd.weight'"),
    ('offset-past-eof', mod(_set_offset(2, 2**40)), GGUFOffsetError, 'offset 1099511627776 is beyond'),
    ('offset-misaligned', mod(_set_offset(2, 1024 + 256 + 4)), GGUFAlignmentError, 'not a multiple of the alignment 32'),
    ('overlapping-tensors', mod(_overlap), GGUFOverlapError, "overlaps tensor 'token_embd.weight'"),
    ('duplicate-tensor-name', mod(_dup_tensor), GGUFDuplicateError, "tensor 'token_embd.weight'"),
    # metadata (valid container, unusable model)
    ('unsupported-architecture', bytepatch(lambda d, o: poke(d, o['val:general.architecture'] + 8, b'mamba')), UnsupportedArchitectureError, "'mamba' is not supported"),
    ('architecture-wrong-type', bytepatch(lambda d, o: patch(d, o['type:general.architecture'], '<I', 4)), GGUFError, ''),
    ('block-count-missing', bytepatch(lambda d, o: poke(d, o['kv:llama.block_count'] + 8, b'x')), GGUFMetadataError, "'llama.block_count'"),
    ('head-count-zero', bytepatch(lambda d, o: patch(d, o['val:llama.attention.head_count'], '<I', 0)), GGUFMetadataError, 'below the minimum 1'),
    ('kv-heads-do-not-divide', bytepatch(lambda d, o: patch(d, o['val:llama.attention.head_count_kv'], '<I', 3)), GGUFMetadataError, 'do not divide'),
    ('context-wrong-type', bytepatch(lambda d, o: patch(d, o['type:llama.context_length'], '<I', int(VT.FLOAT32))), GGUFMetadataError, 'expected int, found float'),
]
# truncation at each section boundary (and inside sections)
_TRUNC = [('empty', lambda o: 0), ('mid-magic', lambda o: 2), ('after-magic', lambda o: 4), ('after-version', lambda o: 8),
          ('mid-counts', lambda o: 12), ('after-counts', lambda o: o['kv']), ('mid-key', lambda o: o['kv:general.name'] + 10),
          ('before-value-type', lambda o: o['type:general.name']), ('mid-array', lambda o: o['val:tokenizer.ggml.tokens'] + 30),
          ('after-kv', lambda o: o['ti']), ('mid-tensor-info', lambda o: o['dims:1'] + 3), ('after-tensor-info', lambda o: o['ti_end']),
          ('before-data', lambda o: o['data'] - 1), ('at-data', lambda o: o['data']), ('mid-data', lambda o: o['data'] + 700),
          ('last-tensor-one-byte-short', lambda o: o['end:2'] - 1)]
for _n, _f in _TRUNC:
    CORPUS.append((f'truncated-{_n}', bytepatch(lambda d, o, _f=_f: d[:_f(o)]), GGUFTruncatedError, 'at byte'))


def _open_all(path):
    with GGUFFile(path) as gf:
        gf.metadata; format_inspect(gf)


@pytest.mark.parametrize('name,make,cls,fragment', CORPUS, ids=[c[0] for c in CORPUS])
def test_corruption(tmp_path, name, make, cls, fragment):
    data = make()
    assert data != base().build()[0]
    p = _write(tmp_path, data)
    with pytest.raises(cls) as ei: _open_all(p)
    msg = str(ei.value)
    assert msg.startswith(f'{p}: ') and fragment in msg, msg
    assert ei.value.path == str(p)


def test_corpus_is_large_and_distinct():
    assert len({c[0] for c in CORPUS}) == len(CORPUS) >= 30
    assert len({c[1]() for c in CORPUS}) == len(CORPUS)  # distinct files, not the same bytes under two names


def test_version_2_is_read_like_3(tmp_path):
    data, _ = base().build()
    with GGUFFile(_write(tmp_path, patch(data, 4, '<I', 2))) as gf:
        assert gf.version == 2 and gf.metadata.n_layers == 1 and len(gf.tensors) == 3


@pytest.mark.parametrize('at,value', [('n_tensors', 2**16), ('n_kv', 2**16), ('val:tokenizer.ggml.tokens+4', 2**25),
                                      ('val:tokenizer.ggml.token_type+4', 2**25), ('val:general.name', 2**27),
                                      ('ti:1', 2**16), ('dims:0', 2**40)])
def test_lying_counts_allocate_nothing(tmp_path, at, value):
    "Counts and lengths at their limits in a 2 KB file: refused before any allocation grows (tracemalloc peak)."
    import tracemalloc
    data, off = base().build()
    key, _, plus = at.partition('+')
    p = _write(tmp_path, patch(data, off[key] + int(plus or 0), '<Q', value))
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError): _open_all(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_zero_tensor_file_is_valid(tmp_path):
    g = base(); g.tensors = []
    with GGUFFile(_write(tmp_path, g.build()[0])) as gf:
        assert gf.tensors == {} and gf.metadata.vocab_size == len(TOKENS)


def test_custom_alignment_is_honoured(tmp_path):
    g = base(); g.alignment = 64; g.add_kv('general.alignment', VT.UINT32, 64)
    data, off = g.build()
    with GGUFFile(_write(tmp_path, data)) as gf:
        assert gf.alignment == 64 and gf.data_offset == off['data'] and all(t.offset % 64 == 0 for t in gf.tensors.values())
    g = base(); g.add_kv('general.alignment', VT.UINT32, 64); g.tensors[2][4] = 1312  # declared 64, laid out for 32
    with pytest.raises(GGUFAlignmentError, match='alignment 64'): GGUFFile(_write(tmp_path, g.build()[0], 'b.gguf'))


def test_empty_and_non_regular_files(tmp_path):
    with pytest.raises(GGUFTruncatedError, match='the file is empty'): GGUFFile(_write(tmp_path, b''))
    with pytest.raises(GGUFError, match='not a regular file'): GGUFFile(tmp_path)
    with pytest.raises(FileNotFoundError): GGUFFile(tmp_path / 'absent.gguf')


# ---- random byte flips: nothing but GGUFError escapes, nothing hangs ----

_BASE = base().build()[0]
_FUZZ_DIR = None


def _fuzz_path():
    global _FUZZ_DIR
    if _FUZZ_DIR is None:
        import tempfile; _FUZZ_DIR = Path(tempfile.mkdtemp(prefix='orcd-fuzz-'))
    return _FUZZ_DIR / 'f.gguf'


def _exercise(path):
    import time
    t = time.perf_counter()
    try:
        _exercise_(path)
    finally:
        assert time.perf_counter() - t < 5, 'one small file took more than 5 s'


def _exercise_(path):
    try:
        with GGUFFile(path) as gf:
            try:
                gf.metadata; format_inspect(gf)
            except GGUFMetadataError: pass
            for name in gf.tensors: gf.raw(name).sum()
    except GGUFError: pass


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(flips=st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(_BASE))))
def test_fuzz_byte_flips(flips, cut):
    b = bytearray(_BASE)
    for i, v in flips: b[i] = v
    if cut is not None: b = b[:cut]
    p = _fuzz_path(); p.write_bytes(bytes(b))
    _exercise(p)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(words=st.lists(st.tuples(st.integers(0, len(_BASE) - 8), st.sampled_from(
    [0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 10**9, 10**12, 5, 64])), min_size=1, max_size=3))
def test_fuzz_lying_integers(words):
    "Header words overwritten with hostile integers (lengths, counts, offsets) at random positions."
    b = bytearray(_BASE)
    for i, v in words: struct.pack_into('<Q', b, i, v)
    p = _fuzz_path(); p.write_bytes(bytes(b))
    _exercise(p)


def test_every_key_with_every_value_type():
    "Type confusion: each key's type code replaced by each of the 13 types (and two unknown ones)."
    data, off = base().build()
    keys = [k[5:] for k in off if k.startswith('type:')]
    outcomes = set()
    for k in keys:
        for vt in [*range(13), 13, 2**32 - 1]:
            p = _fuzz_path(); p.write_bytes(patch(data, off[f'type:{k}'], '<I', vt))
            try:
                with GGUFFile(p) as gf: gf.metadata; format_inspect(gf)
                outcomes.add('ok')
            except GGUFError as e: outcomes.add(type(e).__name__)
    assert {'ok', 'GGUFValueTypeError', 'GGUFMetadataError'} <= outcomes


# ---- corruptions of a real file: a per-session copy of SmolLM2, patched and restored ----

@pytest.fixture(scope='module')
def smol(tmp_path_factory):
    """A copy of SmolLM2 and the byte positions of the fields we patch, found by searching the bytes for
    the key and tensor names (so the positions do not come from the parser under test)."""
    src = real_model('smollm2-135m-instruct')
    dst = tmp_path_factory.mktemp('real') / 'smol.gguf'
    shutil.copyfile(src, dst)
    head = open(src, 'rb').read(4 << 20)
    def key(k):
        at = head.index(struct.pack('<Q', len(k)) + k.encode()); return at, at + 8 + len(k) + 4  # key, value
    arch_key, arch_val = key('general.architecture')
    tok_key, tok_val = key('tokenizer.ggml.tokens')
    assert struct.unpack_from('<IQ', head, tok_val) == (int(VT.STRING), 49152)
    len0 = struct.unpack_from('<Q', head, tok_val + 12)[0]
    with GGUFFile(src) as gf: names, data_offset = list(gf.tensors), gf.data_offset
    ti, at = [], tok_val
    for n in names:
        at = head.index(struct.pack('<Q', len(n)) + n.encode(), at); ti.append(at)
    nd = struct.unpack_from('<I', head, ti[-1] + 8 + len(names[-1]))[0]
    ti_end = ti[-1] + 8 + len(names[-1]) + 4 + 8 * nd + 4 + 8
    assert data_offset == -(-ti_end // 32) * 32  # the data starts at the next 32-byte boundary
    yield dst, dict(tokens_len=tok_val + 4, token1_len=tok_val + 12 + 8 + len0, arch_val=arch_val, arch_key=arch_key,
                    ti=ti, names=names, data_offset=data_offset, size=os.path.getsize(src), ti_end=ti_end)


@contextmanager
def patched(path, at, new: bytes):
    with open(path, 'r+b') as f:
        f.seek(at); old = f.read(len(new)); f.seek(at); f.write(new)
    try: yield path
    finally:
        with open(path, 'r+b') as f: f.seek(at); f.write(old)


def test_real_copy_opens(smol):
    path, pos = smol
    with GGUFFile(path) as gf:
        assert gf.data_offset == pos['data_offset'] and list(gf.tensors) == pos['names']


def _tinfo(path, pos, i):
    "(n_dims offset, dims offset, type offset, offset offset, n_dims) of tensor info i, read with struct."
    with open(path, 'rb') as f:
        f.seek(pos['ti'][i]); n = struct.unpack('<Q', f.read(8))[0]; f.seek(n, 1)
        at_nd = f.tell(); nd = struct.unpack('<I', f.read(4))[0]
    return at_nd, at_nd + 4, at_nd + 4 + 8 * nd, at_nd + 4 + 8 * nd + 4, nd


REAL = [
    ('magic', lambda pos, p: (0, b'GGUX'), GGUFMagicError, 'not a GGUF file'),
    ('version-1', lambda pos, p: (4, struct.pack('<I', 1)), GGUFVersionError, 'v1'),
    ('tensor-count-2^32', lambda pos, p: (8, struct.pack('<Q', 2**32)), GGUFLimitError, 'tensor count'),
    ('vocab-length-2^31', lambda pos, p: (pos['tokens_len'], struct.pack('<Q', 2**31)), GGUFLimitError, 'tokenizer.ggml.tokens'),
    ('vocab-length-2^23', lambda pos, p: (pos['tokens_len'], struct.pack('<Q', 2**23)), GGUFTruncatedError, "tokenizer.ggml.tokens'[49153]"),
    ('token-length-2^62', lambda pos, p: (pos['token1_len'], struct.pack('<Q', 2**62)), GGUFTruncatedError, "tokenizer.ggml.tokens'[1]"),
    ('token-not-utf8', lambda pos, p: (pos['token1_len'] + 8, b'\xff'), GGUFEncodingError, "tokenizer.ggml.tokens'[1]"),
    ('arch-key-not-utf8', lambda pos, p: (pos['arch_key'] + 8, b'\xc0'), GGUFEncodingError, 'key of KV #'),
    ('arch-unsupported', lambda pos, p: (pos['arch_val'] + 8, b'llamb'), UnsupportedArchitectureError, "'llamb'"),
    ('tensor-type-99', lambda pos, p: (_tinfo(p, pos, 3)[2], struct.pack('<I', 99)), GGUFTensorTypeError, 'unknown ggml type 99'),
    ('tensor-type-Q2_K', lambda pos, p: (_tinfo(p, pos, 3)[2], struct.pack('<I', int(QT.Q2_K))), GGUFTensorTypeError, 'Q2_K'),
    ('tensor-dim-zero', lambda pos, p: (_tinfo(p, pos, 5)[1], struct.pack('<Q', 0)), GGUFShapeError, 'is zero'),
    ('tensor-n-dims-7', lambda pos, p: (_tinfo(p, pos, 5)[0], struct.pack('<I', 7)), GGUFShapeError, '7 dimensions'),
    ('tensor-offset-misaligned', lambda pos, p: (_tinfo(p, pos, 10)[3], struct.pack('<Q', 33)), GGUFAlignmentError, 'not a multiple'),
    ('tensor-offset-past-eof', lambda pos, p: (_tinfo(p, pos, 10)[3], struct.pack('<Q', 2**45)), GGUFOffsetError, 'beyond'),
    ('tensor-overlap', lambda pos, p: (_tinfo(p, pos, 10)[3], struct.pack('<Q', 0)), GGUFOverlapError, 'overlaps'),
]


@pytest.mark.parametrize('name,make,cls,fragment', REAL, ids=[r[0] for r in REAL])
def test_real_corruption(smol, name, make, cls, fragment):
    path, pos = smol
    at, new = make(pos, path)
    with patched(path, at, new):
        with pytest.raises(cls) as ei: _open_all(path)
        assert fragment in str(ei.value) and str(path) in str(ei.value), str(ei.value)
    _open_all(path)  # restored


def test_real_duplicate_tensor_name(smol):
    path, pos = smol
    names = pos['names']
    i, j = next((i, j) for i in range(len(names)) for j in range(i + 1, len(names))
                if len(names[i]) == len(names[j]) and names[i] != names[j])
    with patched(path, pos['ti'][j] + 8, names[i].encode()):
        with pytest.raises(GGUFDuplicateError, match=f"tensor '{names[i]}'"): _open_all(path)


@pytest.mark.parametrize('where', ['header', 'kv', 'vocab', 'tensor-info-end', 'data-start', 'mid-data', 'one-byte-short'])
def test_real_truncation(smol, tmp_path, where):
    path, pos = smol
    cut = dict(header=24, kv=pos['arch_val'] + 3, vocab=pos['token1_len'] + 100_000, **{
        'tensor-info-end': pos['ti_end'], 'data-start': pos['data_offset'], 'mid-data': pos['size'] // 2,
        'one-byte-short': pos['size'] - 1})[where]
    p = tmp_path / 't.gguf'
    with open(path, 'rb') as src, open(p, 'wb') as dst:
        left = cut
        while left: b = src.read(min(left, 1 << 24)); dst.write(b); left -= len(b)
    with pytest.raises(GGUFTruncatedError, match='at byte'): _open_all(p)
