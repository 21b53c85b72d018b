"""One decode step's kernels, each timed alone by Nsight Compute, beside the step as one graph: how much of the step
is the kernels themselves and how much the gaps between them (launch, drain, the wait for the kernel before).
    ncu --profile-from-start off --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
        python3 scripts/profile_step.py MODEL.gguf [--depth 0] > step.csv
Prints (to stderr) the fused steps in launch order and the decode breakdown (graph µs per kind, `step` the whole;
under ncu every launch is intercepted, so take those figures from a run without it, e.g. `orcd bench`); ncu's CSV
(stdout) has one row per kernel of the profiled step, in the same order."""
import argparse, sys
import numpy as np

def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('model')
    ap.add_argument('--depth', type=int, default=0, help='tokens in the cache before the profiled step')
    a = ap.parse_args(argv)
    import cupy
    from orcd.gguf import GGUFFile
    from orcd.cuda_backend import CUDABackend, decode_program, _fused, _put_state
    be = CUDABackend(GGUFFile(a.model), a.depth + 64)
    n = max(1, a.depth)
    be.prefill(np.random.default_rng(0).integers(0, min(be.hp.vocab_size, 30000), n))
    steps = [f'{s.op} {s.w or s.arg or ""}'.strip() + ('' if li is None else f' [{li}]') for s, li in _fused(be)]
    print('\n'.join(f'step {i:3d} {s}' for i, s in enumerate(steps)), file=sys.stderr)
    fns = decode_program(be)
    with be.stream:
        _put_state(be, 1, n)
        for f in fns: f()                                  # compile and warm up, outside the profiled range
        be.stream.synchronize()
        _put_state(be, 1, n)
        cupy.cuda.profiler.start()
        for f in fns: f()
        be.stream.synchronize()
        cupy.cuda.profiler.stop()
    br = be.decode_breakdown()
    print('breakdown (graph µs): ' + ', '.join(f'{k} {v:.1f}' for k, v in br.items()), file=sys.stderr)

if __name__ == '__main__':
    main()
