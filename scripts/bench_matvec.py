#!/usr/bin/env python3
"""Decode matvec benchmark on the GPU: v1 and v2 (orcd.cuda_matvec) on the real models' weight shapes, against the
card's measured device-to-device copy bandwidth; one Qwen2.5-0.5B decode step's matvecs captured as one CUDA graph;
the prefill matmul at T = 512 and the dequantisation before it; a prompt chunk's expert products (moe_mma). Prints markdown tables (pasted into nbs/06a_cuda_matvec.ipynb).

Timing: every figure is a CUDA graph of many calls replayed several times (so Python's launch cost is out, as in
the backend, which captures its decode step), timed with CUDA events. Each matvec cycles through enough copies of
its weight that they do not fit in the 50 MB L2: the bytes come from HBM, as in a real decode step.
GB/s = weight bytes read per call / time per call.

    python scripts/bench_matvec.py            # shapes, the Qwen step, matmul
    python scripts/bench_matvec.py --sweep    # also the launch-shape sweep (warps x batch x threads per row)
"""
import argparse, datetime, itertools, math, sys, time
import numpy as np
import cupy as cp
from orcd import cuda_matvec as cm
from orcd.cuda_moe import EXPERT_PLAN, ExpertMV, emv_stage, emv_region
from orcd.quants import F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4, QUANT_TYPES

N = {t: QUANT_TYPES[t].name for t in QUANT_TYPES}
SHAPES = [  # (model, what, type, rows, K)
    ('Qwen2.5-0.5B', 'attn_q', Q5_0, 896, 896), ('Qwen2.5-0.5B', 'attn_k', Q5_0, 128, 896),
    ('Qwen2.5-0.5B', 'attn_v', Q8_0, 128, 896), ('Qwen2.5-0.5B', 'ffn_gate/up', Q5_0, 4864, 896),
    ('Qwen2.5-0.5B', 'ffn_down', Q4_K, 896, 4864), ('Qwen2.5-0.5B', 'ffn_down', Q6_K, 896, 4864),
    ('Qwen2.5-0.5B', 'output', Q8_0, 151936, 896),
    ('SmolLM2-135M', 'attn_q/o', Q4_1, 576, 576), ('SmolLM2-135M', 'attn_k/v', Q4_1, 192, 576),
    ('SmolLM2-135M', 'ffn_gate/up', Q4_1, 1536, 576), ('SmolLM2-135M', 'ffn_down', Q4_1, 576, 1536),
    ('SmolLM2-135M', 'output', Q8_0, 49152, 576),
    ('Gemma-3-270M', 'attn_q', Q5_0, 1024, 640), ('Gemma-3-270M', 'attn_k/v', Q5_0, 256, 640),
    ('Gemma-3-270M', 'attn_output', Q4_K, 640, 1024), ('Gemma-3-270M', 'ffn_gate/up', Q5_0, 2048, 640),
    ('Gemma-3-270M', 'ffn_down', Q6_K, 640, 2048), ('Gemma-3-270M', 'output', Q8_0, 262144, 640),
    ('gpt-oss-20b', 'attn_q', Q8_0, 4096, 2880), ('gpt-oss-20b', 'attn_output', Q8_0, 2880, 4096),
    ('gpt-oss-20b', 'attn_k/v', Q8_0, 512, 2880), ('gpt-oss-20b', 'expert', MXFP4, 2880, 2880),
    ('Phi-3-mini', 'attn_qkv', Q4_K, 9216, 3072), ('Phi-3-mini', 'attn_output', Q5_K, 3072, 3072),
    ('Phi-3-mini', 'ffn_down', Q6_K, 3072, 8192), ('Phi-3-mini', 'ffn_up', Q5_K, 16384, 3072),
    ('Phi-3-mini F16', 'attn_qkv', F16, 9216, 3072), ('Phi-3-mini BF16', 'ffn_down', BF16, 3072, 8192),
    ('(F32)', '896x896', F32, 896, 896), ('(Q4_0)', 'ffn', Q4_0, 4864, 896), ('(Q5_1)', 'ffn', Q5_1, 4864, 896),
]
SWEEP = [(Q4_K, 896, 4864), (Q6_K, 896, 4864), (Q8_0, 151936, 896), (MXFP4, 2880, 2880), (Q5_0, 4864, 896)]
COLD_BYTES = 200 << 20       # weight copies cycled per measurement (4x the L2)


