"""A small stand-in for `orcd.engine.Engine` with the same interface (docs/interfaces.md), used only by the
fast server protocol tests (timing, cancel, concurrency, back-pressure): it produces tokens at a chosen
pace without any model, so those tests run in seconds on 2 cores.

Tokens are UTF-8 bytes (ids 0..255) plus three specials, so multi-byte characters really arrive split
across tokens and the server's streaming path has to keep them whole. Output is a deterministic function
of (prompt, seed, temperature); `stop` strings end the output like the real engine's stop rule.

Run as a script it serves the fake through `orcd.server.serve` (what the tests start as a subprocess):
    python tests/fake_engine.py --port 8123 [--delay 0.01] [--chunk 1] [--max-queue 8] ...
"""
import argparse, codecs, hashlib, random, sys, threading, time
from types import SimpleNamespace

from orcd.engine import SamplingParams, TokenEvent
from orcd import errors

SPECIALS = {256: '</s>', 257: '<|im_start|>', 258: '<|im_end|>'}
WORDS = ['hello', 'world', '世界', 'tokens', '🙂', 'stream', 'café', 'naïve', 'ok', '数据', '👍🏽', 'fast']


class FakeStream:
    def __init__(self): self.dec = codecs.getincrementaldecoder('utf-8')('replace')
    def push(self, i): return self.dec.decode(bytes([i])) if i < 256 else ''
    def flush(self, incomplete='replace'):
        out = self.dec.decode(b'', final=True) if incomplete == 'replace' else ''
        self.dec.reset(); return out


class FakeTokenizer:
    kind = 'fake-bytes'; vocab_size = 259; bos_id = None; eos_id = 256; eot_ids = {256, 258}
    add_bos = False; add_eos = False; padding_ids = set()

    def encode(self, text, add_special=True, parse_special=False):
        ids, rest = [], text
        while rest:
            if parse_special:
                hit = next(((i, s) for i, s in SPECIALS.items() if rest.startswith(s)), None)
                if hit: ids.append(hit[0]); rest = rest[len(hit[1]):]; continue
            ids.extend(rest[0].encode('utf-8')); rest = rest[1:]
        return ids

    def token_bytes(self, i): return SPECIALS[i].encode() if i in SPECIALS else bytes([i])
    def decode(self, ids, special=True):
        return b''.join(self.token_bytes(i) for i in ids if special or i < 256).decode('utf-8', 'replace')
    def stream(self): return FakeStream()

    def apply_chat_template(self, messages, add_generation_prompt=True):
        s = ''.join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return s + ('<|im_start|>assistant\n' if add_generation_prompt else '')
    def encode_chat(self, messages, add_generation_prompt=True):
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), parse_special=True)


class FakeBackend:
    "The backend contract's reporting side (`n_ctx`, `memory_bytes`, `status()`); `vram` pretends to be a GPU."
    def __init__(self, n_ctx, vram=None):
        self.n_ctx, self.memory_bytes, self.healthy, self.reason, self.vram = n_ctx, 1234, True, None, vram
    def status(self):
        return dict(healthy=self.healthy, reason=self.reason, vram_bytes_used=None if self.vram is None else self.vram[0],
                    vram_bytes_total=None if self.vram is None else self.vram[1])


