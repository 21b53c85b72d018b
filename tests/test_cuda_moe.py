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

def test_moe_layer_matches_cpu_step():
    "One gpt-oss layer (the synthetic fixture) on the GPU, decode and prefill, against the CPU backend's moe step."
    from orcd.gguf import GGUFFile
    from orcd.adapters import resolve_weights, CPU_OPS, load_adapter, Step
    from orcd.cuda_moe import MoE
    gf = GGUFFile(FIX / 'synthetic' / 'gpt-oss.gguf')
    mw, ad = resolve_weights(gf), load_adapter(gf)
    rng = np.random.default_rng(0)
    for li in range(len(mw.layers)):
        L = mw.layers[li].w
        views = {id(h): cp.asarray(h.raw) for h in L.values() if hasattr(h, 'raw')}
        moe = MoE(L, views, mw.hp.n_experts_used, 'swiglu_oai')
        X = rng.standard_normal((23, mw.hp.d_model)).astype(np.float32)
        env = {'h': X}
        CPU_OPS['moe'](ad, Step('moe', 'h', 'f', arg='swiglu_oai'), ad.layers[li], env)
        scale = np.abs(env['f']).max()
        got = cp.asnumpy(moe.prefill(cp.asarray(X), cp.empty((23, mw.hp.d_model), np.float32)))
        assert np.abs(got - env['f']).max() <= 1e-3 * scale
        for t in (0, 11, 22):
            one = cp.asnumpy(moe.decode(cp.asarray(X[t]), cp.empty(mw.hp.d_model, np.float32)))
            assert np.abs(one - env['f'][t]).max() <= 1e-3 * scale, (li, t)
