"""One decode step's kernels on the GPU's own clock, as the captured graph runs them: each kernel's start, its duration
and what it adds to the step (its end minus the end of the kernel before), from CUPTI's activity records through
torch.profiler (torch must be importable; nothing of orcd depends on it). `profile_step.py` times each kernel alone
(Nsight Compute); this says where the graph's time goes with PDL's overlap and the gaps included.
    python3 scripts/step_timeline.py MODEL.gguf [--depth 0] [--steps 20] [--floor] [--trace]
`--floor` also times graphs of 150 PDL kernels that do nothing, and of 150 that each read a 896-value vector the one
before wrote: the cost of a dependent launch in a graph, the floor of any chain of kernels; and the same 150 dependent
phases inside one persistent kernel, a grid-wide barrier between them: what a kernel boundary would cost instead.
`--trace` compiles the matvec kernels with their timer stamps (ORCD_TRACE=1, 06a) and reads one step: per launch, when
its CTAs were released by the wait, how long staging x took, how long the rest, and the time from the launch before's
last CTA to this one's release (the kernel boundary as the kernels see it); and attend_short's phases (its stamps in
kernels/attention.cu), between the matvec launches around it. The traced kernels run a little slower."""
import argparse, json, os, re, statistics, sys, tempfile
import numpy as np

FLOOR_SRC = r'''
extern "C" __global__ void empty_k(float* x) {
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
}
// every block reads all n values the kernel before wrote and writes its 32: a phase of a dependent chain
extern "C" __global__ void chain_k(const float* __restrict__ x, float* __restrict__ y, int n) {
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    __shared__ float s[32];
    float a = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) a += x[i];
    for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
    if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = a;
    __syncthreads();
    if (threadIdx.x < 32) {
        float b = threadIdx.x < blockDim.x / 32 ? s[threadIdx.x] : 0.f;
        for (int o = 16; o > 0; o >>= 1) b += __shfl_xor_sync(0xffffffffu, b, o);
        y[blockIdx.x * 32 + threadIdx.x] = b * 1e-3f + x[blockIdx.x * 32 + threadIdx.x];
    }
}
// the same phases inside one persistent kernel: a grid-wide barrier (an arrival counter and a generation word)
// between phases instead of a kernel boundary; all blocks resident (a cooperative launch)
__device__ void grid_barrier(unsigned* count, volatile unsigned* gen) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned g = *gen;
        __threadfence();
        if (atomicAdd(count, 1u) == gridDim.x - 1) { *count = 0; __threadfence(); atomicAdd((unsigned*)gen, 1u); }
        else while (*gen == g) {}
        __threadfence();
    }
    __syncthreads();
}
// the same with a monotonic arrival counter: thread 0 adds its arrival with release semantics and spins with acquire
// loads until the count reaches the phase's target (no generation word, no reset: one atomic per block and phase)
__device__ void grid_barrier_acq(unsigned* count, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(count) : "memory");
        unsigned v;
        do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory"); while ((int)(v - target) < 0);
    }
    __syncthreads();
}
// B = 0: grid_barrier (bar[0], bar[1]); B = 1: grid_barrier_acq (bar[2], its count before this launch: base)
template <int B> __device__ void phases(float* x, float* y, int n, int phases, unsigned* bar, unsigned base) {
    __shared__ float s[32];
    for (int p = 0; p < phases; ++p) {
        const float* a = p % 2 ? y : x; float* b = p % 2 ? x : y;
        float v = 0.f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) v += __ldcg(a + i);
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
        __syncthreads();
        if (threadIdx.x < 32) {
            float t = threadIdx.x < blockDim.x / 32 ? s[threadIdx.x] : 0.f;
            for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
            const int i = (blockIdx.x * 32 + threadIdx.x) % n;
            if (blockIdx.x * 32 < n) b[i] = t * 1e-3f + __ldcg(a + i);
        }
        if (B == 0) grid_barrier(bar, bar + 1);
        else grid_barrier_acq(bar + 2, base + (unsigned)(p + 1) * gridDim.x);
    }
}
extern "C" __global__ void phases_k(float* x, float* y, int n, int np, unsigned* bar, unsigned base) { phases<0>(x, y, n, np, bar, base); }
extern "C" __global__ void phases_acq_k(float* x, float* y, int n, int np, unsigned* bar, unsigned base) { phases<1>(x, y, n, np, bar, base); }
'''

