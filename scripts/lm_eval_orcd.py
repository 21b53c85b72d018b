#!/usr/bin/env python3
"""lm-evaluation-harness against `orcd serve`: the `local-completions` model (OpenAI `/v1/completions` with
`echo` + `logprobs`, the loglikelihood path) on the small local multiple-choice task in
tests/fixtures/lm_eval/ (20 questions, 4 choices), with the server's own tokenizer (`tokenizer_backend=remote`:
orcd serves vLLM's `/tokenizer_info`, `/tokenize`, `/detokenize`), so nothing is fetched from a model hub.

lm-eval is NOT a project dependency: it lives in a venv of its own (git-ignored), made on first use:

    python scripts/lm_eval_orcd.py [--model qwen2.5-coder-0.5b-instruct] [--limit N] [--port 8090]

It starts `orcd serve MODEL --device cpu` with this interpreter (the project's venv), runs
`python -m lm_eval` from the lm-eval venv (build/refenv/lm-eval, or $ORCD_LM_EVAL_PYTHON), prints the
accuracy, and writes lm-eval's results and the server's log under build/lm_eval/MODEL-TIME/.
"""
import argparse, glob, json, os, signal, socket, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / 'build' / 'refenv' / 'lm-eval'
LM_EVAL = 'lm-eval[api]==0.4.13'


def lm_eval_python():
    "The interpreter of the lm-eval venv, made (pip install lm-eval[api]) when missing."
    named = os.environ.get('ORCD_LM_EVAL_PYTHON')
    if named: return named
    py = VENV / 'bin' / 'python'
    if not (VENV / '.ready').exists():
        print(f'lm_eval_orcd: making {VENV.relative_to(ROOT)} with {LM_EVAL} (a few minutes, once)', file=sys.stderr)
        subprocess.run([sys.executable, '-m', 'venv', str(VENV)], check=True)
        subprocess.run([str(py), '-m', 'pip', 'install', '--quiet', LM_EVAL], check=True)
        (VENV / '.ready').write_text(LM_EVAL + '\n')
    return str(py)


def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait_ready(url, proc, timeout=300):
    import urllib.request
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None: sys.exit(f'lm_eval_orcd: orcd serve exited with {proc.returncode}')
        try:
            with urllib.request.urlopen(url + '/health', timeout=2) as r:
                if r.status == 200: return
        except OSError: pass
        time.sleep(0.5)
    sys.exit('lm_eval_orcd: orcd serve was not ready in time')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--port', type=int, default=None)
    ap.add_argument('--limit', type=int, default=None, help='only the first N questions')
    ap.add_argument('--ctx', type=int, default=1024)
    a = ap.parse_args(argv)
    py = lm_eval_python()
    port = a.port or free_port()
    url = f'http://127.0.0.1:{port}'
    run = ROOT / 'build' / 'lm_eval' / f'{a.model}-{time.strftime("%Y%m%dT%H%M%S")}'
    run.mkdir(parents=True, exist_ok=True)
    log = open(run / 'server.log', 'w')
    server = subprocess.Popen([sys.executable, '-c', 'import sys, orcd.cli; sys.exit(orcd.cli.main())', 'serve', a.model,
                               '--device', 'cpu', '--port', str(port), '--ctx', str(a.ctx)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_ready(url, server)
        out = run
        cmd = [py, '-m', 'lm_eval', '--model', 'local-completions',
               '--model_args', f'base_url={url}/v1/completions,model={a.model},tokenizer_backend=remote,'
                               f'tokenized_requests=True,num_concurrent=1,max_retries=1,timeout=600',
               '--tasks', 'orcd_mini_mc', '--include_path', str(ROOT / 'tests' / 'fixtures' / 'lm_eval'),
               '--batch_size', '1', '--output_path', str(out)]
        if a.limit: cmd += ['--limit', str(a.limit)]
        t0 = time.monotonic()
        env = {**os.environ, 'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}
        r = subprocess.run(cmd, cwd=ROOT, env=env)
        if r.returncode != 0: sys.exit(f'lm_eval_orcd: lm_eval exited with {r.returncode}')
        files = sorted(glob.glob(str(out / '**' / 'results_*.json'), recursive=True), key=os.path.getmtime)
        res = json.load(open(files[-1]))['results']['orcd_mini_mc']
        print(json.dumps({'model': a.model, 'task': 'orcd_mini_mc', 'acc': res.get('acc,none'), 'acc_norm': res.get('acc_norm,none'),
                          'acc_stderr': res.get('acc_stderr,none'), 'seconds': round(time.monotonic() - t0, 1)}))
    finally:
        server.send_signal(signal.SIGTERM)
        try: server.wait(30)
        except subprocess.TimeoutExpired: server.kill()
    return 0


if __name__ == '__main__':
    sys.exit(main())
