"""Speed of the CPU backend on this machine: Qwen2.5-Coder-0.5B decode tok/s (and prefill tok/s), and the wall
time of a short chat answer with the default model — what a user of `orcd generate --chat` waits for once the
model is loaded (aim: under 10 s), plus the load time.

    python scripts/bench_cpu.py [--model NAME|PATH] [--prompt-tokens 64] [--gen-tokens 16] [--json]
"""
import argparse, json, sys, time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--prompt-tokens', type=int, default=64)
    ap.add_argument('--gen-tokens', type=int, default=16)
    ap.add_argument('--question', default='What is the capital of France? Answer in one sentence.')
    ap.add_argument('--max-tokens', type=int, default=64)
    ap.add_argument('--json', action='store_true')
    a = ap.parse_args(argv)
    import os
    from orcd.engine import Engine, SamplingParams
    from orcd.bench import bench_backend, format_table
    t = time.perf_counter()
    eng = Engine(a.model, device='cpu')
    load_s = time.perf_counter() - t
    r = bench_backend(eng.backend, eng.tokenizer.vocab_size, a.prompt_tokens, a.gen_tokens)
    t = time.perf_counter()
    evs = list(eng.generate(a.question, SamplingParams(temperature=0, max_tokens=a.max_tokens), chat=True))
    chat_s = time.perf_counter() - t
    answer = ''.join(e.text for e in evs)
    res = dict(model=eng.model_name, cores=os.cpu_count(), load_s=round(load_s, 2),
               prefill_tps=round(r['prefill_tps']['median'], 2), decode_tps=round(r['decode_tps']['median'], 2),
               chat_question=a.question, chat_answer=answer, chat_prompt_tokens=evs[-1].prompt_tokens,
               chat_completion_tokens=evs[-1].completion_tokens, chat_finish=evs[-1].finish_reason,
               chat_wall_s=round(chat_s, 2), memory_bytes=eng.backend.memory_bytes)
    if a.json: print(json.dumps(res, ensure_ascii=False)); return 0
    print(format_table(r, title=f'{eng.model_name} · CPU · {os.cpu_count()} cores · loaded in {load_s:.1f} s'))
    print(f'\nchat: {a.question!r} → {answer.strip()!r}')
    print(f'{res["chat_prompt_tokens"]} prompt + {res["chat_completion_tokens"]} tokens ({res["chat_finish"]}) '
          f'in {chat_s:.2f} s wall (aim < 10 s); weights + cache {res["memory_bytes"] / 2**30:.2f} GiB')
    return 0


if __name__ == '__main__':
    sys.exit(main())
