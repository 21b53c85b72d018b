"""Greedy decode tok/s alone, timed as `orcd bench` times it, for several lookaheads (greedy tokens the engine asks
the backend for at once), the arms interleaved:

    python3 scripts/bench_decode.py MODEL [--device cuda] [--lookahead 1,4,16] [--tokens 128] [--reps 5] [--depth 0]
    python3 scripts/bench_decode.py MODEL --arms 4:1,4:4,8:8    (lookahead:steps per graph launch, CUDA backend)

What it is for: how much of a decode step's time is the host's round trip (read the ids back, hand them to the
engine, launch again), and A/B of two checkouts on one machine (run it twice with PYTHONPATH set to each)."""
import argparse, statistics, sys
import numpy as np
from orcd.engine import Engine, Sampler, SamplingParams
from orcd.bench import _decode_run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('model')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--lookahead', default='4', help='comma-separated lookaheads, each an arm')
    ap.add_argument('--arms', default=None, help='comma-separated LOOKAHEAD:STEPS_PER_GRAPH pairs (instead of --lookahead)')
    ap.add_argument('--tokens', type=int, default=128)
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--depth', type=int, default=0, help='prompt tokens before the timed decode (at least 8)')
    a = ap.parse_args(argv)
    arms = ([tuple(int(v) for v in x.split(':')) for x in a.arms.split(',')] if a.arms
            else [(int(x), None) for x in a.lookahead.split(',')])
    depth = max(8, a.depth)
    eng = Engine(a.model, device=a.device, n_ctx=depth + a.tokens + 8)
    be, nv = eng.backend, eng.tokenizer.vocab_size
    ids = np.random.default_rng(0).integers(0, nv, depth)
    greedy = Sampler(SamplingParams(temperature=0), vocab_limit=nv)
    got = {n: [] for n in arms}
    for r in range(a.reps + 1):                      # the first round warms up (capture, first launches)
        for n in arms:
            be.lookahead = n[0]
            if n[1] is not None: be.steps_per_graph = n[1]
            t = _decode_run(be, ids, a.tokens, greedy)
            if r: got[n].append(t)
    for n in arms:
        xs = got[n]
        what = f'lookahead {n[0]:3d}' + ('' if n[1] is None else f', {n[1]:2d} steps a graph')
        print(f'{what}: {statistics.median(xs):9.1f} tok/s (min {min(xs):.1f}, max {max(xs):.1f}, '
              f'{a.reps} runs of {a.tokens} tokens at depth {depth}) = {1e6 / statistics.median(xs):.1f} µs a token')
    return 0


if __name__ == '__main__':
    sys.exit(main())