def barrier_floor(phases: int = 150, reps: int = 20):
    """µs per phase of a persistent kernel whose phases are separated by a grid-wide barrier (132 and 264 blocks):
    `grid_barrier` (counter + generation word) and `grid_barrier_acq` (one monotonic counter, release/acquire)."""
    import cupy
    out = {}
    for name, fn in (('grid barrier', 'phases_k'), ('grid barrier acq', 'phases_acq_k')):
        k = cupy.RawKernel(FLOOR_SRC, fn, enable_cooperative_groups=True)
        for blocks in (132, 264):
            x, y, bar = cupy.zeros(896, np.float32), cupy.zeros(896, np.float32), cupy.zeros(3, np.uint32)
            run = lambda i: k((blocks,), (256,), (x, y, np.int32(896), np.int32(phases), bar, np.uint32(i * phases * blocks % 2**32)))
            run(0)
            e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
            e0.record()
            for i in range(1, reps + 1): run(i)
            e1.record(); e1.synchronize()
            out[f'{name} {blocks}x256'] = cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / reps / phases
    return out

def floor(n: int = 150, reps: int = 50):
    "µs per kernel of a graph of n empty PDL kernels, and of n dependent 28-block kernels (each reads all 896 values)."
    import cupy, ctypes
    from orcd.cuda import _PdlLaunch
    mod = cupy.RawModule(code=FLOOR_SRC)
    x, y = cupy.zeros(896, np.float32), cupy.zeros(896, np.float32)
    out, s = {}, cupy.cuda.Stream(non_blocking=True)
    for name, grid, block in (('empty', 1, 32), ('empty 28x256', 28, 256), ('dependent 28x256', 28, 256)):
        k = mod.get_function('empty_k' if name.startswith('empty') else 'chain_k')
        for pdl in (False, True):
            launch = _PdlLaunch(k, grid, block, 0) if pdl else None
            def one(i):
                a, b = (x, y) if i % 2 == 0 else (y, x)
                args = (a,) if name.startswith('empty') else (a, b, np.int32(896))
                if pdl: launch(*[ctypes.c_void_p(v.data.ptr) if isinstance(v, cupy.ndarray) else ctypes.c_int32(int(v)) for v in args])
                else: k((grid,), (block,), args)
            with s:
                for i in range(n): one(i)
                s.begin_capture()
                for i in range(n): one(i)
                g = s.end_capture()
                g.launch(s); s.synchronize()
                e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
                e0.record(s)
                for _ in range(reps): g.launch(s)
                e1.record(s); e1.synchronize()
            out[f'{name}{" PDL" if pdl else ""}'] = cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / reps / n
    return out

def short(name: str) -> str:
    "A kernel's name without template noise: matvec_v2<...> keeps its first template arguments."
    m = re.match(r'(?:void )?([\w:]+)(<[^(]*>)?', name)
    base = m.group(1) if m else name
    return base + (m.group(2)[:60] if m and m.group(2) else '')

def launches(rec):
    """The matvec launches of `trace_records` rows: grouped by (K, rows), split where the CTAs' wait
    times jump by more than 3 µs (another launch of the same shape: another layer), in the order they ran."""
    out = []
    for key in {(int(r[0]), int(r[1])) for r in rec}:
        rows = rec[(rec[:, 0] == key[0]) & (rec[:, 1] == key[1])]
        rows = rows[np.argsort(rows[:, 3])]
        cut = np.flatnonzero(np.diff(rows[:, 3].astype(np.int64)) > 3000) + 1
        out += [(key, g) for g in np.split(rows, cut)]
    return sorted(out, key=lambda kg: int(kg[1][:, 3].min()))

