#!/usr/bin/env python3
"""Make the reference environments: the independent implementations orcd is checked against, each in a venv
of its own, so that anyone can regenerate the fixtures in tests/fixtures/ and run the tests that call them.

    python scripts/make_reference_envs.py              # both
    python scripts/make_reference_envs.py llama-cpp    # llama-cpp-python 0.3.36, built from its PyPI sdist for the CPU
    python scripts/make_reference_envs.py torch        # torch 2.13.0+cpu, transformers 5.24.0, accelerate, gguf-py 0.19
    python scripts/make_reference_envs.py --check      # only say what is found, and where

They go to ``build/refenv/<name>/`` inside the repository (git-ignored), or under ``$ORCD_REFENV``. Instead of
making one, you can name an interpreter that already has the packages:

* ``ORCD_LLAMA_CPP_PYTHON``: a Python with llama-cpp-python 0.3.36 (tests/test_gguf.py, scripts/make_llamacpp_fixtures.py,
  scripts/make_tokenizer_fixtures.py, and the llama.cpp half of scripts/make_synthetic_models.py);
* ``ORCD_TORCH_PYTHON``: a Python with torch (CPU), transformers and gguf-py (scripts/make_transformers_real_fixtures.py,
  scripts/make_synthetic_models.py);
* ``ORCD_LLAMA_CPP_SDIST``: the llama-cpp-python 0.3.36 sdist (its ``vendor/llama.cpp/convert_hf_to_gguf.py`` converts the
  synthetic models; this script keeps a copy in ``build/refenv/dl/``);
* ``ORCD_GGML_LIB``: llama.cpp's ``libggml-base.so`` (tests/test_quants.py; found inside the llama-cpp environment).

The versions are the ones the committed fixtures were made with (their headers record them). Building
llama-cpp-python compiles llama.cpp: it needs a C/C++ compiler (cmake comes from PyPI when missing) and takes
10-20 minutes on 2 cores. torch's CPU build is the wheel ``torch==2.13.0+cpu``: pip must be able to find it
(through its configured index or ``--find-links``/``PIP_FIND_LINKS``); the default wheel of PyPI would pull in the
CUDA libraries (gigabytes) and is refused here on purpose.

The functions ``reference_python``, ``llama_cpp_sdist`` and ``ggml_lib`` are what the tests and the other scripts
use to find the environments; when one is missing their second value says how to get it.
"""
import argparse, glob, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP_VERSION = '0.3.36'
ENVS = {
    'llama-cpp': dict(var='ORCD_LLAMA_CPP_PYTHON', what=f'llama-cpp-python {LLAMA_CPP_VERSION} built from its sdist for the CPU',
                      packages=[f'llama-cpp-python=={LLAMA_CPP_VERSION}', 'numpy'], no_binary='llama-cpp-python',
                      check='import llama_cpp, numpy; print("llama-cpp-python", llama_cpp.__version__)'),
    'torch': dict(var='ORCD_TORCH_PYTHON', what='torch 2.13.0+cpu, transformers 5.24.0, accelerate 1.15.0 and gguf-py 0.19.0',
                  packages=['torch==2.13.0+cpu', 'transformers==5.24.0', 'accelerate==1.15.0', 'gguf==0.19.0', 'safetensors',
                            'sentencepiece', 'tokenizers', 'numpy'], no_binary=None,
                  check='import torch, transformers, gguf; print("torch", torch.__version__, "transformers", transformers.__version__)'),
}


def refenv_dir() -> Path:
    "Where the environments live: `$ORCD_REFENV`, default `build/refenv/` in the repository."
    return Path(os.environ.get('ORCD_REFENV') or ROOT / 'build' / 'refenv')


def _how(kind):
    e = ENVS[kind]
    return (f'run `python scripts/make_reference_envs.py {kind}` (it makes {e["what"]} in build/refenv/{kind}), '
            f'or set {e["var"]} to a Python that has it')


def reference_python(kind):
    "`(path, '')` of the interpreter of reference environment `kind`, or `(None, why not and how to get it)`."
    e = ENVS[kind]
    named = os.environ.get(e['var'])
    if named:
        if Path(named).exists(): return Path(named), ''
        return None, f'{e["var"]} names a Python that does not exist ({named}); ' + _how(kind)
    d = refenv_dir() / kind
    if (d / '.ready').exists(): return d / 'bin' / 'python', ''
    if d.exists(): return None, f'the {kind} reference environment in build/refenv/{kind} is incomplete (being made, or failed); ' + _how(kind)
    return None, f'no {kind} reference environment; ' + _how(kind)