def graph_us(calls, replays=5):
    "µs per call: `calls` (callables) captured as one CUDA graph, replayed `replays` times."
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        calls[0]()
        s.begin_capture()
        for c in calls: c()
        g = s.end_capture()
        g.launch(s)
        s.synchronize()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(s)
        for _ in range(replays): g.launch(s)
        e1.record(s)
        e1.synchronize()
    return cp.cuda.get_elapsed_time(e0, e1) * 1e3 / (replays * len(calls))


def events_us(f, reps=5):
    "µs per call of f (eager launches from Python), after one warm-up call, by CUDA events on the current stream."
    f(); cp.cuda.get_current_stream().synchronize()
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    e0.record()
    for _ in range(reps): f()
    e1.record(); e1.synchronize()
    return cp.cuda.get_elapsed_time(e0, e1) * 1e3 / reps


def copy_bandwidth(n=1 << 30, reps=10):
    "Device-to-device copy: bytes read + written per second."
    a, b = cp.ones(n, cp.uint8), cp.empty(n, cp.uint8)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        for i in range(reps + 1):
            if i == 1: e0 = cp.cuda.Event(); e0.record(s)
            cp.cuda.runtime.memcpyAsync(b.data.ptr, a.data.ptr, n, cp.cuda.runtime.memcpyDeviceToDevice, s.ptr)
        e1 = cp.cuda.Event(); e1.record(s); e1.synchronize()
    t = cp.cuda.get_elapsed_time(e0, e1) / 1e3
    del a, b
    return 2 * n * reps / t


def launch_floor():
    "µs per launch of an empty kernel, 200 in a graph: the per-kernel cost no matvec avoids (without PDL)."
    k = cp.RawKernel('extern "C" __global__ void empty() {}', 'empty')
    return graph_us([lambda: k((1,), (32,), ())] * 200, replays=10)


def copies(wd, n):
    return [wd] + [wd.copy() for _ in range(n - 1)]