def trace(be, tok, pos, layers: int):
    "One decode step with the matvec kernels' stamps (ORCD_TRACE=1): where each launch's time goes."
    from orcd.cuda_backend import _step
    from orcd.cuda_matvec import trace_records
    trace_records(); attn_records()                          # reset
    tok = _step(be, tok, pos)
    rec = trace_records().astype(np.int64)
    ls = launches(rec)
    attn_phases(attn_records().astype(np.int64), ls)
    t0 = min(int(g[:, 2].min()) for _, g in ls)
    print(f'trace: {len(rec)} CTA records, {len(ls)} matvec launches; µs from the first start. Per launch: CTAs, '
          'first start, wait returned (first-last), x staged (median after the wait), done (last), '
          'staging, after staging to the last done, from the previous launch\'s last done to this one\'s first release')
    prev, per_key = None, {}
    for i, ((K, r0), g) in enumerate(ls):
        us = lambda v: (v - t0) / 1e3
        w0, w1, done = int(g[:, 3].min()), int(g[:, 3].max()), int(g[:, 5].max())
        stage = float(np.median(g[:, 4] - g[:, 3])) / 1e3
        tail = (done - int(np.median(g[:, 4]))) / 1e3
        gap = None if prev is None else (w0 - prev) / 1e3
        per_key.setdefault((K, r0), []).append((stage, tail, gap, (done - (prev if prev else w0)) / 1e3))
        if i < 10 or i >= len(ls) - 2:
            print(f'  K={K:5d} rows={r0:6d} {len(g):4d} CTAs start {us(int(g[:, 2].min())):8.2f} wait {us(w0):8.2f}-{us(w1):8.2f} '
                  f'done {us(done):8.2f}  staging {stage:5.2f} then {tail:5.2f}' + ('' if gap is None else f'  release {gap:5.2f}'))
        prev = done
    print('per shape, median over its launches (µs): staging, after staging to done, release after the previous launch, '
          'previous done to this done')
    for (K, r0), v in per_key.items():
        med = lambda j: statistics.median([x[j] for x in v if x[j] is not None] or [float('nan')])
        print(f'  K={K:5d} rows={r0:6d} x{len(v):3d}: {med(0):5.2f} {med(1):5.2f} {med(2):5.2f} {med(3):6.2f}')
    return tok

def attn_records(reset: bool = True) -> np.ndarray:
    """With ORCD_TRACE=1: the stamps attend_short's blocks appended (kernels/attention.cu, att_trace), (n, 8) rows
    [block, splits, start, wait returned, q|k|v in shared memory, tiles done, warps' sums stored, done] (ns)."""
    import cupy
    from orcd.cuda import MODULES
    out = []
    for mod in MODULES.get('attention', []):
        n = cupy.ndarray((1,), np.uint32, mod.get_global('att_trace_n'))
        rec = cupy.ndarray((16384, 8), np.uint64, mod.get_global('att_trace'))
        out.append(cupy.asnumpy(rec[:min(int(n.get()[0]), 16384)]))
        if reset: n.fill(0)
    return np.concatenate(out) if out else np.zeros((0, 8), np.uint64)

def attn_phases(att, ls):
    """attend_short's launches in one traced step (blocks grouped where their wait times jump by more than 3 µs),
    each placed between the matvec launches `ls` around it: the median over launches of each phase (µs)."""
    if not len(att): return print('attention trace: no attend_short block ran (not a short context?)')
    att = att[np.argsort(att[:, 3])]
    groups = np.split(att, np.flatnonzero(np.diff(att[:, 3]) > 3000) + 1)
    dones = sorted(int(g[:, 5].max()) for _, g in ls)
    waits = sorted(int(g[:, 3].min()) for _, g in ls)
    cols = {k: [] for k in ('blocks', 'start->wait', 'release', 'q|k|v', 'tiles', 'sums', 'write', 'first wait->last done',
                            'next release', 'prev done->next release')}
    for g in groups:
        w0, end = int(g[:, 3].min()), int(g[:, 7].max())
        prev = max([d for d in dones if d <= w0] or [None], key=lambda d: d or 0)
        nxt = min([w for w in waits if w >= end] or [None], key=lambda w: w or 0)
        cols['blocks'].append(len(g))
        for k, (a, b) in {'start->wait': (2, 3), 'q|k|v': (3, 4), 'tiles': (4, 5), 'sums': (5, 6), 'write': (6, 7)}.items():
            cols[k].append(float(np.median(g[:, b] - g[:, a])) / 1e3)
        cols['first wait->last done'].append((end - w0) / 1e3)
        if prev: cols['release'].append((w0 - prev) / 1e3)
        if nxt: cols['next release'].append((nxt - end) / 1e3)
        if prev and nxt: cols['prev done->next release'].append((nxt - prev) / 1e3)
    print(f'attention trace: {len(att)} block records, {len(groups)} attend_short launches; median over launches, µs '
          '(phases: median over blocks; release: the previous matvec\'s last CTA done to the first block\'s wait returned):')
    print('  ' + ', '.join(f'{k} {statistics.median(v):.2f}' for k, v in cols.items() if v))