class FakeEngine:
    """`delay`: seconds per generated token; `prefill`: seconds before the first; `chunk`: each token's text
    is repeated this many times (big events for back-pressure tests); `eos_after`: emit EOS after this many
    tokens (None: only max_tokens ends); `n_ctx`: context length; `fail`: {job number (1 = the first job):
    (error class name in orcd.errors, after how many tokens)}, e.g. {2: ('CUDAFaultError', 3)}; `vram`: (used, total)."""
    def __init__(self, delay=0.0, prefill=0.0, chunk=1, eos_after=None, n_ctx=4096, fail=None, vram=None):
        self.delay, self.prefill, self.chunk, self.eos_after, self.fail = delay, prefill, chunk, eos_after, dict(fail or {})
        self.tokenizer = FakeTokenizer()
        self.model_name = 'fake-model'
        self.device = 'cpu' if vram is None else 'cuda:0'
        self.meta = SimpleNamespace(architecture='fake', context_length=n_ctx, vocab_size=259, file_type_name='F32',
                                    name='fake-model')
        self.backend = FakeBackend(n_ctx, vram)
        self.produced = 0  # tokens produced over the engine's life (the tests read it in-process)
        self.jobs = 0      # generate() calls that started running

    def info(self):
        return dict(model=self.model_name, path=None, architecture='fake', quant='F32', device=self.device,
                    backend='FakeBackend', tokenizer_kind='fake-bytes', vocab_size=259, context_length=self.backend.n_ctx,
                    model_context_length=self.backend.n_ctx, memory_bytes=self.backend.memory_bytes)

    def _text(self, prompt_ids, params):
        if params.temperature == 0: key = bytes(i % 256 for i in prompt_ids[-64:])
        else: key = f"{params.seed}".encode() + bytes(i % 256 for i in prompt_ids[-64:])
        rng = random.Random(hashlib.sha256(key).digest())
        while True: yield rng.choice(WORDS) + ' '

    def generate(self, prompt, params, chat=False, cancel=None):
        tok = self.tokenizer
        if chat: ids = tok.encode_chat(chat if isinstance(chat, list) else [{'role': 'user', 'content': prompt}])
        elif isinstance(prompt, str): ids = tok.encode(prompt)
        else: ids = list(prompt)
        if len(ids) >= self.backend.n_ctx: raise errors.ContextOverflowError(f'prompt of {len(ids)} tokens exceeds the context')
        params.validate()
        return self._run(ids, params, cancel)

    def _run(self, ids, params, cancel):
        tok = self.tokenizer
        self.jobs += 1
        fail = self.fail.get(self.jobs)
        t0 = time.perf_counter()
        if self.prefill: time.sleep(self.prefill)
        words, out_ids, dec, text, sent = self._text(ids, params), [], tok.stream(), '', 0
        stops = tuple(params.stop or ())
        pending = b''
        nlp = params.logprobs
        def lp(i):   # the engine's contract: with `logprobs`, each token's log-probability and its best alternatives
            if nlp is None: return {}
            return dict(logprob=-0.5, top_logprobs=[(i, -0.5)] + [((i + j) % 256, -1.0 - j) for j in range(1, nlp)][:max(0, nlp - 1)]
                        if nlp else [])
        for n in range(params.max_tokens):
            if fail is not None and n == fail[1]: raise getattr(errors, fail[0])(f'fake {fail[0]} at token {n}')
            if cancel is not None and cancel.is_set():
                yield TokenEvent('', None, n, 'cancelled', len(ids), time.perf_counter() - t0); return
            if self.delay: time.sleep(self.delay)
            if self.eos_after is not None and n >= self.eos_after:
                yield TokenEvent(text[sent:], 256, n, 'eos', len(ids), time.perf_counter() - t0, eog=True, **lp(256)); return
            if not pending: pending = next(words).encode() * self.chunk if self.chunk > 1 else next(words).encode()
            if self.chunk > 1: i, piece, pending = pending[0], pending.decode('utf-8', 'replace'), b''
            else: i, pending = pending[0], pending[1:]; piece = dec.push(i)
            self.produced += 1
            # stop rule on the unsent tail only (a real engine keeps no more than that either)
            text = text[sent:] + piece; sent = 0
            for s in stops:
                k = text.find(s)
                if k >= 0:
                    yield TokenEvent(text[:k], i, n, 'stop_sequence', len(ids), time.perf_counter() - t0, **lp(i)); return
            hold = max((j for s in stops for j in range(1, len(s)) if text.endswith(s[:j])), default=0)
            last = n == params.max_tokens - 1
            out = text if last else text[:len(text) - hold]
            sent = len(out)
            yield TokenEvent(out, i, n, 'length' if last else None, len(ids), time.perf_counter() - t0, **lp(i))

# ---- helpers the server tests share: a real uvicorn process on a free loopback port ----------------------------
import contextlib, json as _json, os, signal, socket, subprocess, tempfile
from pathlib import Path

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

