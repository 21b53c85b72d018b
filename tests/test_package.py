"""`import orcd` (and the core modules) needs only numpy and gguf: heavier dependencies load lazily where used."""
import subprocess, sys

HEAVY = ['fastapi', 'uvicorn', 'sse_starlette', 'prometheus_client', 'tokenizers', 'regex', 'jinja2', 'tqdm',
         'cupy', 'torch', 'huggingface_hub', 'httpx']
CORE = ['orcd', 'orcd.gguf', 'orcd.quants', 'orcd.pull', 'orcd.cli', 'orcd.cuda', 'orcd.ops', 'orcd.adapters',
        'orcd.tokenizer', 'orcd.engine', 'orcd.bench']

PROG = f'''
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {HEAVY!r}: raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
for m in {CORE!r}: __import__(m)
print('ok')
'''


def test_core_modules_import_with_numpy_and_gguf_only():
    r = subprocess.run([sys.executable, '-c', PROG], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]


def test_the_blocker_blocks():
    "The check above can fail: importing the server pulls FastAPI, which the blocker refuses."
    prog = PROG.replace(f'for m in {CORE!r}', "for m in ['orcd.server']")
    r = subprocess.run([sys.executable, '-c', prog], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'blocked for this test' in r.stderr


def test_one_version():
    "`orcd --version`, `orcd.__version__` and the version in pyproject.toml's [tool.nbdev] agree."
    import tomllib
    from pathlib import Path
    import orcd
    cfg = tomllib.loads((Path(__file__).resolve().parent.parent / 'pyproject.toml').read_text())
    assert orcd.__version__ == cfg['tool']['nbdev']['version']
    r = subprocess.run([sys.executable, '-m', 'orcd.cli', '--version'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f'orcd {orcd.__version__}'


def test_no_absolute_path_of_this_machine_in_the_repository():
    "Nothing in the repository names where it was written: this checkout's path, the home directory, the dev machines' roots."
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split('\0')
    home = str(Path.home())
    banned = [str(root) + '/', *(f'/{d}/' for d in ('work', 'root'))] + ([home + '/'] if len(home) > 1 else [])
    hits = []
    for f in filter(None, files):
        p = root / f
        if f == '.gitignore' or not p.is_file() or p.stat().st_size > 4_000_000: continue
        text = p.read_bytes().decode('utf-8', 'replace')
        hits += [f'{f}: {b}' for b in banned if b in text]
    assert not hits, hits