def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('model')
    ap.add_argument('--depth', type=int, default=0, help='tokens in the cache before the timed steps')
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--floor', action='store_true')
    ap.add_argument('--rows', type=int, default=40, help='kernels listed one by one (the first layer and the tail)')
    ap.add_argument('--trace', action='store_true', help='also one step with the matvec kernels\' own timer stamps')
    a = ap.parse_args(argv)
    if a.trace: os.environ['ORCD_TRACE'] = '1'               # before orcd.cuda_matvec is imported
    import cupy, torch
    from torch.profiler import profile, ProfilerActivity
    from orcd.gguf import GGUFFile
    from orcd.cuda_backend import CUDABackend, _fused, _step
    if a.floor:
        for k, v in floor().items(): print(f'floor: {k:24s} {v:6.2f} µs per kernel in a graph of 150')
        for k, v in barrier_floor().items(): print(f'floor: {k:24s} {v:6.2f} µs per phase of one kernel (150 phases)')
    be = CUDABackend(GGUFFile(a.model), a.depth + a.steps + 64)
    n = max(1, a.depth)
    be.prefill(np.random.default_rng(0).integers(0, min(be.hp.vocab_size, 30000), n))
    tok, pos = 1, n
    for _ in range(3): tok = _step(be, tok, pos); pos += 1          # capture and warm up
    ev0, ev1 = cupy.cuda.Event(), cupy.cuda.Event()
    ev0.record(be.stream)
    for _ in range(a.steps): tok = _step(be, tok, pos); pos += 1
    ev1.record(be.stream); ev1.synchronize()
    plain = cupy.cuda.get_elapsed_time(ev0, ev1) * 1e3 / a.steps
    if a.trace:
        tok = trace(be, tok, pos, be.hp.n_layers); pos += 1
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps): tok = _step(be, tok, pos); pos += 1
    path = os.path.join(tempfile.mkdtemp(), 'trace.json')
    prof.export_chrome_trace(path)
    ev = sorted((e for e in json.load(open(path))['traceEvents'] if e.get('cat') == 'kernel'), key=lambda e: e['ts'])
    ends = [i for i, e in enumerate(ev) if 'advance_position' in e['name']]
    steps = [ev[i + 1:j + 1] for i, j in zip(ends, ends[1:])]
    K = statistics.mode(len(s) for s in steps)
    steps = [s for s in steps if len(s) == K]
    print(f'{os.path.basename(a.model)}: {K} kernels a step, {len(steps)} steps traced; '
          f'{plain:.1f} µs a step untraced (host loop, one graph a step)')
    rows = []
    for i in range(K):
        dur = statistics.median(s[i]['dur'] for s in steps)
        add = statistics.median(s[i]['ts'] + s[i]['dur'] - (s[i - 1]['ts'] + s[i - 1]['dur']) if i else s[i]['dur'] for s in steps)
        gap = statistics.median(s[i]['ts'] - (s[i - 1]['ts'] + s[i - 1]['dur']) if i else 0.0 for s in steps)
        rows.append((short(steps[0][i]['name']), dur, add, gap))
    span = statistics.median(s[-1]['ts'] + s[-1]['dur'] - s[0]['ts'] for s in steps)
    print(f'step span {span:.1f} µs (first kernel start to last end); kernels alone add to {sum(r[1] for r in rows):.1f}; '
          f'gaps (start after the previous end) add to {sum(max(r[3], 0) for r in rows):.1f}, overlaps to {sum(min(r[3], 0) for r in rows):.1f}')
    kinds = {}
    for name, dur, add, gap in rows:
        k = kinds.setdefault(name, [0, 0.0, 0.0, 0.0]); k[0] += 1; k[1] += dur; k[2] += add; k[3] += gap
    print('by kernel (count, µs alone, µs added to the step, µs of gap before):')
    for name, (c, d, ad, g) in sorted(kinds.items(), key=lambda kv: -kv[1][2]):
        print(f'  {c:4d} {d:8.1f} {ad:8.1f} {g:8.1f}  {name}')
    labels = [f'{s.op} {s.w or s.arg or ""}'.strip() + ('' if li is None else f' [{li}]') for s, li in _fused(be)]
    print('fused steps, in order: ' + ' | '.join(labels[:12]) + ' ...')
    print(f'first {a.rows} kernels and the last 6 (µs: alone, added, gap before):')
    for i, (name, dur, add, gap) in enumerate(rows):
        if i < a.rows or i >= K - 6: print(f'  {i:4d} {dur:7.2f} {add:7.2f} {gap:7.2f}  {name}')

if __name__ == '__main__':
    main()