def llama_cpp_sdist():
    "`(path, '')` of the llama-cpp-python sdist (llama.cpp's converter is inside it), or `(None, how to get it)`."
    named = os.environ.get('ORCD_LLAMA_CPP_SDIST')
    if named and Path(named).is_file(): return Path(named), ''
    found = sorted((refenv_dir() / 'dl').glob(f'llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz'))
    if found: return found[0], ''
    return None, (f'the llama-cpp-python {LLAMA_CPP_VERSION} sdist was not found; run `python scripts/make_reference_envs.py '
                  f'llama-cpp` (it keeps one in build/refenv/dl/), or set ORCD_LLAMA_CPP_SDIST to the .tar.gz')


def ggml_lib():
    "`(path, '')` of llama.cpp's libggml-base.so, or `(None, how to get it)`."
    named = os.environ.get('ORCD_GGML_LIB')
    if named: return (Path(named), '') if Path(named).is_file() else (None, f'ORCD_GGML_LIB names no file ({named})')
    found = sorted(glob.glob(str(refenv_dir() / 'llama-cpp' / 'lib' / 'python3*' / 'site-packages' / 'llama_cpp' / 'lib' /
                                 'libggml-base.so')))
    if found and (refenv_dir() / 'llama-cpp' / '.ready').exists(): return Path(found[0]), ''
    return None, "llama.cpp's libggml-base.so was not found; " + _how('llama-cpp') + ' (or set ORCD_GGML_LIB to the library)'


def _run(cmd, **kw):
    print('+', ' '.join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


def make(kind, base_python=sys.executable):
    "Create (or complete) reference environment `kind` under `refenv_dir()`."
    e, d = ENVS[kind], refenv_dir() / kind
    t0 = time.monotonic()
    if not (d / 'bin' / 'python').exists(): _run([base_python, '-m', 'venv', d])
    py = d / 'bin' / 'python'
    _run([py, '-m', 'pip', 'install', '--quiet', '--upgrade', 'pip'])
    env = {**os.environ, 'CMAKE_BUILD_PARALLEL_LEVEL': str(os.cpu_count() or 1)}
    extra = ['--no-binary', e['no_binary']] if e['no_binary'] else []
    try: _run([py, '-m', 'pip', 'install', *extra, *e['packages']], env=env)
    except subprocess.CalledProcessError:
        if kind == 'torch':
            sys.exit('pip could not install the torch environment. torch==2.13.0+cpu is the CPU build of PyTorch: point pip '
                     'at a source of PyTorch CPU wheels (its --index-url / --find-links, or PIP_FIND_LINKS=DIR) and run again.')
        sys.exit('pip could not build llama-cpp-python from its sdist: it needs a C/C++ compiler (and cmake, which pip '
                 'fetches when missing); see the lines above.')
    if kind == 'llama-cpp':
        _run([py, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', f'llama-cpp-python=={LLAMA_CPP_VERSION}',
              '-d', refenv_dir() / 'dl'])
    _run([py, '-c', e['check']])
    (d / '.ready').write_text(' '.join(e['packages']) + '\n')   # what reference_python() looks for
    print(f'{kind}: ready in {time.monotonic() - t0:.0f} s: {py}')


def report():
    "Say what each test and script will find; return True when everything is there."
    ok = True
    for kind in ENVS:
        p, why = reference_python(kind)
        print(f'{ENVS[kind]["var"]:24} {p or "missing: " + why}'); ok &= p is not None
    for var, (p, why) in (('ORCD_LLAMA_CPP_SDIST', llama_cpp_sdist()), ('ORCD_GGML_LIB', ggml_lib())):
        print(f'{var:24} {p or "missing: " + why}'); ok &= p is not None
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('envs', nargs='*', metavar='ENV', help=f'any of {", ".join(ENVS)} (default: all)')
    ap.add_argument('--check', action='store_true', help='make nothing; report what is found')
    ap.add_argument('--python', default=sys.executable, help='the Python the venvs are made from (default: this one)')
    a = ap.parse_args(argv)
    bad = [x for x in a.envs if x not in ENVS]
    if bad: ap.error(f'unknown environment {bad[0]!r}: choose from {", ".join(ENVS)}')
    if not a.check:
        for kind in a.envs or list(ENVS): make(kind, a.python)
    return 0 if report() else 1


if __name__ == '__main__':
    sys.exit(main())
