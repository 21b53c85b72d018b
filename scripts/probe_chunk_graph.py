"""A prompt chunk issued eagerly from Python against the same chunk captured into a CUDA graph and replayed (what
06c's prompt graphs save), and whether the replay leaves the KV cache as the eager run did.
    python3 scripts/probe_chunk_graph.py MODEL.gguf [T]
(Session 12 measured this with its own ctypes cublasGemmEx; 06a's `_gemm` now calls cuBLAS that way itself.)"""
import sys, time, statistics, numpy as np, cupy
from orcd.gguf import GGUFFile
from orcd.cuda_backend import CUDABackend, program, capture
model, T = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 512
be = CUDABackend(GGUFFile(model), T + 16, graphs=False)          # (its own prompts eager: this script captures)
ids = np.random.default_rng(0).integers(0, min(be.hp.vocab_size, 30000), T).astype(np.int32)
be.prefill(ids)
with be.stream:
    be.ids[:T].set(ids, stream=be.stream); be.pos[:T].set(np.arange(T, dtype=np.int32), stream=be.stream); be.pos0 = 0
    fns = program(be, T, True, dict(head=True, blocks=True, tail=False))
    for f in fns: f()
    be.stream.synchronize(); ref = be.kc.get(), be.vc.get()
    eager = []
    for _ in range(5):
        t0 = time.perf_counter(); [f() for f in fns]; be.stream.synchronize(); eager.append((time.perf_counter() - t0) * 1e3)
    be.kc.fill(0); be.vc.fill(0)
    g = capture(be, fns)
    g.launch(be.stream); be.stream.synchronize()
    same = all(np.array_equal(a, b.get()) for a, b in zip(ref, (be.kc, be.vc)))
    rep = []
    for _ in range(5):
        t0 = time.perf_counter(); g.launch(be.stream); be.stream.synchronize(); rep.append((time.perf_counter() - t0) * 1e3)
print(f'{model.rsplit("/", 1)[-1]}: a {T}-token chunk, {len(fns)} steps: eager (issue + wait) {statistics.median(eager):.2f} ms, '
      f'captured graph replay {statistics.median(rep):.2f} ms; KV cache after the replay equals eager: {same}')
