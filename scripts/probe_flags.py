"""What a kernel boundary costs, by how the dependent kernel waits: a chain of N small kernels (each CTA loads its
slice of a weight buffer before it waits, then reads the previous kernel's output, reduces, writes one value), captured
in one CUDA graph and replayed, in four modes:
  plain   stream order (no PDL)
  pdl     programmatic stream serialization, griddepcontrol.wait (what orcd's decode step does)
  fence   PDL launch, but the kernel waits on a counter: each CTA of the kernel before adds one when done
          (__syncthreads, thread 0: __threadfence + atomicAdd), thread 0 polls it (ld.acquire.gpu) up to the CTA count
  release the same with red.release.gpu.global.add in place of the fence and the atomic
Kernel i resets kernel i-2's counter after its wait (everyone who polls it has passed), so one graph replays forever.
    python3 scripts/probe_flags.py [N] [CTAS ...]"""
import sys, ctypes, statistics, numpy as np, cupy
from orcd.cuda import _PdlLaunch

SRC = r'''
extern "C" __global__ void __launch_bounds__(256) chain_k(const float4* __restrict__ w, const float* x, float* y,
        int nx, unsigned* cnt, int wait_slot, unsigned wait_n, int sig_slot, int reset0, int reset1, int mode, int work) {
    __shared__ float red[8];
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < work; ++j) {                      // this CTA's weights, before the wait (never written)
        const float4 v = w[((size_t)blockIdx.x * work + j) * 256 + threadIdx.x];
        a.x += v.x; a.y += v.y; a.z += v.z; a.w += v.w;
    }
    asm volatile("griddepcontrol.launch_dependents;");
    if (mode <= 1 || wait_slot < 0) asm volatile("griddepcontrol.wait;" ::: "memory");
    else {
        if (threadIdx.x == 0) {
            unsigned c;
            for (;;) {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(c) : "l"(cnt + wait_slot) : "memory");
                if (c >= wait_n) break;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0 && blockIdx.x == 0) {           // the counter two kernels back: nobody polls it now
        if (reset0 >= 0) cnt[reset0] = 0;
        if (reset1 >= 0) cnt[reset1] = 0;
    }
    float s = (a.x + a.y + a.z + a.w) * x[threadIdx.x % nx];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int i = 0; i < 8; ++i) t += red[i];
        y[blockIdx.x] = t * 1e-6f + 1.f;
        if (mode == 2) { __threadfence(); atomicAdd(cnt + sig_slot, 1u); }
        else if (mode == 3) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(cnt + sig_slot), "r"(1u) : "memory");
    }
}
'''
MODES = {'plain': 0, 'pdl': 1, 'fence': 2, 'release': 3}

def run(n, ctas, mode, work, reps=20):
    k = cupy.RawModule(code=SRC, options=('-std=c++17',)).get_function('chain_k')
    w = cupy.random.random((ctas * max(work, 1) * 256 * 4,), dtype=cupy.float32)
    bufs = [cupy.ones(max(ctas, 256), cupy.float32) for _ in range(2)]
    cnt = cupy.zeros(n, cupy.uint32)
    st = cupy.cuda.Stream(non_blocking=True)
    m = MODES[mode]
    launch = _PdlLaunch(k, ctas, 256, 0) if m else None
    with st:
        st.begin_capture()
        for i in range(n):
            args = (w, bufs[i % 2], bufs[(i + 1) % 2], np.int32(min(ctas, 256)), cnt, np.int32(i - 1 if i else -1),
                    np.uint32(ctas), np.int32(i), np.int32((i - 2) % n if i >= 2 else n - 2 + i), np.int32(-1),
                    np.int32(m), np.int32(work))
            if m == 0 or i == 0: k((ctas,), (256,), args)
            else:
                from orcd.cuda import c_arg
                launch(*[c_arg(a) for a in args])
        g = st.end_capture()
        for _ in range(3): g.launch(st)
        st.synchronize()
        e0, e1, ts = cupy.cuda.Event(), cupy.cuda.Event(), []
        for _ in range(reps):
            e0.record(st); g.launch(st); e1.record(st); e1.synchronize()
            ts.append(cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / n)
    ok = bool(cupy.all(bufs[0] > 0)) and bool(cupy.all(cnt <= ctas))
    return statistics.median(ts), min(ts), ok

if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 240
    for ctas in [int(a) for a in sys.argv[2:]] or [132, 264]:
        for work in (0, 4):
            line = []
            for mode in MODES:
                med, lo, ok = run(n, ctas, mode, work)
                line.append(f'{mode} {med:.2f} ({lo:.2f}){"" if ok else " WRONG"}')
            print(f'{ctas} CTAs, {work * 4} KB a CTA before the wait, µs a kernel: ' + ', '.join(line), flush=True)