def v2_us(wd, rows, t, K, x, y, **kw):
    n = max(1, min(400, math.ceil(COLD_BYTES / wd.nbytes)))
    lins = [cm.Linear([(w, rows, t)], K, **kw) for w in copies(wd, n)]
    reps = max(1, 200 // n)
    return graph_us([(lambda l=l: l(x, y)) for l in lins] * reps), lins[0]


def v1_us(wd, rows, t, K, x, y):
    if t not in cm.MATVEC_KERNELS: return None
    n = max(1, min(400, math.ceil(COLD_BYTES / wd.nbytes)))
    ws = copies(wd, n)
    return graph_us([(lambda w=w: cm.matvec(w, x, rows, t, y=y)) for w in ws] * max(1, 200 // n))


def shapes_table(copy_bw):
    rng = np.random.default_rng(0)
    print('\n| model | weight | type | rows x K | MB | v1 µs | v1 GB/s | v2 8-bit x µs | GB/s | v2 16-bit x µs | GB/s '
          '| 16-bit / copy | max abs err | max err / (|W||x\'|) |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for model, what, t, rows, K in SHAPES:
        w = cm.random_weight(rng, t, rows, K)
        wd = cp.asarray(w)
        xh = rng.standard_normal(K).astype(np.float32)
        x, y = cp.asarray(xh), cp.empty(rows, np.float32)
        us8, _ = v2_us(wd, rows, t, K, x, y, bits=8)
        us16, lin = v2_us(wd, rows, t, K, x, y, bits=16)
        if wd.nbytes > 100e6: big_check(lin, wd, t, rows, K, xh)
        got = cp.asnumpy(lin(x, y))
        r = min(rows, 4096)
        ref, mag, _ = cm.linear_ref([(w[:r * (w.size // rows)], r, t)], xh, bits=16)
        err = np.abs(got[:r] - ref)
        us1 = v1_us(wd, rows, t, K, x, y)
        gb = wd.nbytes / 1e9
        v1 = f'{us1:.1f} | {gb / us1 * 1e6:.0f}' if us1 else '– | –'
        print(f'| {model} | {what} | {N[t]} | {rows}x{K} | {wd.nbytes / 1e6:.2f} | {v1} | {us8:.1f} | {gb / us8 * 1e6:.0f} '
              f'| {us16:.1f} | {gb / us16 * 1e6:.0f} | {gb / us16 * 1e15 / copy_bw:.2f} | {err.max():.1e} | {np.max(err / mag):.1e} |',
              flush=True)
        del wd, lin
        cp.get_default_memory_pool().free_all_blocks()


def experts_table(copy_bw, sweep=False, profile=False, bits=None):
    """gpt-oss's decode expert products: 4 of 32 MXFP4 experts chosen by ids in device memory (expert_linear).
    sweep: also warps x U x G for each product; profile: only one direct call of each (for ncu)."""
    rng = np.random.default_rng(1)
    E, k, d, n = 32, 4, 2880, 2880
    gh, uh, dh = (cm.random_weight(rng, MXFP4, E * r, K) for r, K in ((n, d), (n, d), (d, n)))
    xh, ah = rng.standard_normal(d).astype(np.float32), rng.standard_normal(k * n).astype(np.float32)
    choices = [rng.choice(E, k, replace=False).astype(np.int32) for _ in range(8)]   # 8 choices: beyond the L2
    plans = EXPERT_PLAN[MXFP4]                 # the launch shapes the MoE layer uses (06d)
    if profile:
        for (parts, K, xin, pe), plan in zip((([(gh, n), (uh, n)], d, xh, False), ([(dh, d)], n, ah, True)), plans):
            lin = cm.expert_linear([(cp.asarray(w), E, r, MXFP4) for w, r in parts], K, cp.asarray(choices[0]),
                                   per_expert_x=pe, **plan)
            print(repr(lin)); lin(cp.asarray(xin), cp.empty(lin.rows, np.float32)); cp.cuda.Device().synchronize()
            mv = ExpertMV([(cp.asarray(w), E, r, MXFP4) for w, r in parts], K, cp.asarray(choices[0]), per_expert_x=pe)
            print(repr(mv)); mv(cp.asarray(xin), cp.empty(mv.rows, np.float32)); cp.cuda.Device().synchronize()
            # as the MoE layer runs them: gate|up by expert_mv_k2880x (x quantised in each CTA), down by expert_mv_k2880
            # from emv_stage's regions
            mv = ExpertMV([(cp.asarray(w), E, r, MXFP4) for w, r in parts], K, cp.asarray(choices[0]), per_expert_x=pe,
                          staged=pe, k2880=True)
            xd = cp.asarray(xin)
            if pe: xd = emv_stage(xd, K, cp.zeros(k * emv_region(K), np.uint8))
            print(repr(mv)); mv(xd, cp.empty(mv.rows, np.float32)); cp.cuda.Device().synchronize()
        return
    print('\n| gpt-oss experts (4 of 32, MXFP4) | kernel | rows x K each | MB read | µs | GB/s | / copy '
          '| max err / (|W||x\'|) | max err / max|ref| |')
    print('|---|---|---|---|---|---|---|---|---|')
    for ((what, parts, K, xin, pe), plan), (pair, pm) in itertools.product(zip(
            (('gate + up', [(gh, E, n), (uh, E, n)], d, xh, False), ('down', [(dh, E, d)], n, ah, True)), plans),
            ((None, False), (None, True), (False, False))):
        dev = [(cp.asarray(w), e, r, MXFP4) for w, e, r in parts]
        lins = [cm.expert_linear(dev, K, cp.asarray(c), per_expert_x=pe, bits=bits, pair=pair, **{**plan, 'part_major': pm})
                for c in choices]
        x, out = cp.asarray(xin), cp.empty(lins[0].rows, np.float32)
        us = graph_us([(lambda l=l: l(x, out)) for l in lins] * 25)
        got = cp.asnumpy(lins[0](x, out))
        ref, mag, _ = cm.expert_linear_ref([(w, e, r, MXFP4) for w, e, r in parts], K, choices[0], xin, pe,
                                           bits=lins[0].bits)
        mb = sum(w.nbytes // e for w, e, r in parts) * k / 1e6
        kern = ('tMXFP4P (pair layout)' if lins[0].pair else 'tMXFP4') + (', part-major CTAs' if pm else '')
        print(f'| {what} | {kern} | {parts[0][2]}x{K} | {mb:.1f} | {us:.1f} | {mb / us * 1e3:.0f} | {mb * 1e12 / us / copy_bw:.2f} '
              f'| {np.max(np.abs(got - ref) / mag):.1e} | {np.abs(got - ref).max() / np.abs(ref).max():.1e} |  ({lins[0]!r})',
              flush=True)
        if pair is None and pm:                    # the dedicated kernel (06d), the input staged in each CTA and once
            nx = k if pe else 1
            for staged, split, k2880, pre in ((False, True, False, False), (False, True, True, False), (True, False, False, False),
                                              (True, True, False, False), (True, True, True, False), (True, True, True, True)):
                if k2880 and (K != 2880 or (pe and not staged)): continue
                mvs = [ExpertMV(dev, K, cp.asarray(c), per_expert_x=pe, staged=staged, split_last=split, k2880=k2880, pre=pre)
                       for c in choices]
                if pre and not mvs[0].pre: continue
                xin_d = emv_stage(x, K, cp.zeros(nx * emv_region(K), np.uint8)) if staged else x
                us = graph_us([(lambda m=m: m(xin_d, out)) for m in mvs] * 25)
                got = cp.asnumpy(mvs[0](xin_d, out))
                extra = ''
                if staged:
                    st = cp.zeros(nx * emv_region(K), np.uint8)
                    extra = f'; emv_stage of the input alone {graph_us([lambda: emv_stage(x, K, st)] * 200):.1f} µs'
                print(f'| {what} | ExpertMV ({"x staged once by emv_stage" if staged else "x staged in each CTA"}) '
                      f'| {parts[0][2]}x{K} | {mb:.1f} | {us:.1f} | {mb / us * 1e3:.0f} | {mb * 1e12 / us / copy_bw:.2f} '
                      f'| {np.max(np.abs(got - ref) / mag):.1e} | {np.abs(got - ref).max() / np.abs(ref).max():.1e} |  '
                      f'({mvs[0]!r}{extra})', flush=True)
        if pair is None and pm: read_floor(dev, choices, mb, copy_bw)
        if not sweep or pair is False or pm: continue
        combos = [(w, u) for w in (4, 8, 16) for u in (1, 2, 3, 4)]
        cm.precompile([cm.v2_expr(w, [(MXFP4, u)], pair=True) for w, u in combos])
        res = []
        for (w, u), G, pmj in itertools.product(combos, (8, 16, 32, 64, 128), (False, True)):
            if G > 32 * w: continue
            ls = [cm.expert_linear(dev, K, cp.asarray(c), per_expert_x=pe, warps=w, tpr=G, unroll={MXFP4: u},
                                   part_major=pmj) for c in choices]
            us = graph_us([(lambda l=l: l(x, out)) for l in ls] * 25)
            err = np.max(np.abs(cp.asnumpy(ls[0](x, out)) - ref) / mag)
            res.append((us, w, u, G, ls[0]._grid, ls[0]._kernel.num_regs, err, pmj))
        res.sort(key=lambda r: r[0])
        for r in res[:8]: print(f'    {r[0]:6.1f} µs {mb / r[0] * 1e3:5.0f} GB/s  warps={r[1]:2d} U={r[2]} G={r[3]:3d} grid={r[4]} '
                                f'regs={r[5]}{" part-major" if r[7] else ""} max err/(|W||x\'|) {r[6]:.1e}')
        print(f'    every config within 1e-5 of |W||x\'|: {all(r[6] <= 1e-5 for r in res)}')
        print(f'    worst {res[-1][0]:.1f} µs warps={res[-1][1]} U={res[-1][2]} G={res[-1][3]}', flush=True)


READ4 = r'''
extern "C" __global__ void read4(const int4* __restrict__ w, const int* __restrict__ ids, long long stride16, int n16,
                                 int* __restrict__ out) {
    // expert ids[blockIdx.y]'s n16 16-byte words, read once by the CTAs of row y; their xor kept from elimination
    const int4* e = w + (long long)ids[blockIdx.y] * stride16;
    int acc = 0;
#pragma unroll 4
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += gridDim.x * blockDim.x) {
        const int4 v = __ldg(e + i); acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x7fffffff) out[0] = acc;
}'''


def read_floor(dev, choices, mb, copy_bw):
    "The chosen experts' bytes read by a plain kernel (16-byte loads, no arithmetic), the same rotation: what a read of them costs."
    k = cp.RawKernel(READ4, 'read4')
    out, ids = cp.zeros(1, np.int32), [cp.asarray(c) for c in choices]
    def call(i, ctas):                                 # one launch per matrix (gate, up: two)
        for w, E, _, _ in dev:
            n16 = w.nbytes // E // 16
            k((ctas, i.size), (256,), (w, i, np.int64(n16), np.int32(n16), out))
    us, ctas = min((graph_us([(lambda i=i, c=c: call(i, c)) for i in ids] * 25), c) for c in (66, 132, 264, 528))
    print(f'|  | a plain read of the same bytes (16-byte loads, no arithmetic; {len(dev)} launch(es) of {ctas} x 4 CTAs) | '
          f'| {mb:.1f} | {us:.1f} | {mb / us * 1e3:.0f} | {mb * 1e12 / us / copy_bw:.2f} | | |', flush=True)


def big_check(lin, wd, t, rows, K, xh):
    "A big weight: every row against dequantise + cuBLAS on the GPU, and one direct call timed with events."
    q, d = cm.quantize_x_ref(xh, lin.bits)
    xq = cp.asarray((q.reshape(-1, 32) * d[:, None]).reshape(-1).astype(np.float32))
    W = cm.dequantize(wd, t, rows, K, np.float32)
    ref, mag = W @ xq, cp.abs(W) @ cp.abs(xq)
    del W
    x, y = cp.asarray(xh), cp.full(rows, np.nan, np.float32)
    lin(x, y)
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    e0.record(); lin(x, y); e1.record(); e1.synchronize()
    err = cp.abs(y - ref) / mag
    print(f'  ({rows}x{K} {N[t]}: all rows vs dequantise+cuBLAS: max err/(|W||x\'|) {float(err.max()):.1e}, '
          f'{int(cp.isnan(y).sum())} NaN; one direct call {cp.cuda.get_elapsed_time(e0, e1) * 1e3:.1f} µs)', flush=True)


def sweep():
    "warps x batch U x threads per row G (around the default plan) x CTAs per SM, on a few shapes."
    print('\n## Launch-shape sweep (µs per call; best first)')
    for t, rows, K in SWEEP:
        wd = cp.asarray(cm.random_weight(np.random.default_rng(0), t, rows, K))
        x, y = cp.asarray(np.random.default_rng(1).standard_normal(K).astype(np.float32)), cp.empty(rows, np.float32)
        default = v2_us(wd, rows, t, K, x, y, pdl=False)
        g0 = default[1].tpr[0]
        combos = [(w, u) for w in (4, 8, 16) for u in (1, 2, 4)]
        cm.precompile([cm.v2_expr(w, [(t, u)]) for w, u in combos])
        res = []
        for w, u in combos:
            for g in (g0 // 4, g0 // 2, g0, 2 * g0, 4 * g0):
                if not 1 <= g <= 32 * w: continue
                for cps in ((None, 1, 2) if rows < 3000 else (None,)):
                    us, lin = v2_us(wd, rows, t, K, x, y, warps=w, tpr=g, unroll={t: u}, ctas_per_sm=cps, pdl=False)
                    res.append((us, w, u, g, cps, lin._grid, lin._kernel.num_regs))
        res.sort(key=lambda r: r[0])
        gb = wd.nbytes / 1e9
        print(f'\n{N[t]} {rows}x{K} ({wd.nbytes / 1e6:.2f} MB): default {default[1]!r}: {default[0]:.2f} µs '
              f'({gb / default[0] * 1e6:.0f} GB/s), regs {default[1]._kernel.num_regs}')
        for us, w, u, g, cps, grid, regs in res[:8]:
            print(f'  {us:7.2f} µs {gb / us * 1e6:6.0f} GB/s  warps={w:2d} U={u} G={g:3d} ctas/SM={cps} grid={grid} regs={regs}')
        worst = res[-1]
        print(f'  worst: {worst[0]:.2f} µs warps={worst[1]} U={worst[2]} G={worst[3]} ctas/SM={worst[4]}', flush=True)
        del wd, default
        cp.get_default_memory_pool().free_all_blocks()


QWEN = dict(layers=24, d=896, ffn=4864, kv=128, vocab=151936)


def qwen_step():
    "One Qwen2.5-0.5B Q4_K_M decode step's matvecs (random weights of the real types), v2 and v1, as one graph each."
    L, d, f, kv, V = QWEN['layers'], QWEN['d'], QWEN['ffn'], QWEN['kv'], QWEN['vocab']
    def rnd(t, rows, K):   # random bytes: the timing does not depend on the values
        return cp.random.randint(0, 256, rows * K // QUANT_TYPES[t].block_size * QUANT_TYPES[t].type_size, dtype=np.uint8)
    x, x2 = cp.ones(d, np.float32), cp.ones(f, np.float32)
    yqkv, h, ygu, logits = (cp.zeros(n, np.float32) for n in (d + 2 * kv, d, 2 * f, V))
    layers = []
    for i in range(L):
        down_t = Q6_K if (i < L // 8 or i >= 7 * L // 8 or (i - L // 8) % 3 == 2) else Q4_K
        layers.append(dict(q=rnd(Q5_0, d, d), k=rnd(Q5_0, kv, d), v=rnd(Q8_0, kv, d), o=rnd(Q5_0, d, d),
                           g=rnd(Q5_0, f, d), u=rnd(Q5_0, f, d), down=(rnd(down_t, d, f), down_t)))
    out = rnd(Q8_0, V, d)
    total = sum(sum(w.nbytes for k, w in l.items() if k != 'down') + l['down'][0].nbytes for l in layers) + out.nbytes
    def v2_calls(pdl, bits=16):
        calls, kw = [], dict(pdl=pdl, bits=bits)
        for l in layers:
            qkv = cm.Linear([(l['q'], d, Q5_0), (l['k'], kv, Q5_0), (l['v'], kv, Q8_0)], d, **kw)
            o, gu = cm.Linear([(l['o'], d, Q5_0)], d, **kw), cm.Linear([(l['g'], f, Q5_0), (l['u'], f, Q5_0)], d, **kw)
            dn = cm.Linear([(l['down'][0], d, l['down'][1])], f, **kw)
            calls += [lambda a=qkv: a(x, yqkv), lambda a=o: a(x, h, accumulate=True), lambda a=gu: a(x, ygu),
                      lambda a=dn: a(x2, h, accumulate=True)]
        lo = cm.Linear([(out, V, Q8_0)], d, **kw)
        return calls + [lambda: lo(x, logits)]
    v1 = []
    for l in layers:
        for key, rows, t, xin in (('q', d, Q5_0, x), ('k', kv, Q5_0, x), ('v', kv, Q8_0, x), ('o', d, Q5_0, x),
                                  ('g', f, Q5_0, x), ('u', f, Q5_0, x)):
            v1.append(lambda w=l[key], r=rows, t=t, xi=xin: cm.matvec(w, xi, r, t, y=(ygu[:r] if r == f else h[:r] if r == d else yqkv[:r])))
        v1.append(lambda w=l['down'][0], t=l['down'][1]: cm.matvec(w, x2, d, t, y=h))
    v1.append(lambda: cm.matvec(out, x, V, Q8_0, y=logits))
    v2, v2p, v28 = v2_calls(False), v2_calls(True), v2_calls(True, bits=8)
    t2 = graph_us(v2, replays=100) * len(v2)
    tp = graph_us(v2p, replays=100) * len(v2p)
    t8 = graph_us(v28, replays=100) * len(v28)
    t1 = graph_us(v1, replays=100) * len(v1)
    print(f'\n## One Qwen2.5-0.5B decode step: {len(v1)} matvecs, {total / 1e6:.1f} MB of weights')
    print('| kernels | launches | µs per step | GB/s |')
    print('|---|---|---|---|')
    print(f'| v1 | {len(v1)} | {t1:.0f} | {total / t1 / 1e3:.0f} |')
    print(f'| v2 (q\\|k\\|v and gate\\|up stacked), 16-bit x | {len(v2)} | {t2:.0f} | {total / t2 / 1e3:.0f} |')
    print(f'| v2 + programmatic dependent launch, 8-bit x | {len(v28)} | {t8:.0f} | {total / t8 / 1e3:.0f} |')
    print(f'| v2 + programmatic dependent launch, 16-bit x | {len(v2p)} | {tp:.0f} | {total / tp / 1e3:.0f} |', flush=True)


def matmul_table():
    print('\n## Prefill matmul, T = 512 (dequantise + cublasGemmEx)')
    print('| weight | rows x K | mode | µs | TFLOP/s |')
    print('|---|---|---|---|---|')
    rng = np.random.default_rng(0)
    for what, spec, K in [('q|k|v', [(896, Q5_0), (128, Q5_0), (128, Q8_0)], 896), ('gate|up', [(4864, Q5_0)] * 2, 896),
                          ('down', [(896, Q4_K)], 4864), ('output', [(151936, Q8_0)], 896)]:
        lin = cm.Linear([(cp.asarray(cm.random_weight(rng, t, r, K)), r, t) for r, t in spec], K)
        X = cp.asarray(rng.standard_normal((512, K)).astype(np.float32))
        Y = cp.empty((512, lin.rows), np.float32)
        for mode in ('f16', 'tf32', 'f32'):
            lin.matmul(X, Y, mode=mode)
            cp.cuda.get_current_stream().synchronize()
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record()
            for _ in range(5): lin.matmul(X, Y, mode=mode)
            e1.record(); e1.synchronize()
            us = cp.cuda.get_elapsed_time(e0, e1) * 1e3 / 5
            print(f'| {what} | {lin.rows}x{K} | {mode} | {us:.0f} | {2 * 512 * lin.rows * K / us / 1e6:.1f} |', flush=True)


def dequant_table(copy_bw):
    "Prefill's dequantisation to float16 (cuda_matvec.dequantize): bytes read + written per second, against copy."
    print('\n## Dequantisation to float16 (prefill), bytes read + written')
    print('| weight | rows x K | kernel | µs | GB/s | / copy |')
    print('|---|---|---|---|---|---|')
    rng = np.random.default_rng(0)
    for what, t, rows, K in [('gpt-oss experts (10 of gate)', MXFP4, 10 * 2880, 2880), ('gpt-oss qkv', Q8_0, 5120, 2880),
                             ('Qwen gate', Q5_0, 4864, 896), ('Qwen down', Q4_K, 896, 4864)]:
        w = cp.asarray(cm.random_weight(rng, t, rows, K))
        out = cp.empty((rows, K), np.float16)
        cm.dequantize(w, t, rows, K, np.float16, out=out)
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        for _ in range(10): cm.dequantize(w, t, rows, K, np.float16, out=out)
        e1.record(); e1.synchronize()
        us = cp.cuda.get_elapsed_time(e0, e1) * 1e3 / 10
        nbytes = w.nbytes + out.nbytes
        kern = 'dequant_mxfp4_f16' if t == MXFP4 else 'dequant_f16'
        print(f'| {what} | {rows}x{K} {N[t]} | {kern} | {us:.0f} | {nbytes / us / 1e3:.0f} | {nbytes * 1e12 / us / 1e6 / copy_bw:.2f} |',
              flush=True)
        del w, out


def moe_mma_table():
    """A prompt chunk's expert products (gpt-oss-20b: 32 experts of 2880 x 2880 MXFP4, top-4) on the tensor cores from the
    blocks (cuda_moe.moe_mma), against dequantising every expert to float16 and one cuBLAS product per expert present."""
    from orcd import cuda_moe as M
    print('\n## Expert products of a prompt chunk (gpt-oss-20b, 32 experts, top-4): moe_mma vs dequantise + cuBLAS')
    print('| tokens | product | moe_mma_64 µs (TFLOP/s) | moe_mma_128 µs (TFLOP/s) | dequant + cuBLAS µs |')
    print('|---|---|---|---|---|')
    rng = np.random.default_rng(0)
    E, n, K = 32, 2880, 2880
    w = [cp.asarray(cm.random_weight(rng, MXFP4, E * n, K)) for _ in range(2)]
    for T in (512, 2048):
        counts = np.bincount(rng.integers(0, E, 4 * T), minlength=E); R = 4 * T
        X = cp.asarray(rng.standard_normal((R, K)), np.float16)
        starts = np.cumsum(counts) - counts
        for what, two in (('gate|up', True), ('down', False)):
            Y = cp.empty((R, (2 if two else 1) * n), np.float32)
            us = {bm: events_us(lambda: M.moe_mma(w[0], E, n, K, X, tiles, Y, None, w[1] if two else None, bm=bm))
                  for bm in M.MMA_ROWS for tiles in [cp.asarray(M.moe_tiles(counts, bm))]}
            def dq_gemm():
                for i in range(1 + two):
                    W = cm.dequantize(w[i], MXFP4, E * n, K, np.float16).reshape(E, n, K)
                    for e in range(E):
                        if counts[e]: cm._gemm(W[e], X[starts[e]:starts[e] + counts[e]], Y[starts[e]:starts[e] + counts[e], i * n:(i + 1) * n], 0.0, 'f16')
            ref = events_us(dq_gemm, reps=2)
            fl = 2 * R * n * K * (1 + two)
            print(f'| {T} | {what} | ' + ' | '.join(f'{us[bm]:.0f} ({fl / us[bm] / 1e6:.0f})' for bm in M.MMA_ROWS)
                  + f' | {ref:.0f} |', flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sweep', action='store_true', help='also sweep launch shapes on a few shapes')
    ap.add_argument('--bits', type=int, choices=[8, 16], help='staged input of the expert products (default: X_BITS)')
    ap.add_argument('--only', choices=['shapes', 'experts', 'experts-profile', 'qwen', 'matmul', 'dequant', 'moe-mma', 'sweep'], help='run one section')
    a = ap.parse_args()
    dev = cp.cuda.runtime.getDeviceProperties(0)['name'].decode()
    bw = copy_bandwidth()
    print(f'# {dev}, {datetime.date.today()}: device-to-device copy {bw / 1e12:.2f} TB/s (read + write); '
          f'an empty kernel in a CUDA graph: {launch_floor():.2f} µs per launch')
    t0 = time.time()
    if a.only in (None, 'shapes'): shapes_table(bw)
    if a.only in (None, 'experts'): experts_table(bw, sweep=a.sweep, bits=a.bits)
    if a.only == 'experts-profile': experts_table(bw, profile=True)
    if a.only in (None, 'qwen'): qwen_step()
    if a.only in (None, 'matmul'): matmul_table()
    if a.only in (None, 'dequant'): dequant_table(bw)
    if a.only in (None, 'moe-mma'): moe_mma_table()
    if a.only in (None, 'sweep') and (a.sweep or a.only == 'sweep'): sweep()
    print(f'\n({time.time() - t0:.0f} s)', file=sys.stderr)


if __name__ == '__main__':
    main()
