#!/usr/bin/env python3
"""Where a prompt chunk's mixture-of-experts block spends its time on the GPU (gpt-oss-20b's widths: 32 experts of
2880 x 2880 MXFP4, top-4, random weights and tokens; no model file needed). Each step of `MoE.prefill` (mode 'mma')
is timed alone with CUDA events, the device synchronised between steps, then the whole block without those
synchronisations. Prints a markdown table (pasted into nbs/06d_cuda_moe.ipynb).

    python scripts/bench_moe_prefill.py [--tokens 512] [--reps 5]
"""
import argparse, datetime
import numpy as np
import cupy as cp
from orcd import cuda_moe as M
from orcd.cuda_matvec import random_weight
from orcd.cuda_ops import act
from orcd.quants import MXFP4, F32
from bench_matvec import events_us as timed     # scripts/ is on the path of a script run from it


class Handle:
    "The little of a GGUF tensor handle that `MoE` reads: shape, ggml_type, numpy() (biases, router)."
    def __init__(self, a, shape, ggml_type): self.a, self.shape, self.ggml_type = a, shape, ggml_type
    def numpy(self): return self.a


def layer(rng, E=32, d=2880, ffn=2880, k=4):
    "A MoE of random weights at gpt-oss-20b's widths, and its device views."
    w, views = {}, {}
    def add(name, a, shape, t, dev=True):
        h = w[name] = Handle(a, shape, t)
        if dev: views[id(h)] = cp.asarray(a.view(np.uint8).reshape(-1))
    add('router', (rng.standard_normal((E, d)) * 0.02).astype(np.float32), (E, d), F32)
    add('router_b', np.zeros(E, np.float32), (E,), F32, dev=False)
    for n in ('gate', 'up', 'down'):
        rows, K = (d, ffn) if n == 'down' else (ffn, d)
        add(f'w_{n}_exps', random_weight(rng, MXFP4, E * rows, K), (E, rows, K), MXFP4)
        add(f'b_{n}_exps', (rng.standard_normal((E, rows)) * 0.1).astype(np.float32), (E, rows), F32, dev=False)
    return M.MoE(w, views, k, 'swiglu_oai')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tokens', type=int, default=512)
    ap.add_argument('--reps', type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    moe = layer(rng)
    T, k, n, d = a.tokens, moe.k, moe.ffn, moe.d
    X = cp.asarray(rng.standard_normal((T, d)).astype(np.float32))
    OUT = cp.empty_like(X)
    s = {}                                             # the intermediate values, step by step
    steps = [
        ('router (matmul)', lambda: s.update(logits=moe.router.matmul(X, cp.empty((T, moe.E), np.float32)))),
        ('top-k', lambda: s.update(tk=M.moe_topk(s['logits'], k, cp.empty((T, k), np.int32), cp.empty((T, k), np.float32)))),
        ('group and tile on the device (moe_sort)', lambda: s.update(g=M.moe_sort(s['tk'][0], moe.E))),
        ('gather rows, to float16', lambda: s.update(Xs=X[s['g'][0] // k].astype(np.float16))),
        ('moe_mma gate|up', lambda: s.update(GU=M.moe_mma(moe.w['gate'][0], moe.E, n, d, s['Xs'], s['g'][3],
                                                           cp.empty((T * k, 2 * n), np.float32), moe.bg, moe.w['up'][0], moe.bu))),
        ('activation', lambda: s.update(A=cp.empty((T * k, n), np.float32)) or act('swiglu_oai', s['GU'], s['A'], n, T * k)),
        ('activation to float16', lambda: s.update(A16=s['A'].astype(np.float16))),
        ('moe_mma down', lambda: s.update(Y=M.moe_mma(moe.w['down'][0], moe.E, d, n, s['A16'], s['g'][3],
                                                       cp.empty((T * k, d), np.float32), moe.bd))),
        ('weighted sum', lambda: M._combine(moe, s['Y'], s['tk'][1], s['g'][0], s['g'][1], OUT, bias=False)),
    ]
    dev = cp.cuda.runtime.getDeviceProperties(0)['name'].decode()
    print(f'# {dev}, {datetime.date.today()}: one MoE block of gpt-oss-20b widths, {T} tokens (top-{k} of {moe.E})')
    print('| step | µs |\n|---|---|')
    total = 0.0
    for name, f in steps:
        us = timed(f, a.reps)                          # earlier steps' results stay in `s`
        total += us
        print(f'| {name} | {us:.0f} |', flush=True)
    whole = timed(lambda: moe.prefill(X, OUT, mode='mma'), a.reps)
    print(f'| sum of the steps | {total:.0f} |\n| MoE.prefill (mma), as it runs | {whole:.0f} |')
    for mode in ('batched', 'per_expert'):
        print(f'| MoE.prefill ({mode}) | {timed(lambda: moe.prefill(X, OUT, mode=mode), max(1, a.reps // 2)):.0f} |', flush=True)


if __name__ == '__main__':
    main()
