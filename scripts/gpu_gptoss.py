#!/usr/bin/env python3
"""gpt-oss-20b's full layout on the GPU (a file from `gguf-gptoss-header` + `gguf-skeleton fill`: random valid blocks):
it loads within a 24 GB budget with a 2,048-token context, decodes from the captured graph, and survives an
out-of-memory forced inside a request (then serves a 10-token request).

    python scripts/gpu_gptoss.py FILE.gguf"""
import sys, time
import numpy as np, cupy as cp
from orcd.gguf import GGUFFile
from orcd.cuda_backend import CUDABackend
from orcd.engine import Sampler, SamplingParams
from orcd.errors import VRAMOOMError

BUDGET = 24 * 10**9
gf = GGUFFile(sys.argv[1])
t0 = time.perf_counter()
be = CUDABackend(gf, 2048, max_vram=BUDGET)
st = be.status()
print(f'loaded in {time.perf_counter() - t0:.1f} s (weights {be.load_seconds:.1f} s, {be.mw.nbytes / 2**30:.2f} GiB); '
      f'plan {", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in be.plan.items())}; '
      f'vram_bytes_used {st["vram_bytes_used"]} ({st["vram_bytes_used"] / 2**30:.2f} GiB) <= budget {BUDGET / 2**30:.2f} GiB: '
      f'{st["vram_bytes_used"] <= BUDGET}; healthy {st["healthy"]}')
rng = np.random.default_rng(0)
ids = [int(i) for i in rng.integers(0, be.hp.vocab_size, 64)]
t = time.perf_counter(); lg = be.prefill(ids); cp.cuda.Device().synchronize()
print(f'prefill of 64 tokens: {(time.perf_counter() - t) * 1e3:.1f} ms; finite logits: {np.isfinite(lg).all()}')
s, tok = Sampler(SamplingParams(temperature=0)), int(np.argmax(lg))
tok = be.decode_sample(tok, len(ids), s)                  # eager, then captured
t = time.perf_counter()
for k in range(1, 129): tok = be.decode_sample(tok, len(ids) + k, s)
dt = time.perf_counter() - t
print(f'decode from the captured graph ({be._graph is not None}): {128 / dt:.1f} tok/s over 128 tokens')
pool = cp.get_default_memory_pool()
pool.free_all_blocks()
pool.set_limit(size=pool.total_bytes() + (1 << 20))       # no room left for a long prompt's temporaries
try:
    be.prefill([int(i) for i in rng.integers(0, be.hp.vocab_size, 2000)]); print('forced OOM: the prompt ran (no OOM)')
except VRAMOOMError as e: print(f'forced OOM: {e.code}: {str(e)[:120]}')
finally: pool.set_limit(size=0)
lg = be.prefill(ids[:10]); tok = int(np.argmax(lg)); out = []
for k in range(10): tok = be.decode_sample(tok, 10 + k, s); out.append(tok)
print(f'next request (10 prompt + 10 generated tokens) ok: {len(out) == 10 and be.status()["healthy"]}')
