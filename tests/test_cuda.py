"""The CUDA plumbing: kernel sources (and their shared header) shipped in the wheel, found and compiled. The kernels
themselves are checked against their numpy references in test_cuda_matvec.py."""
import subprocess, sys, zipfile
from pathlib import Path
import numpy as np, pytest, gguf
from orcd import cuda

ROOT = Path(__file__).resolve().parent.parent
cp, why = cuda.cuda_device()
needs_gpu = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')


def test_kernel_sources_ship_in_the_wheel(tmp_path):
    "A plain, non-editable install carries kernels/*.cu as package data of orcd.kernels."
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(tmp_path), str(ROOT)], check=True)
    whl, = tmp_path.glob('orcd-*.whl')
    names = zipfile.ZipFile(whl).namelist()
    for cu in [*(ROOT / 'kernels').glob('*.cu'), *(ROOT / 'kernels').glob('*.cuh')]:
        assert f'orcd/kernels/{cu.name}' in names, (cu.name, names)


def test_kernel_source_lookup():
    assert '__global__' in cuda.kernel_source('matvec_q8_0')
    with pytest.raises(FileNotFoundError, match='no_such_kernel'): cuda.kernel_source('no_such_kernel')


def test_kernel_source_names_its_headers_content():
    "CuPy caches by source text: the source carries a hash of every header, so a header's edit recompiles."
    import hashlib
    h = hashlib.sha1()
    for f in sorted((ROOT / 'kernels').glob('*.cuh'), key=lambda p: p.name): h.update(f.name.encode()); h.update(f.read_bytes())
    assert cuda.headers_tag() == f'// headers {h.hexdigest()}\n'
    assert cuda.kernel_source('attention').endswith(cuda.headers_tag())


@needs_gpu
def test_every_kernel_compiles_with_the_shared_header():
    import re
    for cu in sorted((ROOT / 'kernels').glob('*.cu')):         # each file, by the first kernel it defines
        name = re.search(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\(', cu.read_text()).group(1)
        assert cuda.load_kernel(cu.stem, name).raw is not None, cu.name


def test_kernel_options_early_trigger(monkeypatch):
    "ORCD_EARLY_TRIGGER=1 compiles the small kernels with the early trigger of dependent launches; off otherwise."
    monkeypatch.delenv('ORCD_EARLY_TRIGGER', raising=False)
    monkeypatch.setattr(cuda, 'PDL_ALL', False)
    assert '-DORCD_EARLY_TRIGGER' not in cuda.kernel_options() and '-std=c++17' in cuda.kernel_options()
    monkeypatch.setenv('ORCD_EARLY_TRIGGER', '1')
    assert cuda.kernel_options()[-1] == '-DORCD_EARLY_TRIGGER'
    for name, kernels in (('attention', 3), ('attention_gqa', 1), ('moe', 4), ('norm_rows', 2), ('rope_kv', 1), ('elementwise', 2)):
        src = cuda.kernel_source(name)       # every kernel of the small-kernel files triggers, first thing
        assert src.count('trigger_dependents();') == src.count('extern "C" __global__') == kernels, name
    monkeypatch.delenv('ORCD_EARLY_TRIGGER')
    monkeypatch.setattr(cuda, 'PDL_ALL', True)                  # PDL everywhere needs the triggers too
    assert cuda.kernel_options()[-1] == '-DORCD_EARLY_TRIGGER'


def test_pdl_files_wait_before_reading():
    """Every kernel of a file whose kernels may be launched with programmatic stream serialization waits for the
    previous kernel (griddepcontrol.wait): as its first statement, except the decode attention, which may fetch its
    first tile of earlier positions' keys before (no kernel of the step writes them), and both decode attention
    kernels read the position first (written before the step's graph runs: whether they only pass the step on), as
    does attention_short (the short-context graphs' decode attention), and attention_gqa (06b: the group's heads
    together past a short context: its first keys before the wait, as the attention kernel); attn_o (06b's AttnO)
    reads the same before its wait, and its o weights."""
    import re
    reads_early = {"attention", "attention_short", "attention_merge", "attention_gqa", "attn_o"}
    for name in sorted(cuda.PDL_FILES):
        src = cuda.kernel_source(name)
        kernels = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\([^{]*\{(.*?)(?=\nextern "C"|\Z)',
                             src, re.S)
        assert kernels and len(kernels) == src.count('extern "C" __global__'), name
        for kname, body in kernels:
            first = re.sub(r'^\s*(//[^\n]*\s*)*', '', body).split(';')[0]
            waits = 'wait_primary()' in first or 'griddepcontrol.wait' in first
            assert waits or (kname in reads_early and 'wait_primary()' in body), (name, kname, first)

@needs_gpu
@pytest.mark.parametrize('pdl', [False, True], ids=['plain', 'pdl'])
def test_dependent_chain_of_small_kernels(pdl):
    """Forty dependent in-place launches (a += b, b += a, ...; 2M elements each), captured in a CUDA graph and
    replayed: with PDL each waits for the one before it, so the result is exactly numpy's sequence of float32 adds."""
    k = cuda.load_kernel('elementwise', 'elementwise', pdl=pdl)
    assert k.pdl == (pdl and cuda._has_pdl())
    rng, n = np.random.default_rng(1), 1 << 21
    a0, b0 = rng.standard_normal(n).astype(np.float32) * 1e-3, rng.standard_normal(n).astype(np.float32) * 1e-3
    a, b = cp.asarray(a0), cp.asarray(b0)
    args = lambda x, y: (x, y, np.int32(n), np.int32(0), np.float32(1))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream, cuda.pdl_launches():               # (a kernel loaded with pdl launches with PDL only in this scope)
        stream.begin_capture()
        for i in range(40): k((n // 256,), (256,), args(a, b) if i % 2 == 0 else args(b, a))
        g = stream.end_capture()
        for _ in range(2): g.launch(stream)
        stream.synchronize()
    ra, rb = a0.copy(), b0.copy()
    for _ in range(2):
        for i in range(40):
            if i % 2 == 0: ra += rb
            else: rb += ra
    assert np.array_equal(cp.asnumpy(a), ra) and np.array_equal(cp.asnumpy(b), rb)
