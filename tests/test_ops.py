"""orcd.ops against independent formulations: naive Python/numpy loops written from the formulas (float64),
gguf.quants for block-quantised rows, and closed-form properties. Several shapes each."""
import math
import numpy as np
import pytest
import gguf.quants as gq
from gguf import GGMLQuantizationType as QT

from orcd import ops

rng = np.random.default_rng(1234)
f32 = lambda *s: rng.standard_normal(s).astype(np.float32)


@pytest.mark.parametrize('vocab,d,ids', [(10, 4, [0, 9, 3, 3]), (100, 64, list(range(0, 100, 7))), (7, 1, [6])])
def test_embedding(vocab, d, ids):
    E = f32(vocab, d)
    out = ops.embedding(E, ids)
    assert out.dtype == np.float32 and out.shape == (len(ids), d)
    for r, i in enumerate(ids): assert (out[r] == E[i]).all()


@pytest.mark.parametrize('qtype', [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.F16])
def test_embedding_quantized_rows_match_gguf(qtype):
    "Dequantising only the selected rows equals gguf.quants' dequantisation of the whole table."
    d = 256
    W = f32(9, d)
    q = gq.quantize(W, qtype)                                    # (9, row_bytes)
    ids = [8, 0, 4, 4]
    from orcd.quants import dequantize
    out = ops.embedding_quantized(q, ids, int(qtype), dequantize)
    np.testing.assert_array_equal(out, gq.dequantize(q, qtype)[ids])


@pytest.mark.parametrize('T,i,o,bias', [(1, 8, 5, True), (7, 64, 33, False), (3, 1, 1, True)])
def test_linear(T, i, o, bias):
    x, w = f32(T, i), f32(o, i); b = f32(o) if bias else None
    ref = np.array([[sum(float(x[t, k]) * float(w[n, k]) for k in range(i)) + (float(b[n]) if bias else 0.0)
                     for n in range(o)] for t in range(T)])
    np.testing.assert_allclose(ops.linear(x, w, b), ref, rtol=1e-5, atol=1e-5)
    wt = np.ascontiguousarray(w.T)                                # the adapter's storage: (in, out), passed as view
    np.testing.assert_allclose(ops.linear(x, wt.T, b), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(1, 8), (5, 64), (2, 3, 16)])
def test_rms_norm(shape):
    x = f32(*shape); w = f32(shape[-1]); eps = 1e-6
    flat = x.reshape(-1, shape[-1]).astype(np.float64); ref = np.empty_like(flat)
    for r in range(len(flat)):
        ms = sum(v * v for v in flat[r]) / shape[-1]
        ref[r] = [flat[r, k] / math.sqrt(ms + eps) * w[k] for k in range(shape[-1])]
    np.testing.assert_allclose(ops.rms_norm(x, w, eps), ref.reshape(shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(1, 8), (5, 64), (3, 17)])
def test_layer_norm(shape):
    x = f32(*shape) * 3 + 1; w = f32(shape[-1]); b = f32(shape[-1]); eps = 1e-5
    ref = np.empty(shape)
    for r in range(shape[0]):
        mu = sum(map(float, x[r])) / shape[1]; var = sum((float(v) - mu) ** 2 for v in x[r]) / shape[1]
        ref[r] = [(float(x[r, k]) - mu) / math.sqrt(var + eps) * w[k] + b[k] for k in range(shape[1])]
    np.testing.assert_allclose(ops.layer_norm(x, w, b, eps), ref, rtol=1e-5, atol=1e-5)


