"""CUDA kernels against their numpy references (skipped without a GPU), and the kernel sources shipped in the wheel."""
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
    for cu in (ROOT / 'kernels').glob('*.cu'):
        assert f'orcd/kernels/{cu.name}' in names, (cu.name, names)


def test_kernel_source_lookup():
    assert '__global__' in cuda.kernel_source('matvec_q8_0')
    with pytest.raises(FileNotFoundError, match='no_such_kernel'): cuda.kernel_source('no_such_kernel')


def test_reference_matches_gguf_dequantisation():
    rng = np.random.default_rng(1)
    for rows, K in [(3, 32), (17, 96), (64, 512)]:
        W = rng.standard_normal((rows, K)).astype(np.float32)
        wq = gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q8_0)
        x = rng.standard_normal(K).astype(np.float32)
        want = gguf.quants.dequantize(wq, gguf.GGMLQuantizationType.Q8_0) @ x
        np.testing.assert_allclose(cuda.matvec_q8_0_ref(wq, x, rows), want, rtol=1e-6, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize('rows,K', [(1, 32), (5, 64), (896, 896), (4864, 896), (151936 // 64, 896), (2880, 4096)])
def test_matvec_q8_0_matches_reference(rows, K):
    rng = np.random.default_rng(rows * 7 + K)
    W = rng.standard_normal((rows, K)).astype(np.float32)
    wq = gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q8_0)
    x = rng.standard_normal(K).astype(np.float32)
    ref = cuda.matvec_q8_0_ref(wq, x, rows)
    got = cp.asnumpy(cuda.matvec_q8_0(cp.asarray(wq.reshape(-1)), cp.asarray(x), rows))
    tol = 1e-5 * np.sqrt(K)  # fp32, different summation order
    err = np.abs(got - ref) / (1 + np.abs(ref))
    assert err.max() <= tol, f'worst row {err.argmax()}: {got[err.argmax()]} vs {ref[err.argmax()]}'


@needs_gpu
def test_launcher_rejects_bad_arguments():
    x = cp.zeros(64, np.float32)
    with pytest.raises(ValueError, match='multiple of the Q8_0 block'): cuda.matvec_q8_0(cp.zeros(34, np.uint8), cp.zeros(33, np.float32), 1)
    with pytest.raises(TypeError, match='x must be float32'): cuda.matvec_q8_0(cp.zeros(68, np.uint8), x.astype(np.float16), 1)
    with pytest.raises(ValueError, match='w must have'): cuda.matvec_q8_0(cp.zeros(10, np.uint8), x, 1)
