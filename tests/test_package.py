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
