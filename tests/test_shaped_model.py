"""scripts/make_shaped_model.py: a real file's header with synthetic weights, quantised by orcd into each tensor's
own type and scaled so that a forward pass stays O(1). Skeletons are cut here from small GGUF files: the phi3 and
gpt2 fixtures (F32) and two made with gguf's writer in the shapes and mixed block types of Qwen2.5 (Q4_K_M) and
Gemma 3 (tied, post-norms, embedding scale), all small enough for the CPU."""
import importlib.util, json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

import orcd.ops as ops
from orcd.adapters import load_adapter
from orcd.gguf import GGUFFile
from orcd.quants import QUANT_NAMES, QUANT_TYPES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'make_shaped_model.py'
SYNTH = Path(__file__).parent / 'fixtures' / 'synthetic'


def _load_script():
    spec = importlib.util.spec_from_file_location('make_shaped_model', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod

msm = _load_script()


def save_skeleton(gguf_path, prefix) -> str:
    "What `gguf-skeleton save` writes: PREFIX.head (the bytes up to the data) and PREFIX.json (the tensor table)."
    with GGUFFile(gguf_path) as gf:
        start = gf.data_offset
        tensors = [dict(name=t.name, type=t.ggml_type, offset=t.offset - start, nbytes=t.nbytes, shape=list(t.shape))
                   for t in gf.tensors.values()]
    with open(gguf_path, 'rb') as f: head = f.read(start)
    Path(f'{prefix}.head').write_bytes(head)
    Path(f'{prefix}.json').write_text(json.dumps(dict(data_offset=start, tensors=tensors)))
    return str(prefix)


def write_gguf(path, arch, kv, tensors):
    "A GGUF file of `tensors` [(name, GGUF shape, type name)] with zero data (only its header matters here)."
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in kv.items():
        (w.add_uint32 if isinstance(v, int) else w.add_float32)(f'{arch}.{k}', v)
    for name, shape, tname in tensors:
        qt = QUANT_TYPES[QUANT_NAMES[tname]]
        if tname == 'F32': w.add_tensor(name, np.zeros(shape[::-1], np.float32))
        else:
            rows = int(np.prod(shape[1:]))
            w.add_tensor(name, np.zeros((rows, shape[0] // qt.block_size * qt.type_size), np.uint8),
                         raw_dtype=gguf.GGMLQuantizationType(qt.ggml_type))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


D, FF, V = 256, 512, 1024

def qwen_like(path):
    "Qwen2.5-Coder Q4_K_M in miniature: Q5_0 embeddings and gate/up, Q8_0 output and some v, Q4_K/Q6_K down, biases."
    kv = dict(block_count=2, context_length=256, embedding_length=D, feed_forward_length=FF,
              **{'attention.head_count': 4, 'attention.head_count_kv': 2, 'rope.freq_base': 1e6,
                 'attention.layer_norm_rms_epsilon': 1e-6})
    t = [('token_embd.weight', [D, V], 'Q5_0'), ('output.weight', [D, V], 'Q8_0'), ('output_norm.weight', [D], 'F32')]
    for i, (v, down, o) in enumerate([('Q8_0', 'Q6_K', 'Q5_0'), ('Q4_1', 'Q4_K', 'Q5_K')]):
        b = f'blk.{i}.'
        t += [(b + 'attn_norm.weight', [D], 'F32'), (b + 'attn_q.weight', [D, D], 'Q5_0'),
              (b + 'attn_k.weight', [D, 128], 'Q5_0'), (b + 'attn_v.weight', [D, 128], v),
              (b + 'attn_q.bias', [D], 'F32'), (b + 'attn_k.bias', [128], 'F32'), (b + 'attn_v.bias', [128], 'F32'),
              (b + 'attn_output.weight', [D, D], o), (b + 'ffn_norm.weight', [D], 'F32'),
              (b + 'ffn_gate.weight', [D, FF], 'Q5_0'), (b + 'ffn_up.weight', [D, FF], 'Q5_0'),
              (b + 'ffn_down.weight', [FF, D], down)]
    return write_gguf(path, 'qwen2', kv, t)


def gemma_like(path):
    "Gemma 3 in miniature: tied Q8_0 embedding (scaled by sqrt(d)), q/k norms, post-norms, F16 and MXFP4 too."
    kv = dict(block_count=2, context_length=256, embedding_length=D, feed_forward_length=FF,
              **{'attention.head_count': 2, 'attention.head_count_kv': 1, 'attention.key_length': 128,
                 'attention.value_length': 128, 'rope.freq_base': 1e6, 'attention.sliding_window': 8,
                 'attention.layer_norm_rms_epsilon': 1e-6})
    t = [('token_embd.weight', [D, V], 'Q8_0'), ('output_norm.weight', [D], 'F32')]
    for i, (q, down) in enumerate([('Q5_0', 'Q6_K'), ('F16', 'MXFP4')]):
        b = f'blk.{i}.'
        t += [(b + 'attn_norm.weight', [D], 'F32'), (b + 'attn_q.weight', [D, D], q),
              (b + 'attn_k.weight', [D, 128], 'Q5_0'), (b + 'attn_v.weight', [D, 128], 'Q8_0'),
              (b + 'attn_q_norm.weight', [128], 'F32'), (b + 'attn_k_norm.weight', [128], 'F32'),
              (b + 'attn_output.weight', [D, D], 'Q4_K'), (b + 'post_attention_norm.weight', [D], 'F32'),
              (b + 'ffn_norm.weight', [D], 'F32'), (b + 'ffn_gate.weight', [D, FF], 'Q5_0'),
              (b + 'ffn_up.weight', [D, FF], 'Q5_0'), (b + 'ffn_down.weight', [FF, D], down),
              (b + 'post_ffw_norm.weight', [D], 'F32')]
    return write_gguf(path, 'gemma3', kv, t)


SOURCES = {'phi3': lambda p: SYNTH / 'phi3.gguf', 'gpt2': lambda p: SYNTH / 'gpt2.gguf',
           'qwen-like': qwen_like, 'gemma-like': gemma_like}


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    "name → (source gguf, skeleton prefix, shaped model of seed 0), made once for the module."
    d = tmp_path_factory.mktemp('shaped')
    out = {}
    for name, make in SOURCES.items():
        src = make(d / f'{name}.src.gguf')
        prefix = save_skeleton(src, d / name)
        shaped = d / f'{name}.gguf'
        msm.make_shaped_model(prefix, str(shaped), seed=0, workers=1, log=lambda *a: None)
        out[name] = (src, prefix, shaped)
    return out


@pytest.mark.parametrize('name', list(SOURCES))
def test_layout_kept(made, name):
    "Header bytes verbatim; the file validates; every tensor keeps its type, shape and offset; no block left empty."
    src, prefix, shaped = made[name]
    head = Path(f'{prefix}.head').read_bytes()
    assert shaped.read_bytes()[:len(head)] == head
    with GGUFFile(src) as a, GGUFFile(shaped) as b:
        assert b.data_offset == a.data_offset and list(b.tensors) == list(a.tensors)
        for n, ta in a.tensors.items():
            tb = b.tensors[n]
            assert (tb.shape, tb.ggml_type, tb.offset, tb.nbytes) == (ta.shape, ta.ggml_type, ta.offset, ta.nbytes), n
            x = b.tensor(n)
            assert np.isfinite(x).all() and np.count_nonzero(x) > 0.9 * x.size, n


@pytest.mark.parametrize('name', ['qwen-like', 'gemma-like'])
def test_types_covered(made, name):
    "The miniatures really carry the mixed block types of the real files."
    with GGUFFile(made[name][2]) as gf:
        types = {t.type_name for t in gf.tensors.values()}
    want = {'qwen-like': {'F32', 'Q5_0', 'Q8_0', 'Q4_1', 'Q4_K', 'Q5_K', 'Q6_K'},
            'gemma-like': {'F32', 'F16', 'Q5_0', 'Q8_0', 'Q4_K', 'Q6_K', 'MXFP4'}}[name]
    assert types == want


@pytest.mark.parametrize('name', list(SOURCES))
def test_values_follow_the_plan(made, name):
    "Each tensor's dequantised mean and std are what the plan asks for (so the scaled values reached each type)."
    src, prefix, shaped = made[name]
    meta = json.loads(Path(f'{prefix}.json').read_text())
    with GGUFFile(shaped) as gf:
        scales, info = msm.plan(meta, gf.kv)
        for n, (mean, std) in scales.items():
            x = gf.tensor(n).astype(np.float64)
            tol = 4 * std / np.sqrt(x.size) + 0.02 * abs(mean)     # sampling error + a margin for the rounding
            assert abs(x.mean() - mean) <= tol + 0.02 * std, (n, x.mean(), mean)
            assert abs(x.std() - std) <= (0.05 + 4 / np.sqrt(2 * x.size)) * std, (n, x.std(), std)
    assert info['tied'] == (name in ('gpt2', 'gemma-like'))
    assert info['embed_scale'] == (16.0 if name == 'gemma-like' else 1.0)


def _rms(x): return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize('name', list(SOURCES))
def test_forward_is_order_one(made, name, monkeypatch):
    """The CPU forward gives finite logits of std O(1) (the plan aims at 2.5), the residual stream (every input of
    a norm of width d, recorded by wrapping orcd.ops' norms) stays O(1), and greedy decoding does not repeat one
    token."""
    with GGUFFile(made[name][2]) as gf:
        ad = load_adapter(gf)
        d, seen = ad.hp.d_model, []
        def spy(f):
            def g(x, *a, **k):
                if x.shape[-1] == d: seen.append(_rms(x))
                return f(x, *a, **k)
            return g
        monkeypatch.setattr(ops, 'rms_norm', spy(ops.rms_norm))
        monkeypatch.setattr(ops, 'layer_norm', spy(ops.layer_norm))
        ids = np.random.default_rng(3).integers(0, 500, size=10)
        cache = ad.new_cache(64)
        logits = ad.forward(ids, np.arange(10), cache)
        assert seen, 'no norm of width d_model went through orcd.ops.rms_norm/layer_norm: update the spy'
        assert np.isfinite(logits).all()
        assert 1.0 < logits.std() < 6.0, logits.std()
        assert 0.3 < seen[-1] < 5.0 and max(seen) < 5.0, seen        # seen[-1]: the output norm's input
        out, pos = [], 10
        for _ in range(12):
            out.append(int(logits[-1].argmax()))
            logits = ad.forward(out[-1:], [pos], cache, all_logits=False); pos += 1
            assert np.isfinite(logits).all()
        assert len(set(out)) >= 5, out                                 # not one token repeated


def test_seeds_and_workers(made, tmp_path):
    """The CLI with 2 worker processes writes the same bytes as 1 in-process worker for the same seed; another
    seed changes every random tensor (only exact constants, none here, could stay)."""
    _, prefix, shaped = made['qwen-like']
    a, b = tmp_path / 'a.gguf', tmp_path / 'b.gguf'
    for out, seed in ((a, 0), (b, 1)):
        r = subprocess.run([sys.executable, str(SCRIPT), prefix, str(out), '--seed', str(seed), '--workers', '2'],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert 'Q5_0' in r.stdout and 'values' in r.stdout
    assert a.read_bytes() == shaped.read_bytes()
    with GGUFFile(shaped) as x, GGUFFile(b) as y:
        for n in x.tensors:
            assert not np.array_equal(x.raw(n), y.raw(n)), n
    assert not list(tmp_path.glob('*.tmp*'))


def test_fails_clearly(made, tmp_path):
    "An unsupported block type, an unknown tensor role or a JSON that disagrees with the header: a clear error."
    _, prefix, _ = made['phi3']
    meta = json.loads(Path(f'{prefix}.json').read_text())
    head = Path(f'{prefix}.head').read_bytes()
    def attempt(m, name):
        p = tmp_path / name
        p.with_suffix('.head').write_bytes(head); p.with_suffix('.json').write_text(json.dumps(m))
        with pytest.raises(msm.ShapedModelError) as e:
            msm.make_shaped_model(str(p), str(tmp_path / f'{name}.gguf'), workers=1, log=lambda *a: None)
        assert not (tmp_path / f'{name}.gguf').exists() and not list(tmp_path.glob(f'{name}.gguf.tmp*'))
        return str(e.value)
    bad = json.loads(json.dumps(meta)); bad['tensors'][0]['type'] = 10            # Q2_K: no orcd quantiser
    msg = attempt(bad, 'q2k')
    assert 'output.weight' in msg and 'Q2_K' in msg and 'not supported' in msg
    bad = json.loads(json.dumps(meta)); bad['tensors'][2]['nbytes'] += 4          # not the header's size
    assert 'blk.0.attn_norm.weight' in attempt(bad, 'size')
    bad = json.loads(json.dumps(meta)); bad['tensors'][1]['shape'] = [64, 256]; bad['tensors'][1]['nbytes'] //= 2
    assert 'token_embd.weight' in attempt(bad, 'shape')                            # consistent JSON, other header
    with pytest.raises(msm.ShapedModelError, match='unknown role'):
        msm.kind_of('blk.0.ffn_mystery.weight', set())
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / 'q2k'), str(tmp_path / 'x.gguf'), '--workers', '1'],
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'Q2_K' in r.stderr and 'Traceback' not in r.stderr


def test_kinds_of_real_names():
    "Roles of the tensor names of the target models (and gpt-oss's post_attention_norm, which is a pre-norm)."
    names = {'blk.0.ffn_norm.weight', 'blk.0.post_attention_norm.weight', 'blk.1.post_attention_norm.weight'}
    assert msm.kind_of('blk.0.post_attention_norm.weight', names) == 'attn_post_norm'   # Gemma: has ffn_norm
    assert msm.kind_of('blk.1.post_attention_norm.weight', names) == 'norm'             # gpt-oss: no ffn_norm
    want = {'token_embd.weight': 'embed', 'output.weight': 'output', 'output_norm.weight': 'out_norm',
            'blk.3.attn_k.bias': 'bias', 'blk.3.attn_q_norm.weight': 'norm', 'blk.3.ffn_down.weight': 'out_proj',
            'blk.3.attn_output.weight': 'attn_out', 'blk.3.ffn_up.weight': 'in_proj', 'blk.3.post_ffw_norm.weight':
            'post_norm', 'rope_freqs.weight': 'ones', 'blk.0.ffn_down_exps.weight': 'out_proj',
            'blk.0.attn_sinks.weight': 'sinks', 'blk.0.ffn_gate_inp.weight': 'in_proj'}
    for n, k in want.items(): assert msm.kind_of(n, set()) == k, n
