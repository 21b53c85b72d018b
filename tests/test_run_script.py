"""`./run` picks the GPU extra itself on a machine with an NVIDIA GPU (tools/cuda-extra reads nvidia-smi's CUDA
version), so that the README's `./run serve` serves on the GPU there without a variable. Checked with a stand-in
nvidia-smi first on the PATH."""
import os, stat, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = '''+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: {v}     |
|-----------------------------------------+------------------------+----------------------+'''

def fake_smi(tmp_path, script):
    "A stand-in nvidia-smi first on the PATH: the environment to run a script with."
    fake = tmp_path / 'nvidia-smi'
    fake.write_text('#!/usr/bin/env bash\n' + script + '\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k != 'ORCD_EXTRAS'}
    return {**env, 'PATH': f'{tmp_path}{os.pathsep}{os.environ["PATH"]}'}

def out(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()

def smi(version): return f"cat <<'X'\n{HEADER.format(v=version)}\nX"

@pytest.mark.parametrize('version,want', [('12.4', 'cuda12'), ('12.9', 'cuda12'), ('13.0', 'cuda13'), ('13.1', 'cuda13'),
                                          ('11.8', '')])
def test_cuda_extra_follows_the_driver(tmp_path, version, want):
    assert out([str(ROOT / 'tools' / 'cuda-extra')], fake_smi(tmp_path, smi(version))) == want

def test_cuda_extra_without_a_gpu(tmp_path):
    "nvidia-smi that finds no device (or fails): no extra, the CPU serves."
    assert out([str(ROOT / 'tools' / 'cuda-extra')], fake_smi(tmp_path, 'echo "No devices were found"; exit 6')) == ''
    assert out([str(ROOT / 'tools' / 'cuda-extra')], fake_smi(tmp_path, 'exit 127')) == ''

def test_run_installs_the_gpu_extra_unless_told(tmp_path):
    "./run's pip spec per command: the driver's extra added; ORCD_EXTRAS, when set (even empty), instead."
    env = fake_smi(tmp_path, smi('12.4'))
    assert out(['./run', 'spec', 'serve'], env) == '.[cuda12]'
    assert out(['./run', 'spec', 'test'], env) == '.[dev,cuda12]'
    assert out(['./run', 'spec', 'serve'], {**env, 'ORCD_EXTRAS': ''}) == '.'
    assert out(['./run', 'spec', 'test'], {**env, 'ORCD_EXTRAS': 'cuda13'}) == '.[dev,cuda13]'
    assert out(['./run', 'spec', 'serve'], fake_smi(tmp_path, 'exit 127')) == '.'
