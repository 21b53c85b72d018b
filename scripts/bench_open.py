#!/usr/bin/env python
"""Time opening a GGUF file with orcd.gguf: mmap + full header validation + ModelMetadata (+ the `orcd inspect`
report), against gguf-py's GGUFReader with --reader. Usage: python scripts/bench_open.py [MODEL] [-n 5] [--reader]"""
import argparse, statistics, time
from orcd.pull import resolve_model
from orcd.gguf import GGUFFile, format_inspect


def timed(fn, n):
    "(min wall, median wall, min CPU) seconds over n runs; CPU time is what a busy shared machine can't inflate."
    ts, cs = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time(); fn()
        ts.append(time.perf_counter() - t); cs.append(time.process_time() - c)
    return min(ts), statistics.median(ts), min(cs)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('model', nargs='?', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('-n', type=int, default=5)
    ap.add_argument('--reader', action='store_true', help="also time gguf-py's GGUFReader (slow)")
    a = ap.parse_args()
    path = resolve_model(a.model, progress=False)

    def open_meta():
        with GGUFFile(path) as gf: gf.metadata

    def open_report():
        with GGUFFile(path) as gf: format_inspect(gf)

    rows = [('open + validate + metadata', *timed(open_meta, a.n)),
            ('... + formatted inspect report', *timed(open_report, a.n))]
    if a.reader:
        import gguf
        rows.append(("gguf-py GGUFReader (no validation)", *timed(lambda: gguf.GGUFReader(path), 1)))
    with GGUFFile(path) as gf:
        print(f'{path}: {gf.size:,} bytes, {len(gf.kv)} keys, {len(gf.tensors)} tensors')
    print(f'{"":<36} {"min s":>8} {"median s":>9} {"min CPU s":>10}')
    for name, mn, md, cpu in rows: print(f'{name:<36} {mn:>8.3f} {md:>9.3f} {cpu:>10.3f}')


if __name__ == '__main__':
    main()