def _rope_loop(x, positions, n_dims, base, neox, freq_scale=1.0, ext_factor=0.0, attn_factor=1.0, n_ctx_orig=0,
               beta_fast=32.0, beta_slow=1.0):
    "Element by element, transcribing ggml's rope_f32 / rope_yarn / ggml_rope_yarn_corr_dims."
    T, H, D = x.shape; out = x.astype(np.float64).copy()
    corr = lambda beta: n_dims * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))
    lo = max(0, math.floor(corr(beta_fast))) if ext_factor else 0
    hi = min(n_dims - 1, math.ceil(corr(beta_slow))) if ext_factor else 0
    for t in range(T):
        for h in range(H):
            for i0 in range(0, n_dims, 2):
                th_ex = positions[t] * base ** (-i0 / n_dims)
                th = freq_scale * th_ex; ms = attn_factor
                if ext_factor:
                    y = (i0 / 2 - lo) / max(0.001, hi - lo)
                    mix = (1 - min(1, max(0, y))) * ext_factor
                    th = th * (1 - mix) + th_ex * mix
                    ms *= 1 + 0.1 * math.log(1 / freq_scale)
                c, s = math.cos(th) * ms, math.sin(th) * ms
                a, b = (i0 // 2, i0 // 2 + n_dims // 2) if neox else (i0, i0 + 1)
                x0, x1 = float(x[t, h, a]), float(x[t, h, b])
                out[t, h, a] = x0 * c - x1 * s; out[t, h, b] = x0 * s + x1 * c
    return out


@pytest.mark.parametrize('neox', [False, True])
@pytest.mark.parametrize('T,H,D,n_dims,base', [(3, 2, 8, 8, 10000.0), (5, 3, 64, 64, 1e6), (2, 1, 96, 64, 500.0)])
def test_rope(neox, T, H, D, n_dims, base):
    x = f32(T, H, D); pos = rng.integers(0, 4000, T)
    cos, sin = ops.rope_cos_sin(pos, n_dims, base)
    np.testing.assert_allclose(ops.rope(x, cos, sin, neox), _rope_loop(x, pos, n_dims, base, neox), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('D,base,factor,orig', [(64, 150000.0, 32.0, 4096), (32, 10000.0, 4.0, 2048)])
def test_rope_yarn(D, base, factor, orig):
    x = f32(4, 2, D); pos = np.array([0, 1, 777, 20000])
    cos, sin = ops.rope_cos_sin(pos, D, base, freq_scale=1 / factor, ext_factor=1.0, n_ctx_orig=orig)
    ref = _rope_loop(x, pos, D, base, True, 1 / factor, 1.0, 1.0, orig)
    np.testing.assert_allclose(ops.rope(x, cos, sin, True), ref, rtol=2e-4, atol=2e-4)
    # at position 0 the rotation is the identity, scaled by the YaRN attention factor 0.1·ln(factor) + 1
    np.testing.assert_allclose(ops.rope(x, cos, sin, True)[0], x[0] * (0.1 * math.log(factor) + 1), rtol=1e-6)


def _attn_loop(q, k, v, q_pos, k_pos, scale, window=0, sinks=None):
    T, Hq, D = q.shape; Hkv = k.shape[0]; out = np.zeros((T, Hq, v.shape[-1]))
    for h in range(Hq):
        kh = h * Hkv // Hq
        for i in range(T):
            js = [j for j in range(len(k_pos)) if k_pos[j] <= q_pos[i] and (not window or q_pos[i] - k_pos[j] < window)]
            a = [scale * float(np.dot(q[i, h].astype(np.float64), k[kh, j])) for j in js]
            if sinks is not None: a.append(float(sinks[h]))
            m = max(a); e = [math.exp(z - m) for z in a]; s = sum(e)
            for n, j in enumerate(js): out[i, h] += e[n] / s * v[kh, j]
    return out


@pytest.mark.parametrize('T,S,Hq,Hkv,D,Dv,window,sinks', [
    (5, 5, 4, 4, 8, 8, 0, False),        # MHA, prefill
    (1, 9, 6, 2, 16, 16, 0, False),      # GQA decode
    (7, 7, 8, 2, 8, 4, 3, False),        # GQA, sliding window, Dv != D
    (4, 10, 4, 1, 8, 8, 4, True),        # MQA continuing a cache, window + sinks
    (3, 3, 2, 2, 4, 4, 0, True)])
def test_attention(T, S, Hq, Hkv, D, Dv, window, sinks):
    q, k, v = f32(T, Hq, D), f32(Hkv, S, D), f32(Hkv, S, Dv)
    q_pos = np.arange(S - T, S); k_pos = np.arange(S)
    sk = f32(Hq) if sinks else None
    out = ops.attention(q, k, v, q_pos, k_pos, 1 / math.sqrt(D), window=window, sinks=sk)
    assert out.shape == (T, Hq, Dv)
    np.testing.assert_allclose(out, _attn_loop(q, k, v, q_pos, k_pos, 1 / math.sqrt(D), window, sk), rtol=1e-4, atol=1e-5)


def test_attention_sink_lowers_mass():
    "With a huge sink logit nearly all probability goes to the (dropped) sink column: output → 0."
    q, k, v = f32(2, 2, 4), f32(2, 2, 4), f32(2, 2, 4)
    out = ops.attention(q, k, v, [0, 1], [0, 1], 0.5, sinks=np.full(2, 50.0, np.float32))
    assert np.abs(out).max() < 1e-10


@pytest.mark.parametrize('n', [1, 17, 1000])
def test_activations(n):
    g, u = f32(n) * 4, f32(n) * 4
    gd, ud = g.astype(np.float64), u.astype(np.float64)
    sig = lambda z: np.array([1 / (1 + math.exp(-t)) for t in z])
    gelu = np.array([0.5 * t * (1 + math.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3))) for t in gd])
    np.testing.assert_allclose(ops.silu(g), gd * sig(gd), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.swiglu(g, u), gd * sig(gd) * ud, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.gelu(g), gelu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.geglu(g, u), gelu * ud, rtol=1e-5, atol=1e-5)
    gg = np.array([min(t, 7.0) for t in gd]); uu = np.array([min(max(t, -7.0), 7.0) for t in ud])
    np.testing.assert_allclose(ops.swiglu_oai(g * 3, u * 3),
                               np.minimum(gd * 3, 7) * sig(1.702 * np.minimum(gd * 3, 7)) * (np.clip(ud * 3, -7, 7) + 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.swiglu_oai(g, u), gg * sig(1.702 * gg) * (uu + 1), rtol=1e-5, atol=1e-5)
    assert np.isfinite(ops.sigmoid(np.array([-1000, 1000], np.float32))).all()


@pytest.mark.parametrize('T,E,k', [(1, 4, 1), (5, 32, 4), (3, 8, 8)])
def test_moe_route(T, E, k):
    logits = f32(T, E)
    ids, w = ops.moe_route(logits, k)
    assert ids.shape == w.shape == (T, k)
    for t in range(T):
        order = sorted(range(E), key=lambda e: -logits[t, e])[:k]
        assert list(ids[t]) == order
        top = [float(logits[t, e]) for e in order]; z = [math.exp(v - max(top)) for v in top]
        np.testing.assert_allclose(w[t], [v / sum(z) for v in z], rtol=1e-6)


def test_softmax_rows_sum_to_one():
    x = f32(4, 9) * 30
    np.testing.assert_allclose(ops.softmax(x).sum(-1), np.ones(4), rtol=1e-6)
