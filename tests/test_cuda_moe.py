"""The mixture-of-experts kernels against their numpy references over several shapes (gpt-oss's included): routed
matvec parts (`expert_linear`), top-k, the activation with per-expert biases, the weighted sum, and a whole MoE
layer (decode and prefill) against the CPU backend's step. GPU-only: skipped on machines without one."""
from pathlib import Path
import numpy as np, pytest
from orcd.cuda import cuda_device
from orcd.quants import MXFP4, Q8_0, Q4_K, F32

cp, why = cuda_device()
pytestmark = pytest.mark.skipif(cp is None, reason=f'GPU test: {why}')
FIX = Path(__file__).parent / 'fixtures'

@pytest.mark.parametrize('T,E,k', [(1, 32, 4), (7, 32, 4), (300, 32, 4), (5, 8, 2), (3, 128, 8), (2, 40, 1)])
def test_moe_topk(T, E, k):
    from orcd import cuda_moe as M
    rng = np.random.default_rng(T * E + k)
    z = rng.standard_normal((T, E)).astype(np.float32)
    z[0, :3] = 2.5                                                    # ties: lower ids first
    ids, wts = M.moe_topk(cp.asarray(z), k, cp.empty((T, k), np.int32), cp.empty((T, k), np.float32))
    ri, rw = M.moe_topk_ref(z, k)
    assert np.array_equal(cp.asnumpy(ids), ri)
    assert np.allclose(cp.asnumpy(wts), rw, rtol=2e-6, atol=1e-7)
    with pytest.raises(ValueError): M.moe_topk(cp.asarray(z), E + 1, cp.empty((T, E + 1), np.int32), cp.empty((T, E + 1), np.float32))

