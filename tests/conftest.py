"""Shared pytest fixtures. Real models come from `orcd.pull.resolve_model` (cached under ORCD_HOME); the reference
environments (llama.cpp, transformers) from `scripts/make_reference_envs.py`, whose lookup functions say, when one is
missing, how to make it: that text is the skip reason."""
import os, sys, pytest
from pathlib import Path

FIXTURES = Path(__file__).parent / 'fixtures'
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
from make_reference_envs import reference_python, ggml_lib  # noqa: E402  (the one place that finds them)

def real_model(name):
    "Path of a registry model, pulled (and verified) on first use."
    from orcd.pull import resolve_model
    return resolve_model(name)

@pytest.fixture(scope='session')
def fixtures_dir(): return FIXTURES
