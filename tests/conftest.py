"""Shared pytest fixtures. Real models come from `orcd.pull.resolve_model` (cached under ORCD_HOME)."""
import os, pytest
from pathlib import Path

FIXTURES = Path(__file__).parent / 'fixtures'

def real_model(name):
    "Path of a registry model, pulled (and verified) on first use."
    from orcd.pull import resolve_model
    return resolve_model(name)

@pytest.fixture(scope='session')
def fixtures_dir(): return FIXTURES
