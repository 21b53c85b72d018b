"""Walk the step list of a model on the CPU (numpy) and on the GPU side by side and print, after every (fused) GPU
step, how far its output buffer is from the CPU's: where a GPU lowering departs from the reference.
    python scripts/gpu_debug_steps.py MODEL.gguf [--tokens 19] [--decode]"""
import argparse, math, sys
import numpy as np

def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('model'); ap.add_argument('--tokens', type=int, default=19)
    ap.add_argument('--decode', action='store_true', help='compare one decode step after the prompt instead')
    ap.add_argument('--layers', type=int, default=3, help='print every step of the first N layers')
    a = ap.parse_args(argv)
    import cupy
    from orcd.gguf import GGUFFile
    from orcd.adapters import load_adapter, CPU_OPS, rope_tables
    from orcd.cuda_backend import CUDABackend, LOWERINGS, fuse, _flat
    gf = GGUFFile(a.model)
    ad, be = load_adapter(gf), CUDABackend(gf, 256)
    ids = np.random.default_rng(0).integers(0, min(ad.hp.vocab_size, 30000), a.tokens)
    cache = ad.new_cache(256)
    if a.decode:                                                   # both hold the prompt; compare the next token
        ad.forward(ids[:-1], np.arange(len(ids) - 1), cache); be.prefill(ids[:-1])
        ids_run, pos = ids[-1:], np.array([len(ids) - 1])
    else: ids_run, pos = ids, np.arange(len(ids))
    T, pre = len(ids_run), not a.decode
    env = dict(ids=ids_run, pos=pos, cache=cache, S=int(pos.max()) + 1,
               tables=rope_tables(ad.hp, ad.recipe, pos) if ad.recipe.rope else None)
    be.ids[:T].set(ids_run.astype(np.int32)); be.pos[:T].set(pos.astype(np.int32)); be.pos0 = int(pos[0])
    flat = _flat(be, tail=not pre)
    fused, i = fuse(flat), 0
    worst = {}
    for s, li in fused:
        n = 2 if s.op in ('linear_acc', 'add_norm') else 1
        for cs, cli in flat[i:i + n]:
            if cli is not None: env.update(li=cli, window=ad.windows[cli])
            CPU_OPS[cs.op](ad, cs, ad.glob if cli is None else ad.layers[cli], env)
        i += n
        LOWERINGS[s.op](be, s, be.glob if li is None else be.layers[li], li, T, pre)()
        outs = [s.dst] + ([s.arg] if s.op == 'add_norm' else [])
        for name in outs:
            if name is None or name not in env: continue
            g = cupy.asnumpy(be.rows(name, T)); c = np.asarray(env[name]).reshape(g.shape)
            err = float(np.abs(g - c).max() / max(np.abs(c).max(), 1e-30))
            worst[s.op] = max(worst.get(s.op, 0), err)
            if li is None or li < a.layers or err > 1e-2:
                print(f'layer {li} {s.op:10s} {s.w or s.arg or "":12s} → {name:6s} rel err {err:.2e}  (max|cpu| {np.abs(c).max():.3g})')
    if 'rope_kv' in worst:                                      # the fp16 cache of the last layer
        kc = cupy.asnumpy(be.k_cache[-1][:, :env['S']]).astype(np.float32); ck = cache.k[-1][:, :env['S']]
        print('k cache (last layer) rel err', np.abs(kc - ck).max() / np.abs(ck).max())
    print('worst per op:', {k: f'{v:.1e}' for k, v in worst.items()})

if __name__ == '__main__': sys.exit(main())
