"""Tokens per second through HTTP + SSE (`POST /execute`) as a ratio to the engine alone, in the same run.

    python scripts/bench_server.py [--model smollm2-135m-instruct] [--device cpu] [--tokens 16] [--reps 3]

The engine runs in this process (greedy, same prompt, same max_tokens), the server in a subprocess started through
the real CLI (`orcd serve`); runs alternate engine / server so that machine load drifts hit both alike, and the
ratio is median(server tok/s) / median(engine tok/s), both measured wall-clock from request to last token (prefill
included). A second figure bounds the server's own cost independently of the model: the fake engine of
tests/fake_engine.py at zero delay shows how many tokens per second the HTTP+SSE path can carry at all, i.e. the
per-token overhead in microseconds.
"""
import argparse, json, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))


def sse_run(client, body):
    "POST /execute and read the stream to its end; returns (wall seconds, tokens_out, terminal event)."
    from httpx_sse import connect_sse
    t0 = time.perf_counter()
    with connect_sse(client, 'POST', '/execute', json=body) as es:
        for sse in es.iter_sse():
            if sse.event in ('end', 'error'):
                d = json.loads(sse.data); dt = time.perf_counter() - t0
                if sse.event == 'error': raise RuntimeError(f'server error: {d}')
                return dt, d['tokens_out'], d
    raise RuntimeError('stream ended without a terminal event')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='smollm2-135m-instruct')
    p.add_argument('--device', default='cpu')
    p.add_argument('--ctx', type=int, default=512)
    p.add_argument('--tokens', type=int, default=16)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--prompt', default='Once upon a time, in a land far away,')
    p.add_argument('--fake-tokens', type=int, default=2000, help='tokens for the fake-engine overhead figure (0: skip)')
    a = p.parse_args(argv)
    import httpx
    from fake_engine import fake_server, real_server
    from orcd.engine import Engine, SamplingParams

    eng = Engine(a.model, device=a.device, n_ctx=a.ctx)
    params = lambda: SamplingParams(temperature=0, max_tokens=a.tokens, seed=0)
    list(eng.generate(a.prompt, SamplingParams(temperature=0, max_tokens=2)))  # warm-up
    body = {'prompt': a.prompt, 'max_tokens': a.tokens, 'temperature': 0, 'seed': 0}
    import psutil
    e_tps, s_tps, e_cpu, s_cpu = [], [], [], []
    cpu = lambda p: (lambda t: t.user + t.system)(p.cpu_times())
    with real_server(a.model, '--device', a.device, '--ctx', a.ctx, ready_timeout=300) as srv, \
            httpx.Client(base_url=srv.url, timeout=600) as c:
        sse_run(c, {**body, 'job_id': 'warm', 'max_tokens': 2})
        me, sp = psutil.Process(), psutil.Process(srv.pid)
        for r in range(a.reps):
            t0, c0 = time.perf_counter(), cpu(me)
            n = sum(ev.id is not None for ev in eng.generate(a.prompt, params()))
            e_tps.append(n / (time.perf_counter() - t0)); e_cpu.append(cpu(me) - c0)
            c0 = cpu(sp)
            dt, n2, _ = sse_run(c, {**body, 'job_id': f'bench-{r}'})
            s_tps.append(n2 / dt); s_cpu.append(cpu(sp) - c0)
            assert n2 == n, f'server generated {n2} tokens, engine {n}: not the same work'
            print(f'rep {r}: engine {e_tps[-1]:.3f} tok/s ({e_cpu[-1]:.2f} s CPU), server {s_tps[-1]:.3f} tok/s '
                  f'({s_cpu[-1]:.2f} s CPU), {n} tokens', flush=True)
    ratio = statistics.median(s_tps) / statistics.median(e_tps)
    paired = statistics.median(s / e for s, e in zip(s_tps, e_tps))
    print(f'{a.model} on {a.device}: engine alone {statistics.median(e_tps):.3f} tok/s, through HTTP+SSE '
          f'{statistics.median(s_tps):.3f} tok/s, ratio of medians {ratio:.3f}, median of paired ratios {paired:.3f} '
          f'(cost {100 * (1 - paired):+.1f}%)')
    cr = statistics.median(e_cpu) / statistics.median(s_cpu)
    print(f'CPU time per job (less sensitive to other load): engine alone {statistics.median(e_cpu):.2f} s, server process '
          f'{statistics.median(s_cpu):.2f} s, ratio {cr:.3f} (cost {100 * (1 - cr):+.1f}%)')
    if a.fake_tokens:
        with fake_server('--delay', 0) as fs, httpx.Client(base_url=fs.url, timeout=600) as c:
            sse_run(c, {'job_id': 'fw', 'prompt': 'x', 'max_tokens': 100})
            best = min(sse_run(c, {'job_id': f'f{i}', 'prompt': 'x', 'max_tokens': min(a.fake_tokens, 2048)})[0]
                       for i in range(3))
            n = min(a.fake_tokens, 2048)
            us = best / n * 1e6
            eng_ms = 1e3 / statistics.median(e_tps)
            print(f'server path alone (fake engine, no model): {n / best:.0f} tok/s = {us:.0f} µs per token, '
                  f'i.e. {100 * us / 1e3 / eng_ms:.2f}% of the engine\'s {eng_ms:.1f} ms per token')
    return 0


if __name__ == '__main__':
    sys.exit(main())
