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


@needs_gpu
def test_every_kernel_compiles_with_the_shared_header():
    for cu in sorted((ROOT / 'kernels').glob('*.cu')):
        assert cuda.load_kernel(cu.stem, cu.stem) is not None   # each file defines the kernel it is named after


def test_kernel_options_early_trigger(monkeypatch):
    "ORCD_EARLY_TRIGGER=1 compiles the small kernels with the early trigger of dependent launches; off otherwise."
    monkeypatch.delenv('ORCD_EARLY_TRIGGER', raising=False)
    assert '-DORCD_EARLY_TRIGGER' not in cuda.kernel_options() and '-std=c++17' in cuda.kernel_options()
    monkeypatch.setenv('ORCD_EARLY_TRIGGER', '1')
    assert cuda.kernel_options()[-1] == '-DORCD_EARLY_TRIGGER'
    for name, kernels in (('attention', 2), ('moe', 3), ('norm_rows', 2), ('rope_kv', 1), ('elementwise', 2)):
        src = cuda.kernel_source(name)       # every kernel of the small-kernel files triggers, first thing
        assert src.count('trigger_dependents();') == src.count('extern "C" __global__') == kernels, name