@pytest.mark.parametrize('E,k,n,d', [(32, 4, 2880, 2880), (8, 2, 64, 96), (4, 1, 33, 7)])
def test_moe_act_and_combine(E, k, n, d):
    from orcd import cuda_moe as M
    rng = np.random.default_rng(n)
    ids = rng.choice(E, k, replace=False).astype(np.int32)
    gu, bg, bu = ((rng.standard_normal(s) * 5).astype(np.float32) for s in ((k, 2 * n), (E, n), (E, n)))
    for b in ((bg, bu), (None, None)):
        a = M.moe_act(cp.asarray(gu), cp.asarray(ids), *(None if v is None else cp.asarray(v) for v in b), n,
                      cp.empty(k * n, np.float32))
        ref = M.moe_act_ref(gu, ids, *(np.zeros((E, n), np.float32) if v is None else v for v in b), n)
        assert np.allclose(cp.asnumpy(a).reshape(k, n), ref, rtol=1e-5, atol=1e-5)
    y, bd = rng.standard_normal((k, d)).astype(np.float32), rng.standard_normal((E, d)).astype(np.float32)
    w = rng.dirichlet(np.ones(k)).astype(np.float32)
    out = M.moe_combine(cp.asarray(y), cp.asarray(ids), cp.asarray(w), cp.asarray(bd), d, cp.empty(d, np.float32))
    assert np.allclose(cp.asnumpy(out), M.moe_combine_ref(y, ids, w, bd, d), rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('t,E,rows,K,k', [(MXFP4, 32, 2880, 2880, 4), (MXFP4, 8, 96, 256, 3), (Q8_0, 6, 64, 512, 2),
                                           (Q4_K, 4, 33, 512, 2), (F32, 5, 17, 64, 3)])
@pytest.mark.parametrize('per_expert_x', [False, True])
@pytest.mark.parametrize('part_major', [False, True], ids=['in_turn', 'part_major'])
def test_expert_linear(t, E, rows, K, k, per_expert_x, part_major):
    """Routed parts read the experts named by ids in device memory; new ids, same launch (and same graph); the CTAs
    taking the parts' tiles in turn, or each part its own (part_major)."""
    from orcd import cuda_matvec as cm
    rng = np.random.default_rng(E + rows)
    w = cm.random_weight(rng, t, E * rows, K)
    wd = cp.asarray(w)
    ids = cp.asarray(rng.choice(E, k, replace=False).astype(np.int32))
    lin = cm.expert_linear([(wd, E, rows, t)], K, ids, per_expert_x=per_expert_x, part_major=part_major)
    assert lin.pair == (t == MXFP4)                 # the experts' own kernel (pair layout of the staged input)
    x = rng.standard_normal(K * (k if per_expert_x else 1)).astype(np.float32)
    xd, y = cp.asarray(x), cp.empty(k * rows, np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        lin(xd, y)
        stream.begin_capture(); lin(xd, y); g = stream.end_capture()
        for choice in (cp.asnumpy(ids), rng.choice(E, k).astype(np.int32)):     # the second may repeat an expert
            ids[:] = cp.asarray(choice)
            y[:] = np.nan
            g.launch(stream); stream.synchronize()
            ref, mag, errx = cm.expert_linear_ref([(w, E, rows, t)], K, choice, x, per_expert_x)
            assert np.all(np.abs(cp.asnumpy(y) - ref) <= 1e-5 * mag), choice

@pytest.mark.parametrize('E,R,K,k,nm,per_expert_x', [(32, 2880, 2880, 4, 2, False), (32, 2880, 2880, 4, 1, True),
                                                    (8, 37, 3200, 3, 2, False), (5, 33, 96, 2, 1, True),
                                                    (4, 64, 6144, 2, 2, True), (3, 1, 512, 1, 2, False),
                                                    (3, 1, 32, 1, 2, True),
                                                    (3, 7, 2880, 3, 1, True), (3, 7, 2880, 3, 2, False)])
def test_expert_mv(E, R, K, k, nm, per_expert_x):
    """ExpertMV (kernels/expert_mv.cu) = expert_linear_ref: gpt-oss's gate + up and down (also with every expert chosen
    and an odd row count: the last row pair a single row, ending where the bytes end), an odd row count, K past one
    pass of the lanes (3200, 6144), one row; experts whose bytes are not a multiple of 16 stored 16 bytes apart (as a
    file with padding between experts would; with a byte count off a word boundary, the predicated kernel); the input
    staged in every CTA or once by emv_stage (bytes = emv_stage_ref, the same products bit for bit); new ids, same graph."""
    from orcd import cuda_matvec as cm, cuda_moe as M
    rng = np.random.default_rng(E * R + K)
    ws = [cm.random_weight(rng, MXFP4, E * R, K) for _ in range(nm)]
    ids = cp.asarray(rng.choice(E, k, replace=False).astype(np.int32))
    n = R * K // 32 * 17; stride = -(-n // 16) * 16
    def padded(w):                                                   # expert e at e * stride
        out = np.zeros((E, stride), np.uint8); out[:, :n] = w.reshape(E, n); return cp.asarray(out.reshape(-1))
    parts = [(padded(w), E, R, MXFP4) for w in ws]
    if stride != n:
        with pytest.raises(ValueError): M.ExpertMV([(cp.asarray(ws[0]), E, R, MXFP4)], K, ids)   # not 16 apart
    mv = M.ExpertMV(parts, K, ids, per_expert_x=per_expert_x)
    nx = k if per_expert_x else 1
    x = rng.standard_normal(K * nx).astype(np.float32)
    xd, y = cp.asarray(x), cp.empty(mv.rows, np.float32)
    staged = M.emv_stage(xd, K, cp.zeros(nx * M.emv_region(K), np.uint8))
    assert np.array_equal(cp.asnumpy(staged), M.emv_stage_ref(x, K))
    mvs = M.ExpertMV(parts, K, ids, per_expert_x=per_expert_x, staged=True)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        mv(xd, y); mvs(staged, y)
        stream.begin_capture(); mv(xd, y); g = stream.end_capture()
        for choice in (cp.asnumpy(ids), rng.choice(E, k).astype(np.int32)):     # the second may repeat an expert
            ids[:] = cp.asarray(choice)
            y[:] = np.nan
            g.launch(stream); stream.synchronize()
            got = cp.asnumpy(y)
            ref, mag, _ = cm.expert_linear_ref([(w, E, R, MXFP4) for w in ws], K, choice, x, per_expert_x)
            assert np.all(np.abs(got - ref) <= 1e-5 * mag), choice
            y2 = mvs(staged, cp.full(mv.rows, np.nan, np.float32)); stream.synchronize()
            assert np.array_equal(cp.asnumpy(y2), got)
            if K == 2880 and per_expert_x:                  # the 40-register kernel for gpt-oss's K: the same sums
                for pre in (False, True):                   # (pre: its first rows loaded before the wait)
                    mvk = M.ExpertMV(parts, K, ids, per_expert_x=True, staged=True, k2880=True, pre=pre)
                    assert mvk.k2880 and 'k2880' in repr(mvk) and mvk.pre == pre
                    # the kernel launched (by PDL or not) is the one chosen: the sums alone would not tell them apart
                    assert mvk.kernel.name.removesuffix('_tail') == ('expert_mv_k2880p' if pre else 'expert_mv_k2880')
                    assert mvk.pdl is None or mvk.pdl.fn.value == mvk.kernel.kernel.ptr
                    y3 = mvk(staged, cp.full(mv.rows, np.nan, np.float32)); stream.synchronize()
                    assert np.array_equal(cp.asnumpy(y3), got)
            if K == 2880 and not per_expert_x:              # the same kernel, x quantised in each CTA (gate|up)
                mvx = M.ExpertMV(parts, K, ids, k2880=True)
                assert mvx.k2880 and not mvx.staged
                y3 = mvx(xd, cp.full(mv.rows, np.nan, np.float32)); stream.synchronize()
                assert np.array_equal(cp.asnumpy(y3), got)
    # a grid whose last round of row pairs runs as single rows (gpt-oss's down does so on an H200), odd R included
    units = k * nm * ((R + 1) // 2)
    ctas = next((c for c in range(1, units) if 16 * c < units and 0 < 2 * (units % (16 * c)) <= 16 * c), None)
    if ctas is not None:
        mv1 = M.ExpertMV(parts, K, ids, per_expert_x=per_expert_x, ctas=ctas)
        assert mv1.pairs < mv1.units and 'single rows' in repr(mv1)
        got = cp.asnumpy(mv1(xd, cp.full(mv.rows, np.nan, np.float32)))
        ref, mag, _ = cm.expert_linear_ref([(w, E, R, MXFP4) for w in ws], K, cp.asnumpy(ids), x, per_expert_x)
        assert np.all(np.abs(got - ref) <= 1e-5 * mag)
    with pytest.raises(ValueError): M.ExpertMV([(cp.asarray(ws[0]), E, R, Q8_0)], K, ids)

@pytest.mark.parametrize('E,k,n', [(32, 4, 2880), (8, 2, 64), (4, 3, 96)])
def test_emv_stage_act(E, k, n):
    "emv_stage of the activation: its `a` is moe_act's output bit for bit, its regions those of that activation."
    from orcd import cuda_moe as M
    rng = np.random.default_rng(n + k)
    ids = cp.asarray(rng.choice(E, k, replace=False).astype(np.int32))
    gu, bg, bu = (cp.asarray((rng.standard_normal(s) * 5).astype(np.float32)) for s in ((k, 2 * n), (E, n), (E, n)))
    a0 = M.moe_act(gu, ids, bg, bu, n, cp.empty(k * n, np.float32))
    a, st = cp.empty(k * n, np.float32), cp.zeros(k * M.emv_region(n), np.uint8)
    M.emv_stage(gu.reshape(-1), n, st, ids, bg, bu, a)
    assert np.array_equal(cp.asnumpy(a), cp.asnumpy(a0))
    assert np.array_equal(cp.asnumpy(st), M.emv_stage_ref(cp.asnumpy(a0), n))

@pytest.mark.parametrize('mv', [True, False], ids=['expert_mv', 'expert_linear'])
def test_moe_layer_matches_cpu_step(mv, monkeypatch):
    "One gpt-oss layer (the synthetic fixture) on the GPU, decode and prefill, against the CPU backend's moe step."
    from orcd.gguf import GGUFFile
    from orcd.adapters import resolve_weights, CPU_OPS, load_adapter, Step
    from orcd import cuda_moe
    from orcd.cuda_moe import MoE
    monkeypatch.setattr(cuda_moe, 'EXPERT_MV', mv)
    gf = GGUFFile(FIX / 'synthetic' / 'gpt-oss.gguf')
    mw, ad = resolve_weights(gf), load_adapter(gf)
    rng = np.random.default_rng(0)
    for li in range(len(mw.layers)):
        L = mw.layers[li].w
        views = {id(h): cp.asarray(h.raw) for h in L.values() if hasattr(h, 'raw')}
        moe = MoE(L, views, mw.hp.n_experts_used, 'swiglu_oai')
        assert moe.mv == (mv and L['w_down_exps'].ggml_type == MXFP4)
        X = rng.standard_normal((23, mw.hp.d_model)).astype(np.float32)
        env = {'h': X}
        CPU_OPS['moe'](ad, Step('moe', 'h', 'f', arg='swiglu_oai'), ad.layers[li], env)
        scale = np.abs(env['f']).max()
        for mode in ('mma', 'batched', 'per_expert'):
            got = cp.asnumpy(moe.prefill(cp.asarray(X), cp.empty((23, mw.hp.d_model), np.float32), mode=mode))
            assert np.abs(got - env['f']).max() <= 1e-3 * scale, (li, mode)
        for t in (0, 11, 22):
            one = cp.asnumpy(moe.decode(cp.asarray(X[t]), cp.empty(mw.hp.d_model, np.float32)))
            assert np.abs(one - env['f'][t]).max() <= 1e-3 * scale, (li, t)


@pytest.mark.parametrize('bm', [64, 128])
@pytest.mark.parametrize('E,rows,K,counts,two,bias', [
    (32, 2880, 2880, 'pp512', True, True),           # gpt-oss-20b's gate|up at a 512-token chunk (top-4)
    (32, 2880, 2880, 'pp512', False, True),          # its down projection
    (2, 64, 64, [4, 5], False, True), (3, 128, 192, [0, 130, 1], True, False), (5, 64, 128, [64, 0, 0, 65, 7], True, True),
    (4, 192, 64, [1, 1, 1, 1], False, False), (2, 64, 128, [300, 129], True, True)])
def test_moe_mma(E, rows, K, counts, two, bias, bm):
    """The experts' products on the tensor cores, from MXFP4 blocks, against numpy over the float16-rounded operands
    (the kernel's only freedom: the order of its fp32 sums); runs of 0, 1, 64 and more than 128 rows, tiles of 64 and
    128 rows; gate|up (two
    tensors, one launch) and one tensor; with and without biases. Rows outside the runs' output are not written."""
    from orcd import cuda_moe as M
    from orcd.cuda_matvec import random_weight
    rng = np.random.default_rng(rows + K + E)
    if counts == 'pp512': counts = np.bincount(rng.integers(0, E, 2048), minlength=E)
    counts = np.asarray(counts); R = int(counts.sum())
    ws = [random_weight(rng, MXFP4, E * rows, K) for _ in range(1 + two)]
    bs = [rng.standard_normal((E, rows)).astype(np.float32) if bias else None for _ in range(1 + two)]
    X = rng.standard_normal((R, K)).astype(np.float32)
    tiles = cp.asarray(M.moe_tiles(counts, bm))
    Y = cp.full((R, (1 + two) * rows + 2), np.nan, np.float32)        # two columns beyond: never written
    M.moe_mma(cp.asarray(ws[0]), E, rows, K, cp.asarray(X.astype(np.float16)), tiles, Y,
              None if bs[0] is None else cp.asarray(bs[0]), cp.asarray(ws[1]) if two else None,
              cp.asarray(bs[1]) if two and bias else None, bm=bm)
    got = cp.asnumpy(Y)
    assert np.isnan(got[:, -2:]).all()
    for i in range(1 + two):
        ref, mag = M.moe_mma_ref(ws[i], E, rows, K, X, counts, bs[i])
        err = np.abs(got[:, i * rows:(i + 1) * rows] - ref)
        assert np.all(err <= K * 2.0 ** -23 * mag + 1e-30), (i, float((err / (mag + 1e-30)).max()))

def test_moe_mma_rejects():
    from orcd import cuda_moe as M
    X, t = cp.zeros((3, 96), np.float16), cp.asarray(M.moe_tiles([3]))
    with pytest.raises(ValueError, match='multiples of 64'):
        M.moe_mma(cp.zeros(96 // 32 * 17 * 64, np.uint8), 1, 64, 96, X, t, cp.zeros((3, 64), np.float32))
    with pytest.raises(TypeError, match='X must be float16'):
        M.moe_mma(cp.zeros(2 * 17 * 64, np.uint8), 1, 64, 64, cp.zeros((3, 64), np.float32), t, cp.zeros((3, 64), np.float32))
    with pytest.raises(ValueError, match='Y must be float32'):
        M.moe_mma(cp.zeros(2 * 17 * 64, np.uint8), 1, 64, 64, cp.zeros((3, 64), np.float16), t, cp.zeros((3, 63), np.float32))

@pytest.mark.parametrize('E,k,T', [(32, 4, 512), (32, 4, 1), (8, 2, 23), (128, 8, 300), (1000, 2, 4000), (3, 1, 1)])
def test_moe_sort(E, k, T):
    """The grouping on the device equals the host's (moe_groups, then moe_tiles, padded): a stable order by expert,
    counts, and the tile table moe_mma reads; one expert crowded (several full tiles), others empty."""
    from orcd import cuda_moe as M
    rng = np.random.default_rng(E + k + T)
    ids = rng.integers(0, max(1, E // 2), (T, k)).astype(np.int32)    # half the experts get no pair
    ids[: T // 3, 0] = E - 1
    got = [cp.asnumpy(a) for a in M.moe_sort(cp.asarray(ids), E)]
    for g, r, name in zip(got, M.moe_sort_ref(ids, E), ('order', 'experts', 'counts', 'tiles')):
        assert np.array_equal(g, r), name
