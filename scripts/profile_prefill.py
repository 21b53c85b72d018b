"""Where a prompt chunk's time goes on the host: building its launches (`program`: the lowering), issuing them, and
waiting for the GPU — for a model whose prompt is bound by the host (SmolLM2's 512-token chunk takes as long as Qwen's).
    python3 scripts/profile_prefill.py MODEL.gguf [--tokens 512] [--reps 5] [--top 25]
Prints the median ms of each part, the GPU's own time for the chunk (events), the number of kernel launches, and the
functions that take the host's time while the launches are issued (cProfile, cumulative)."""
import argparse, cProfile, io, pstats, statistics, time
import numpy as np

def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('model')
    ap.add_argument('--tokens', type=int, default=512)
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--top', type=int, default=25)
    a = ap.parse_args(argv)
    import cupy
    from orcd.gguf import GGUFFile
    from orcd.cuda_backend import CUDABackend, program
    be = CUDABackend(GGUFFile(a.model), a.tokens + 16)
    T = min(a.tokens, be.chunk)
    ids = np.random.default_rng(0).integers(0, min(be.hp.vocab_size, 30000), T).astype(np.int32)
    parts = dict(head=True, blocks=True, tail=False)
    be.prefill(ids)                                           # compile and warm up
    low, issue, total, gpu = [], [], [], []
    with be.stream:
        be.ids[:T].set(ids, stream=be.stream); be.pos[:T].set(np.arange(T, dtype=np.int32), stream=be.stream)
        be.pos0 = 0
        for _ in range(a.reps):
            be.stream.synchronize()
            e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
            t0 = time.perf_counter()
            fns = program(be, T, True, parts)
            t1 = time.perf_counter()
            e0.record(be.stream)
            for f in fns: f()
            e1.record(be.stream)
            t2 = time.perf_counter()
            e1.synchronize()
            t3 = time.perf_counter()
            low.append((t1 - t0) * 1e3); issue.append((t2 - t1) * 1e3); total.append((t3 - t0) * 1e3)
            gpu.append(cupy.cuda.get_elapsed_time(e0, e1))
        prof = cProfile.Profile()
        fns = program(be, T, True, parts)
        be.stream.synchronize()
        prof.enable()
        for f in fns: f()
        prof.disable()
        be.stream.synchronize()
    med = statistics.median
    print(f'{a.model.rsplit("/", 1)[-1]}: {be.hp.n_layers} layers, a chunk of {T} tokens, {len(fns)} steps; median of {a.reps}: '
          f'lowering {med(low):.2f} ms, issuing {med(issue):.2f} ms, all {med(total):.2f} ms; '
          f'GPU from first to last launch {med(gpu):.2f} ms')
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats('cumulative').print_stats(a.top)
    print('\n'.join(l for l in s.getvalue().splitlines() if l.strip())[:6000])

if __name__ == '__main__':
    main()
