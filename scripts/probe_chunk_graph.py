"""Can a whole prompt chunk be captured into a CUDA graph, and what does its replay cost against issuing it from Python?
cublasGemmEx is called through ctypes on the library CuPy loaded (CuPy's own wrappers call setStream, which refuses a
capturing stream), with a handle of our own bound to the backend's stream before the capture.
    python3 probe_chunk_graph.py MODEL.gguf [T]"""
import ctypes, sys, time, statistics, numpy as np, cupy
from cupy_backends.cuda.libs import cublas as _cb      # loads libcublas
import orcd.cuda_matvec as cm
from orcd.gguf import GGUFFile
from orcd.cuda_backend import CUDABackend, program
path = next(l.split()[-1] for l in open('/proc/self/maps') if 'libcublas.so' in l and 'Lt' not in l)
lib = ctypes.CDLL(path)
h = ctypes.c_void_p(); assert lib.cublasCreate_v2(ctypes.byref(h)) == 0
model, T = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 512
be = CUDABackend(GGUFFile(model), T + 16)
lib.cublasSetStream_v2(h, ctypes.c_void_p(be.stream.ptr))
VP, I = ctypes.c_void_p, ctypes.c_int
lib.cublasGemmEx.argtypes = [VP, I, I, I, I, I, VP, VP, I, I, VP, I, I, VP, VP, I, I, I, I]
keep = []
def gemm_ct(W, X, Y, beta, mode):
    (rows, K), Tn = W.shape, X.shape[0]
    dt = cm._CUDA_R_16F if W.dtype == np.float16 else cm._CUDA_R_32F
    one, b = np.array(1, np.float32), np.array(beta, np.float32); keep.append((one, b))
    st = lib.cublasGemmEx(h, cm._OP_T, cm._OP_N, rows, Tn, K, one.ctypes.data, W.data.ptr, dt, K, X.data.ptr, dt, K,
                          b.ctypes.data, Y.data.ptr, cm._CUDA_R_32F, Y.strides[0] // 4, cm._COMPUTE[mode], -1)
    if st: raise RuntimeError(f'cublasGemmEx status {st}')
cm._gemm = gemm_ct
ids = np.random.default_rng(0).integers(0, min(be.hp.vocab_size, 30000), T).astype(np.int32)
be.prefill(ids)
parts = dict(head=True, blocks=True, tail=False)
with be.stream:
    be.ids[:T].set(ids, stream=be.stream); be.pos[:T].set(np.arange(T, dtype=np.int32), stream=be.stream); be.pos0 = 0
    fns = program(be, T, True, parts)
    for f in fns: f()
    be.stream.synchronize(); ref = be.kc.get(), be.vc.get()
    eager = []
    for _ in range(5):
        t0 = time.perf_counter(); [f() for f in fns]; be.stream.synchronize(); eager.append((time.perf_counter() - t0) * 1e3)
    be.kc.fill(0); be.vc.fill(0)
    try:
        be.stream.begin_capture(); [f() for f in fns]; g = be.stream.end_capture()
    except Exception as e:
        print('capture failed:', type(e).__name__, e)
        try: be.stream.end_capture()
        except Exception: pass
        raise SystemExit(0)
    g.launch(be.stream); be.stream.synchronize()
    same = all(np.array_equal(a, b.get()) for a, b in zip(ref, (be.kc, be.vc)))
    rep = []
    for _ in range(5):
        t0 = time.perf_counter(); g.launch(be.stream); be.stream.synchronize(); rep.append((time.perf_counter() - t0) * 1e3)
print(f'{model.rsplit("/", 1)[-1]}: a {T}-token chunk, {len(fns)} steps: eager (issue + wait) {statistics.median(eager):.2f} ms, '
      f'captured graph replay {statistics.median(rep):.2f} ms; KV cache after the replay equals eager: {same}')