class ServerProc:
    "A server subprocess: `.url`, `.proc`, `.pid`, `.log()`; always stopped by `stop()` (SIGTERM, then SIGKILL)."
    def __init__(self, cmd, port, env=None, ready_timeout=30.0):
        import httpx
        self.port, self.url = port, f'http://127.0.0.1:{port}'
        self.logf = tempfile.TemporaryFile('w+')
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     cwd=Path(__file__).resolve().parent.parent)
        self.pid = self.proc.pid
        t_end = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None: raise RuntimeError(f'server exited with {self.proc.returncode}:\n{self.log()}')
            try:
                if httpx.get(self.url + '/health', timeout=1).status_code in (200, 503): break
            except httpx.HTTPError: pass
            if time.monotonic() > t_end: self.stop(); raise RuntimeError(f'server not ready in {ready_timeout} s:\n{self.log()}')
            time.sleep(0.1)

    def log(self):
        if self.logf.closed: return self._log
        self.logf.flush(); self.logf.seek(0); return self.logf.read()

    def rss(self):
        import psutil
        return psutil.Process(self.pid).memory_info().rss

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(timeout)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(5)
        if not self.logf.closed: self._log = self.log(); self.logf.close()
        return self.proc.returncode

@contextlib.contextmanager
def fake_server(*args):
    "A fake-engine server (`python tests/fake_engine.py --port P ARGS`), stopped on exit."
    port = free_port()
    s = ServerProc([sys.executable, str(Path(__file__).resolve()), '--port', str(port), *map(str, args)], port)
    try: yield s
    finally: s.stop()

@contextlib.contextmanager
def real_server(model, *args, ready_timeout=120.0, env=None):
    "`orcd serve MODEL --port P ARGS` (the real CLI path), stopped on exit."
    port = free_port()
    s = ServerProc([sys.executable, '-c', 'import sys, orcd.cli; sys.exit(orcd.cli.main())', 'serve', str(model), '--port', str(port), *map(str, args)], port,
                   env=env, ready_timeout=ready_timeout)
    try: yield s
    finally: s.stop()

def sse_events(client, url, body, headers=None, timeout=60.0):
    "POST `body` to `url` and return the SSE events as [(event, data-dict)], checking the raw bytes are strict UTF-8."
    raw = bytearray()
    with client.stream('POST', url, json=body, headers=headers or {}, timeout=timeout) as r:
        if r.status_code != 200:
            r.read(); return r.status_code, r.json(), r.headers
        for chunk in r.iter_bytes():
            raw += chunk
    text = raw.decode('utf-8')  # strict: raises on any invalid byte
    evs = []
    for block in text.replace('\r\n', '\n').split('\n\n'):
        ev, data = None, []
        for line in block.split('\n'):
            if line.startswith('event:'): ev = line[6:].strip()
            elif line.startswith('data:'): data.append(line[5:].lstrip(' '))
        if ev: evs.append((ev, _json.loads('\n'.join(data))))
    return 200, evs, r.headers


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--delay', type=float, default=0.005)
    p.add_argument('--prefill', type=float, default=0.0)
    p.add_argument('--chunk', type=int, default=1)
    p.add_argument('--eos-after', type=int, default=None)
    p.add_argument('--max-queue', type=int, default=8)
    p.add_argument('--inference-timeout', type=float, default=300.0)
    p.add_argument('--stall-timeout', type=float, default=30.0)
    p.add_argument('--drain-timeout', type=float, default=30.0)
    p.add_argument('--stream-buffer', type=int, default=64)
    p.add_argument('--api-key', default=None)
    p.add_argument('--fail', nargs=3, metavar=('JOB', 'ERROR', 'AFTER'), default=None,
                   help='job JOB (1 = first) raises orcd.errors.ERROR after AFTER tokens')
    a = p.parse_args(argv)
    from orcd.server import create_app, serve, setup_logging
    setup_logging()
    fail = {int(a.fail[0]): (a.fail[1], int(a.fail[2]))} if a.fail else None
    eng = FakeEngine(delay=a.delay, prefill=a.prefill, chunk=a.chunk, eos_after=a.eos_after, fail=fail)
    app = create_app(eng, api_key=a.api_key, inference_timeout=a.inference_timeout, max_queue=a.max_queue,
                     stall_timeout=a.stall_timeout, drain_timeout=a.drain_timeout, stream_buffer=a.stream_buffer)
    return serve(app, '127.0.0.1', a.port)


if __name__ == '__main__':
    sys.exit(main())
