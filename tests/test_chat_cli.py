"""`orcd chat`: the real command over a pipe with the real model (smollm2-135m-instruct on CPU), and the loop's rules
(commands, multi-line turns, Ctrl-C, a history that outgrows the context) with a stand-in engine.

The real run shows that the history is kept: with `--verbose` each turn reports its prompt's token count, and the
second turn's prompt is exactly the chat template over [question 1, answer 1 as printed, question 2]; after `/clear`
the prompt is the first one again, and so (greedy) is the answer."""
import builtins, io, re, subprocess, sys
from pathlib import Path

import pytest

from conftest import real_model
from orcd.cli import ChatSession, make_parser, run_chat
from orcd.engine import SamplingParams, TokenEvent
from orcd.errors import ContextOverflowError

MODEL = 'smollm2-135m-instruct'
STATS = re.compile(r'^\[turn (\d+) · (\w+) · (\d+) prompt tokens(?: \((\d+) cached\))? · (\d+) tokens · ')


def test_chat_flags():
    a = make_parser().parse_args(['chat'])
    assert a.model is None and a._target == 'orcd.cli:cli_chat' and a.temperature == 0.0 and a.device == 'auto'
    a = make_parser().parse_args(['chat', MODEL, '--temperature', '0.7', '--top-k', '20', '--seed', '3', '--max-tokens', '9',
                                  '--device', 'cpu', '--ctx', '512', '--system', 'be brief', '--verbose', '--stop', 'x'])
    assert (a.model, a.temperature, a.top_k, a.seed, a.max_tokens, a.ctx, a.system, a.verbose, a.stop) == \
           (MODEL, 0.7, 20, 3, 9, 512, 'be brief', True, ['x'])


def test_real_chat_over_a_pipe():
    from orcd.gguf import GGUFFile
    from orcd.tokenizer import load_tokenizer
    tok = load_tokenizer(GGUFFile(real_model(MODEL)))
    q1, q2 = 'What is the capital of France?', 'And of Germany?'
    script = f'{q1}\n{q2}\n/clear\n{q1}\n/bye\nNever asked\n'
    p = subprocess.run([sys.executable, '-m', 'orcd.cli', 'chat', MODEL, '--temperature', '0', '--device', 'cpu',
                        '--ctx', '512', '--max-tokens', '24', '--verbose'],
                       input=script, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr[-2000:]
    print(f'\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}')
    assert '>>>' not in p.stdout and p.stdout.endswith('\n\n')
    answers = p.stdout[:-2].split('\n\n')
    stats = [STATS.match(l) for l in p.stderr.splitlines() if l.startswith('[turn')]
    assert len(answers) == 3 and all(answers) and len(stats) == 3 and all(stats)   # /bye: the last line was not asked
    (t1, f1, p1, c1, n1), (t2, f2, p2, c2, n2), (t3, f3, p3, c3, n3) = [m.groups() for m in stats]
    p1, p2, p3 = int(p1), int(p2), int(p3)
    u1, u2 = {'role': 'user', 'content': q1}, {'role': 'user', 'content': q2}
    assert p1 == len(tok.encode_chat([u1]))
    assert p2 == len(tok.encode_chat([u1, {'role': 'assistant', 'content': answers[0]}, u2]))   # the history, answer 1 in it
    assert p3 == p1 and answers[2] == answers[0]                                               # /clear: a fresh start
    if c2 is not None: assert int(c2) >= p1   # the prompt cache reused (at least) the whole first prompt
    assert 'Cleared session context' in p.stderr


# ---- the loop's rules, with a stand-in engine ------------------------------------------------------------------------
class Echo:
    "Answers 'heard N' for a history of N messages; refuses more than `limit` messages (as the engine refuses a long prompt)."
    model_name, device = 'echo', 'cpu'
    def __init__(self, limit=99): self.limit, self.seen = limit, []
    def generate(self, msgs, params, chat=False, cancel=None):
        assert chat is True
        if len(msgs) > self.limit: raise ContextOverflowError(f'{len(msgs)} messages')
        self.seen.append([dict(m) for m in msgs])
        words = ['heard', f' {len(msgs)}']
        return (TokenEvent(w, i, i, 'eos' if i == 1 else None, len(msgs)) for i, w in enumerate(words))

def chat(script, engine=None, **kw):
    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(engine or Echo(), SamplingParams(), kw.pop('system', None))
    rc = run_chat(s, io.StringIO(script), out, err, interactive=False, **kw)
    return rc, out.getvalue(), err.getvalue(), s


def test_commands_and_multiline():
    rc, out, err, s = chat('one\n\n/?\ntwo\n"""three\n  four\nfive"""\n/clear\nsix\n/nope\n', verbose=True)
    assert rc == 0 and out == 'heard 1\n\nheard 3\n\nheard 5\n\nheard 1\n\n'
    assert s.engine.seen[2][-1] == {'role': 'user', 'content': 'three\n  four\nfive'}
    assert '/clear' in err and "Unknown command '/nope'" in err
    assert [STATS.match(l).group(3) for l in err.splitlines() if l.startswith('[turn')] == ['1', '3', '5', '1']
    rc, out, err, s = chat('/bye\nnever\n')
    assert rc == 0 and out == '' and s.engine.seen == []


def test_system_prompt_survives_clear_and_overflow_drops_oldest():
    rc, out, err, s = chat('a\nb\nc\n', engine=Echo(limit=4), system='sys')
    # turn 3 would be [sys, a, A, b, B, c] (6): the oldest exchange goes, then [sys, b, B, c] fits
    assert out == 'heard 2\n\nheard 4\n\nheard 4\n\n' and 'oldest exchange was dropped' in err
    assert [m['content'] for m in s.messages] == ['sys', 'b', 'heard 4', 'c', 'heard 4']
    s.clear()
    assert s.messages == [{'role': 'system', 'content': 'sys'}]
    rc, out, err, s = chat('x\n', engine=Echo(limit=0))   # a single turn that cannot fit: an error, nothing kept
    assert rc == 1 and out == '' and 'error: ' in err and s.messages == []


def test_interrupt_drops_the_turn():
    class Slow(Echo):
        def generate(self, msgs, params, chat=False, cancel=None):
            gen = super().generate(msgs, params, chat, cancel)
            def g():
                yield next(gen)
                raise KeyboardInterrupt
            return g()
    rc, out, err, s = chat('a\nb\n', engine=Slow())
    assert rc == 130 and s.messages == [] and out == 'heard\n'   # piped: Ctrl-C ends the session


def test_interactive_prompt(monkeypatch):
    lines = iter(['hi', KeyboardInterrupt, 'again', EOFError])
    prompts = []
    def fake_input(prompt=''):
        prompts.append(prompt)
        x = next(lines)
        if isinstance(x, type): raise x
        return x
    monkeypatch.setattr(builtins, 'input', fake_input)
    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(Echo(), SamplingParams())
    assert run_chat(s, io.StringIO(), out, err, interactive=True) == 0
    assert prompts == ['>>> '] * 4 and out.getvalue() == 'heard 1\n\nheard 3\n\n'
    assert 'Ctrl + d or /bye' in err.getvalue() and 'echo' in err.getvalue()
