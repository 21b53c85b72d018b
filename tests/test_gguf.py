"""orcd.gguf on the three real files (checked against llama.cpp and gguf-py) and on synthetic files
written with gguf-py's GGUFWriter; `orcd inspect` run in-process."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as VT, GGMLQuantizationType as QT

from orcd.gguf import (GGUFFile, GGUFError, GGUFMetadataError, UnsupportedArchitectureError, ModelMetadata,
                       supported_architectures, format_inspect, inspect_dict, _short)
from orcd.cli import main
from conftest import real_model, reference_python

MODELS = ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct', 'gemma-3-270m']

# llama.cpp (through llama-cpp-python's C API) reads each file: its metadata strings and hyper-parameters.
_REF = r'''
import json, sys, ctypes
import llama_cpp as L
L.llama_backend_init()
_cb = L.llama_log_callback(lambda *a: None); L.llama_log_set(_cb, ctypes.c_void_p())
out = {}
for path in sys.argv[1:]:
    p = L.llama_model_default_params(); p.use_mmap = True
    m = L.llama_model_load_from_file(path.encode(), p)
    buf = ctypes.create_string_buffer(1 << 17); meta = {}
    for i in range(L.llama_model_meta_count(m)):
        L.llama_model_meta_key_by_index(m, i, buf, len(buf)); k = buf.value.decode()
        L.llama_model_meta_val_str_by_index(m, i, buf, len(buf)); meta[k] = buf.value.decode('utf-8', 'replace')
    out[path] = dict(meta=meta, n_layer=L.llama_model_n_layer(m), n_embd=L.llama_model_n_embd(m),
                     n_head=L.llama_model_n_head(m), n_head_kv=L.llama_model_n_head_kv(m),
                     n_ctx_train=L.llama_model_n_ctx_train(m), n_swa=L.llama_model_n_swa(m),
                     n_params=L.llama_model_n_params(m), n_vocab=L.llama_vocab_n_tokens(L.llama_model_get_vocab(m)))
    L.llama_model_free(m)
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def paths():
    return {n: real_model(n) for n in MODELS}


@pytest.fixture(scope='module')
def llama_cpp_ref(paths):
    py, why = reference_python('llama-cpp')
    if py is None: pytest.skip(why)
    r = subprocess.run([str(py), '-c', _REF, *map(str, paths.values())], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f'the llama-cpp reference environment failed: {r.stderr[-500:]}'
    return {Path(k): v for k, v in json.loads(r.stdout).items()}


def _same(ours, theirs: str):
    "Our typed value against llama.cpp's string rendering of it."
    if isinstance(ours, bool): return theirs == str(ours).lower()
    if isinstance(ours, int): return theirs == str(ours)
    if isinstance(ours, float): return abs(float(theirs) - ours) <= 1e-6 * max(1.0, abs(ours))
    return theirs == ours


@pytest.mark.parametrize('name', MODELS)
def test_real_file_matches_llama_cpp(paths, llama_cpp_ref, name):
    ref = llama_cpp_ref[Path(paths[name])]
    with GGUFFile(paths[name]) as gf:
        m = gf.metadata
        scalars = {k: v for k, v in gf.kv.items() if not isinstance(v, (list, np.ndarray))}
        assert set(scalars) == set(ref['meta'])
        bad = {k: (scalars[k], ref['meta'][k][:60]) for k in scalars if not _same(scalars[k], ref['meta'][k])}
        assert not bad
        assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.context_length, m.sliding_window, m.vocab_size) == \
            (ref['n_layer'], ref['n_embd'], ref['n_head'], ref['n_head_kv'], ref['n_ctx_train'], ref['n_swa'], ref['n_vocab'])
        assert sum(t.n_elements for t in gf.tensors.values()) == ref['n_params']


def test_qwen_facts(paths):
    "Qwen2.5-Coder-0.5B-Instruct Q4_K_M as llama.cpp reads it: shapes, RoPE, norm, tokenizer, tensor types."
    with GGUFFile(paths['qwen2.5-coder-0.5b-instruct']) as gf:
        m = gf.metadata
        assert (m.architecture, m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.head_dim_v, m.ffn_dim) == \
            ('qwen2', 24, 896, 14, 2, 64, 64, 4864)
        assert m.rope_base == 1e6 and m.rope_dim == 64 and m.rope_scaling_type == 'none' and m.rope_scaling_factor == 1.0
        assert m.norm_eps == pytest.approx(1e-6, rel=1e-6) and m.norm_type == 'rms'
        assert m.vocab_size == 151936 == len(gf.kv['tokenizer.ggml.tokens']) and len(gf.kv['tokenizer.ggml.merges']) == 151387
        assert m.type_histogram == {'Q5_0': 133, 'Q8_0': 13, 'Q6_K': 12, 'Q4_K': 12, 'F32': 121}
        assert sum(m.type_histogram.values()) == len(gf.tensors) == 291
        assert (m.tokenizer_model, m.tokenizer_pre, m.file_type_name) == ('gpt2', 'qwen2', 'Q4_K_M')
        assert m.n_experts == 0 and m.sliding_window == 0 and m.context_length == 32768
        emb, down = gf.tensors['token_embd.weight'], gf.tensors['blk.0.ffn_down.weight']
        assert emb.shape == (896, 151936) and emb.np_shape == (151936, 896)
        assert down.shape == (4864, 896) and down.np_shape == (896, 4864)
        assert gf.kv['tokenizer.ggml.tokens'][151644] == '<|im_start|>' and gf.kv['tokenizer.ggml.eos_token_id'] == 151645
        assert gf.data_offset + sum(m.type_bytes.values()) <= gf.size == 491_400_064


def test_smollm2_facts(paths):
    with GGUFFile(paths['smollm2-135m-instruct']) as gf:
        m = gf.metadata
        assert (m.architecture, m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_dim, m.vocab_size) == \
            ('llama', 30, 576, 9, 3, 64, 1536, 49152)
        assert m.file_type_name == 'Q4_1' and m.type_histogram['Q8_0'] == 1 and set(m.type_histogram) == {'Q4_1', 'Q8_0', 'F32'}
        assert m.rope_base == 1e5 and (m.tokenizer_model, m.tokenizer_pre) == ('gpt2', 'smollm')


def test_gemma3_facts(paths):
    with GGUFFile(paths['gemma-3-270m']) as gf:
        m = gf.metadata
        assert (m.architecture, m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.head_dim_v) == \
            ('gemma3', 18, 640, 4, 1, 256, 256)
        assert (m.sliding_window, m.rope_base, m.vocab_size, m.tokenizer_model) == (512, 1e6, 262144, 'llama')
        assert isinstance(gf.kv['tokenizer.ggml.scores'], np.ndarray) and gf.kv['tokenizer.ggml.scores'].dtype == np.float32
        assert set(m.type_histogram) == {'Q5_0', 'Q4_K', 'Q8_0', 'Q6_K', 'F32'}


def test_smollm2_against_gguf_reader(paths):
    "Every key, every tensor description and some tensor bytes equal what gguf-py's GGUFReader reads."
    p = paths['smollm2-135m-instruct']
    r = gguf.GGUFReader(p)
    with GGUFFile(p) as gf:
        theirs = {k: f.contents() for k, f in r.fields.items() if not k.startswith('GGUF.')}
        assert list(gf.kv) == list(theirs)
        for k, v in theirs.items():
            ours = gf.kv[k]
            ours = ours.tolist() if isinstance(ours, np.ndarray) else ours
            if isinstance(v, float): assert ours == pytest.approx(v, rel=1e-7), k
            else: assert ours == v, k
        assert gf.data_offset == r.data_offset and gf.alignment == r.alignment
        assert len(gf.tensors) == len(r.tensors)
        for t, rt in zip(gf.tensors.values(), r.tensors):
            assert (t.name, t.shape, t.ggml_type, t.offset, t.nbytes, t.n_elements) == \
                (rt.name, tuple(int(x) for x in rt.shape), int(rt.tensor_type), rt.data_offset, rt.n_bytes, rt.n_elements)
        for rt in r.tensors[:3] + r.tensors[-3:]:
            assert np.array_equal(gf.raw(rt.name), rt.data.reshape(-1).view(np.uint8))


def test_tensor_dequantises(paths):
    pytest.importorskip('orcd.quants')
    from gguf.quants import dequantize
    with GGUFFile(paths['smollm2-135m-instruct']) as gf:
        for name in ['output_norm.weight', 'blk.0.attn_q.weight', 'token_embd.weight']:
            t = gf.tensors[name]
            x = gf.tensor(name)
            assert x.dtype == np.float32 and x.shape == t.np_shape
            ref = dequantize(gf.raw(name), QT(t.ggml_type)).reshape(t.np_shape)
            assert np.array_equal(x, ref), name


def test_raw_is_a_zero_copy_view_and_close_is_safe(paths):
    gf = GGUFFile(paths['smollm2-135m-instruct'])
    v = gf.raw('output_norm.weight')
    assert not v.flags.writeable and not v.flags.owndata and v.nbytes == gf.tensors['output_norm.weight'].nbytes
    gf.close()  # a live view defers the unmap instead of crashing
    assert np.isfinite(v.view(np.float32)).all()
    with pytest.raises(KeyError, match="no tensor 'nope'"): gf.raw('nope')


def test_open_reads_only_the_header(paths):
    """Opening the 491 MB Qwen file and formatting its metadata allocates only what the header holds (vocabulary
    and merges, tens of MB), never the tensor data. (Its speed is a benchmark: scripts/bench_open.py.)"""
    import tracemalloc
    tracemalloc.start()
    try:
        with GGUFFile(paths['qwen2.5-coder-0.5b-instruct']) as gf: gf.metadata; format_inspect(gf)
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 100e6, f'{peak/1e6:.0f} MB allocated to open a 491 MB file'


# ---- orcd inspect ----

def test_inspect_table(capsys):
    assert main(['inspect', 'smollm2-135m-instruct']) == 0
    out = capsys.readouterr().out
    assert 'architecture             llama' in out and 'n_layers                 30' in out
    assert 'blk.0.attn_q.weight' in out and 'Q4_1' in out and '[576, 576]' in out
    assert 'tokenizer.ggml.tokens' in out and '[49,152 × str]' in out


def test_inspect_json(capsys, paths):
    assert main(['inspect', str(paths['gemma-3-270m']), '--json']) == 0
    d = json.loads(capsys.readouterr().out)
    assert d['metadata']['architecture'] == 'gemma3' and d['metadata']['sliding_window'] == 512
    assert len(d['tensors']) == 236 and {'name', 'shape', 'type', 'bytes'} <= set(d['tensors'][0])
    assert d['kv']['tokenizer.ggml.tokens']['length'] == 262144
    assert d['version'] == 3 and d['size'] == 253_113_024


def test_inspect_errors(tmp_path, capsys):
    bad = tmp_path / 'bad.gguf'; bad.write_bytes(b'GGUF\x03\0\0\0' + b'\xff' * 16)
    assert main(['inspect', str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith('orcd inspect: ') and 'bad.gguf' in err and 'tensor count' in err
    assert main(['inspect', str(tmp_path / 'absent.gguf')]) == 1
    assert 'no such file' in capsys.readouterr().err
    assert main(['inspect', str(_write(tmp_path / 'm.gguf', 'mamba'))]) == 1
    assert "architecture 'mamba' is not supported" in capsys.readouterr().err


# ---- metadata on synthetic files written by gguf-py's GGUFWriter ----

def _write(path, arch, keys=None, tensors=True, base=True):
    w = gguf.GGUFWriter(str(path), arch)
    if base:
        w.add_block_count(2); w.add_context_length(256); w.add_embedding_length(128); w.add_head_count(8)
    for k, (vt, v) in (keys or {}).items():
        if vt == VT.ARRAY: w.add_array(k.format(arch=arch), v)
        else: w.add_key_value(k.format(arch=arch), v, vt)
    if tensors:
        w.add_tensor('token_embd.weight', np.zeros((10, 128), np.float32))
        w.add_tensor('blk.0.attn_q.weight', np.zeros((128, 128), np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def _meta(tmp_path, arch, keys=None, **kw):
    with GGUFFile(_write(tmp_path / f'{arch}.gguf', arch, keys, **kw)) as gf: return gf.metadata


RMS = {'{arch}.attention.layer_norm_rms_epsilon': (VT.FLOAT32, 1e-5)}


def test_llama_cpp_defaults(tmp_path):
    m = _meta(tmp_path, 'llama', RMS)
    assert (m.n_kv_heads, m.head_dim, m.head_dim_v, m.rope_dim, m.ffn_dim) == (8, 16, 16, 16, 0)
    assert (m.rope_base, m.rope_scaling_type, m.rope_scaling_factor, m.rope_orig_ctx) == (10000.0, 'none', 1.0, 256)
    assert (m.sliding_window, m.n_experts, m.n_experts_used, m.yarn_beta_fast, m.yarn_beta_slow) == (0, 0, 0, 32.0, 1.0)
    assert m.vocab_size == 10  # no vocab_size key, no token list: token_embd's rows
    assert m.name == 'llama' and m.file_type_name == '' and m.type_histogram == {'F32': 1, 'F16': 1}
    assert m.type_bytes == {'F32': 10 * 128 * 4, 'F16': 128 * 128 * 2} and m.tokenizer_pre == 'default'


def test_gpt_oss_keys(tmp_path):
    keys = {**RMS, '{arch}.attention.head_count_kv': (VT.UINT32, 2), '{arch}.attention.key_length': (VT.UINT32, 64),
            '{arch}.attention.value_length': (VT.UINT32, 64), '{arch}.rope.freq_base': (VT.FLOAT32, 150000.0),
            '{arch}.rope.scaling.type': (VT.STRING, 'yarn'), '{arch}.rope.scaling.factor': (VT.FLOAT32, 32.0),
            '{arch}.rope.scaling.original_context_length': (VT.UINT32, 4096), '{arch}.attention.sliding_window': (VT.UINT32, 128),
            '{arch}.expert_count': (VT.UINT32, 32), '{arch}.expert_used_count': (VT.UINT32, 4),
            '{arch}.expert_feed_forward_length': (VT.UINT32, 2880), '{arch}.feed_forward_length': (VT.UINT32, 2880),
            'general.file_type': (VT.UINT32, 38)}
    m = _meta(tmp_path, 'gpt-oss', keys)
    assert (m.head_dim, m.rope_base, m.rope_scaling_type, m.rope_scaling_factor, m.rope_orig_ctx) == (64, 150000.0, 'yarn', 32.0, 4096)
    assert (m.sliding_window, m.n_experts, m.n_experts_used, m.expert_ffn_dim, m.ffn_dim) == (128, 32, 4, 2880, 2880)
    assert m.file_type_name == 'MXFP4_MOE' and m.rope_dim == 64


def test_gpt2_layer_norm_and_phi3(tmp_path):
    m = _meta(tmp_path, 'gpt2', {'{arch}.attention.layer_norm_epsilon': (VT.FLOAT32, 1e-5)})
    assert m.norm_type == 'layer' and m.norm_eps == pytest.approx(1e-5)
    m = _meta(tmp_path, 'phi3', {**RMS, '{arch}.rope.dimension_count': (VT.UINT32, 16), '{arch}.vocab_size': (VT.UINT32, 32064)})
    assert m.architecture == 'phi3' and m.rope_dim == 16 and m.vocab_size == 32064


def test_gemma3_extras(tmp_path):
    m = _meta(tmp_path, 'gemma3', {**RMS, '{arch}.attention.sliding_window': (VT.UINT32, 512),
                                   '{arch}.rope.freq_base_swa': (VT.FLOAT32, 10000.0),
                                   '{arch}.final_logit_softcapping': (VT.FLOAT32, 30.0)})
    assert (m.sliding_window, m.rope_base_swa, m.final_logit_softcapping) == (512, 10000.0, 30.0)
    assert m.kv['gemma3.final_logit_softcapping'] == 30.0


def test_per_layer_array_with_one_value(tmp_path):
    m = _meta(tmp_path, 'llama', {**RMS, '{arch}.attention.head_count_kv': (VT.ARRAY, [4, 4])})
    assert m.n_kv_heads == 4
    with pytest.raises(GGUFMetadataError, match=r"'llama.attention.head_count_kv'.*expected int, found list"):
        _meta(tmp_path, 'llama', {**RMS, '{arch}.attention.head_count_kv': (VT.ARRAY, [4, 2])})


@pytest.mark.parametrize('arch,keys,base,match', [
    ('llama', {}, True, r"'llama.attention.layer_norm_rms_epsilon'.*missing \(required for llama: it or llama.attention.layer_norm_epsilon\)"),
    ('llama', RMS, False, r"'llama.block_count'.*missing \(required for llama\)"),
    ('llama', {**RMS, '{arch}.attention.head_count_kv': (VT.UINT32, 0)}, True, 'below the minimum 1'),
    ('llama', {**RMS, '{arch}.rope.freq_base': (VT.STRING, 'big')}, True, 'expected float, found str'),
    ('llama', {**RMS, '{arch}.attention.sliding_window': (VT.BOOL, True)}, True, 'expected int, found bool'),
])
def test_metadata_errors(tmp_path, arch, keys, base, match):
    with pytest.raises(GGUFMetadataError, match=match) as ei:
        with GGUFFile(_write(tmp_path / 'e.gguf', arch, keys, base=base)) as gf: gf.metadata
    assert str(tmp_path / 'e.gguf') in str(ei.value)


def test_unsupported_and_missing_architecture(tmp_path):
    with pytest.raises(UnsupportedArchitectureError) as ei: _meta(tmp_path, 'mamba', RMS)
    assert all(a in str(ei.value) for a in supported_architectures()) and 'general.architecture' in str(ei.value)
    assert isinstance(ei.value, GGUFError) and ei.value.offset is not None
    import orcd.adapters
    assert supported_architectures() == tuple(orcd.adapters.ARCHITECTURES) == ('llama', 'qwen2', 'phi3', 'gemma3', 'gpt-oss', 'gpt2')
    assert ei.value.code == 'MODEL_LOAD_FAILED' and isinstance(ei.value, orcd.adapters.UnsupportedArchitecture)


def test_value_types_round_trip(tmp_path):
    "Every GGUF value type comes back as written by GGUFWriter; small numeric arrays are lists, long ones numpy."
    vals = {'t.u8': (VT.UINT8, 200), 't.i8': (VT.INT8, -100), 't.u16': (VT.UINT16, 60000), 't.i16': (VT.INT16, -30000),
            't.u32': (VT.UINT32, 4_000_000_000), 't.i32': (VT.INT32, -2_000_000_000), 't.f32': (VT.FLOAT32, 0.5),
            't.bool': (VT.BOOL, False), 't.str': (VT.STRING, 'ünïcode ✓'), 't.u64': (VT.UINT64, 2**63 + 5),
            't.i64': (VT.INT64, -2**62), 't.f64': (VT.FLOAT64, 1e-300),
            't.small': (VT.ARRAY, [1, 2, 3]), 't.strs': (VT.ARRAY, ['a', '', 'ß']), 't.bools': (VT.ARRAY, [True, False])}
    big = np.arange(1000, dtype=np.float32)
    w = gguf.GGUFWriter(str(tmp_path / 'v.gguf'), 'llama')
    for k, (vt, v) in vals.items():
        if vt == VT.ARRAY: w.add_array(k, v)
        else: w.add_key_value(k, v, vt)
    w.add_array('t.big', big.tolist())
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with GGUFFile(tmp_path / 'v.gguf') as gf:
        for k, (vt, v) in vals.items(): assert gf.kv[k] == v and type(gf.kv[k]) is type(v), k
        assert isinstance(gf.kv['t.big'], np.ndarray) and np.array_equal(gf.kv['t.big'], big)
        assert gf.tensors == {}
        assert _short(gf.kv['t.big']) == dict(length=1000, type='float32', head=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
