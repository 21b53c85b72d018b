#!/usr/bin/env python
"""Time `orcd.quants.dequantize` against `gguf.quants.dequantize` on every tensor of a model.

    python scripts/bench_quants.py [MODEL]      # default: qwen2.5-coder-0.5b-instruct

Prints per-type wall seconds for both, the ratio (gguf time / ours) and total CPU seconds, and checks every tensor bit for bit.
"""
import sys, time, collections
from pathlib import Path
import numpy as np
import gguf, gguf.quants
from orcd.quants import dequantize, QUANT_TYPES


def model_path(name):
    try:
        from orcd.pull import resolve_model
        return resolve_model(name)
    except ImportError:
        from orcd.pull import orcd_home
        return orcd_home() / 'models' / f'{name}.gguf'


def raw_tensors(path):
    "(name, ggml_type, raw uint8 bytes) of every tensor, from orcd.gguf when present, else gguf.GGUFReader."
    try:
        from orcd.gguf import GGUFFile
        gf = GGUFFile(path)
        return [(n, ti.ggml_type, gf.raw(n)) for n, ti in gf.tensors.items()]
    except ImportError:
        r = gguf.GGUFReader(path)
        return [(t.name, int(t.tensor_type), np.asarray(t.data).reshape(-1).view(np.uint8)) for t in r.tensors]


def main(name='qwen2.5-coder-0.5b-instruct'):
    path = model_path(name)
    t0 = time.perf_counter()
    tensors = raw_tensors(path)
    print(f'{path.name}: {len(tensors)} tensors, opened in {time.perf_counter() - t0:.1f} s')
    ours, ref, vals = collections.Counter(), collections.Counter(), collections.Counter()
    cpu_ours = cpu_ref = 0.0
    for n, t, raw in tensors:
        raw = np.array(raw)  # into RAM first, so neither side pays for reading the mmap
        c0, t0 = time.process_time(), time.perf_counter()
        a = dequantize(raw, t)
        c1, t1 = time.process_time(), time.perf_counter()
        b = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t)).reshape(-1)
        c2, t2 = time.process_time(), time.perf_counter()
        cpu_ours += c1 - c0; cpu_ref += c2 - c1
        if not (a.view(np.uint32) == b.view(np.uint32)).all():
            sys.exit(f'MISMATCH in {n} ({QUANT_TYPES[t].name})')
        k = QUANT_TYPES[t].name
        ours[k] += t1 - t0; ref[k] += t2 - t1; vals[k] += a.size
        del a, b
    print(f'{"type":6} {"values":>12} {"orcd s":>8} {"gguf s":>8} {"ratio":>6}')
    for k in sorted(vals, key=lambda k: -ref[k]):
        print(f'{k:6} {vals[k]:12,} {ours[k]:8.2f} {ref[k]:8.2f} {ref[k] / ours[k]:6.1f}')
    to, tr = sum(ours.values()), sum(ref.values())
    print(f'{"all":6} {sum(vals.values()):12,} {to:8.2f} {tr:8.2f} {tr / to:6.1f}   (bit-exact: yes)')
    print(f'CPU time (less sensitive to other load): orcd {cpu_ours:.2f} s, gguf {cpu_ref:.2f} s, ratio {cpu_ref / cpu_ours:.1f}')


if __name__ == '__main__':
    main(*sys.argv[1:])
