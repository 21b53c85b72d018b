#!/usr/bin/env python
"""Write the tokenizer conformance fixtures under tests/fixtures/tokenizer/ from llama.cpp's own tokenizer.

Run with the interpreter that has llama-cpp-python (built from the 0.3.36 sdist on CPU):

    build/refenv/llama-cpp/bin/python scripts/make_tokenizer_fixtures.py [MODEL_DIR]

MODEL_DIR defaults to $ORCD_HOME/models (~/.cache/orcd/models). For every model it writes
`<name>.json.gz` holding:

- `strings`: the test strings (generated deterministically below and stored, so the test does not
  depend on this script);
- `cases`: for each string, the ids llama.cpp gives with `add_special=True` and `parse_special` False
  (`plain`) and True (`special`), and `roundtrip`: whether the concatenated pieces of the plain ids
  (`llama_token_to_piece(..., special=False)`) give back the string's UTF-8 bytes;
- `vocab`: n_vocab, bos/eos, add_bos/add_eos, the EOG ids (`llama_vocab_is_eog` over the whole vocabulary),
  and a sha256 over every token's piece (special=True and special=False) so `token_bytes` can be checked
  without storing 262,144 pieces;
- `chats`: a few conversations rendered by llama.cpp's built-in template application
  (`llama_chat_apply_template` with the model's `tokenizer.chat_template`) and their ids
  (`tokenize(text, add_special=True, parse_special=True)`), for models that have a template.

It also writes `<base>+<variant>.json.gz` for the VARIANTS below (same strings; `detok` is
`llama_detokenize` of the ids without BOS).
"""
import ctypes, gzip, hashlib, json, os, random, sys
from pathlib import Path

import llama_cpp

MODELS = ['qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct', 'gemma-3-270m']
OUT = Path(__file__).resolve().parent.parent / 'tests' / 'fixtures' / 'tokenizer'


def make_strings():
    "The conformance strings: fixed examples of every kind the issue names, plus seeded random mixes."
    S = []
    prose = [
        "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times.", " leading space", "trailing space ",
        "  two leading spaces", "Mixed CASE Words And ACRONYMS like NASA, GPU and HTTP.",
        "I'm sure you're right, we've seen it, they'll agree, she'd go, it's fine, don't.",
        "I'M SURE YOU'RE RIGHT, WE'VE SEEN IT, THEY'LL AGREE, SHE'D GO, IT'S FINE, DON'T.",
        "rock 'n' roll", "'quoted' and \"double quoted\"", "O'Neil's dog's toy", "'s 't 're 've 'm 'll 'd",
        "Ünïcödé àccents: café, naïve, façade, coöperate, Ångström, Øresund.",
        "Straße, Mädchen, Größe", "ﬁ ligature and ﬀ", "Ελληνικά γράμματα", "Русский текст, привет мир!",
        "עברית מימין לשמאל", "Tiếng Việt có dấu", "Türkçe İstanbul ıı", "Polski: zażółć gęślą jaźń",
        "e.g. i.e. etc. Mr. Smith vs. Dr. Jones", "Hyphen-ated words -- and em—dashes – en dashes…",
        "Question? Exclamation! Semicolon; colon: comma,", "(parentheses) [brackets] {braces} <angles>",
        "@mention #hashtag $dollar %percent ^caret &amp *star", "back\\slash and forward/slash",
        "~tilde `backtick` |pipe| _underscore_", "a", "A", " ", "  ", "\t", "\n", "\r\n", ".", "...",
    ]
    S += prose
    code = [
        "def f(x):\n    return x * 2\n",
        "import numpy as np\n\nclass Foo(Bar):\n    def __init__(self, a: int = 3) -> None:\n        self.a = a  # comment\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
        "const f = async (a, b) => { await fetch(`/api/${a}?b=${b}`); };",
        "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC LIMIT 10;",
        "<html><body><div class=\"x\">Hi &amp; bye</div></body></html>",
        "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
        "public static void main(String[] args) { System.out.println(\"x\" + args.length); }",
        "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\" | wc -c; done\n",
        "x <- c(1, 2, 3)\nmean(x[x > 1])", "let rec fact n = if n = 0 then 1 else n * fact (n - 1)",
        "    indented with four spaces\n        and eight\n\t\tand two tabs",
        "if x == 1:\n\n\n    pass\n\n", "a=b+c-d*e/f%g", "i++; j--; k += 1; l -= 2; m **= 3;",
        "matrix[i][j] = matrix[j][i]", "print('hello')  # trailing comment   ", "```python\nprint(1)\n```",
        "λx. x + 1", "SELECT * FROM t; -- comment\n/* block */", "key: value\nlist:\n  - a\n  - b\n",
        "diff --git a/x b/x\n@@ -1,3 +1,4 @@\n-old\n+new\n", "0x1F 0b1010 0o777 1_000_000 3.14159e-10",
    ]
    S += code
    scripts = [
        "你好，世界！", "我们今天去公园散步，然后吃了一顿丰盛的晚餐。", "機械学習は人工知能の一分野です。",
        "ひらがなとカタカナ、漢字が混ざった文章", "한국어 문장도 잘 토큰화되어야 합니다.", "中文English混合text测试",
        "مرحبا بالعالم", "اللغة العربية جميلة جداً، وهي لغة القرآن.", "नमस्ते दुनिया", "हिन्दी भाषा भारत में बोली जाती है।",
        "สวัสดีครับ", "ภาษาไทยไม่มีช่องว่างระหว่างคำ", "ជំរាបសួរ", "ქართული ენა", "Հայերեն", "አማርኛ",
        "தமிழ் மொழி", "বাংলা ভাষা", "ਪੰਜਾਬੀ", "ગુજરાતી", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "සිංහල", "မြန်မာ", "ລາວ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒜𝒷𝒸", "∀x∈ℝ: x²≥0, ∑ᵢ aᵢ = ∫f(x)dx ≈ π", "½ ¾ ⅓ ² ³ ① ② ⅷ", "０１２３ ＡＢＣ ｱｲｳ",
        "Ω≈ç√∫˜µ≤≥÷", "§¶†‡•‰′″", "€£¥₹₽¢", "©®™℠", "←↑→↓↔", "♠♣♥♦", "░▒▓█", "┌─┐│└┘",
    ]
    S += scripts
    emoji = [
        "😀", "😀😃😄", "I ❤️ Python 🐍", "👍👍🏻👍🏼👍🏽👍🏾👍🏿", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 and 🏴‍☠️",
        "👩🏽‍💻 coding", "🧑‍🤝‍🧑", "🇫🇷🇯🇵🇺🇸", "❤️‍🔥", "🤷‍♂️🤷‍♀️", "#️⃣ 1️⃣ 2️⃣", "☺︎ ☺️", "🫠🫡🫥",
        "emoji at end 🎉", "🎉 emoji at start", "a😀b😀c", "👋🏾 hi", "🐕‍🦺", "🧔🏻‍♂️",
    ]
    S += emoji
    ws = [
        "   ", "\t\t", "\n\n", "\n\n\n", "\r\n\r\n", " \n ", "\t \t \n", "a  b   c    d", "a\tb\t\tc",
        "a\nb\n\nc\n\n\nd", "line1\r\nline2\r\n", "     x", "x     ", "\n    \n    x", " " * 17, "\t" * 9,
        "\n" * 12, " \t\n\r\x0b\x0c", "word\u00a0nbsp", "thin\u2009space", "ideographic\u3000space", "zero\u200bwidth",
        "soft\u00adhyphen", "a \n\n b", "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
        "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t", " \u2028 \u2029 ", "x\u0085y",
    ]
    S += ws
    nums = [
        "0", "1", "12", "123", "1234", "12345", "123456789", "3.14159", "-42", "+7", "1,000,000",
        "1.000.000,00", "2024-01-31", "12:34:56", "10%", "$1,234.56", "1e10", "6.022e23",
        "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679",
        "phone: +1 (555) 123-4567", "v1.2.3-beta.4", "192.168.0.1", "٣٤٥ ١٢", "१२३४", "๑๒๓", "Ⅻ", "1st 2nd 3rd 4th",
        "0000000000", "9" * 40, "abc123def456", "x1y2z3",
    ]
    S += nums
    urls = [
        "https://www.example.com/path/to/page?query=1&x=y#frag", "http://localhost:8080/api/v1/items",
        "mailto:someone@example.org", "ftp://files.example.net/pub/file.tar.gz",
        "See https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp#L100 for details.",
        "user@mail.example.co.uk", "C:\\Users\\name\\Documents\\file.txt", "/usr/local/bin/python3.11",
        "https://例え.jp/パス", "www.test.com/a_b-c.d~e",
    ]
    S += urls
    specials = [
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "text<|im_end|>more", "<|im_start|><|im_start|>", "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>", "<|file_sep|><|repo_name|>", "[PAD151665]",
        "<filename>a.py<gh_stars>", "<jupyter_code>print(1)<jupyter_output>", "<repo_name>x<file_sep>",
        "<bos>", "<eos>", "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n", "<pad><unk><mask>",
        "<unused0> <unused99>", "[multimodal]", "<start_of_image><end_of_image>", "x<end_of_turn>y",
        "<|im_start", "im_start|>", "< |im_start| >", "<|IM_START|>", "<|endoftext|><|endoftext|>",
        " <|im_end|> ", "\n<|im_end|>\n", "<s></s>", "<|begin_of_text|><|eot_id|>", "<|return|><|call|>",
    ]
    S += specials
    edge = [  # odd code points: separators, unassigned, combining marks, format characters, C0/C1 controls
        '\x1c\x1d\x1e\x1f', 'a\x1cb', '\u0378x', 'x\u0378', '!\u0378!', '\U000E0001', 'e\u0301', '\u0301', '\u200d',
        '\ufeffBOM', 'a\x00b', ' \u0378', '\U0010FFFD', '\u2028', 'ab\u3000 c', '\u00a0\u00a0x', '  \u00a0x', 'x\u180e',
        '\u061c', '𝟘𝟙', 'ǅ', 'ᾈ', '\u16ee', "I'M", "'S", "don'T", 'Ⅻ12', '²³', 'ab\r\r\nc', '\r', ' \r\n x', '\x0b\x0c',
        'x\x85', '\x85x', ' \x85 ',
    ]
    S += edge
    # seeded random mixes of all the pieces above (deterministic: fixed seed, fixed alphabet)
    rng = random.Random(1234)
    pool = list(S)
    alphabet = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \t\n.,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`"
                "éüñßçøåæœ你好世界日本語한국مرحباनमस्तेสวัสดี😀👍🏽👨‍👩‍👧‍🦺\u200d\ufe0f")
    while len(S) < 360:
        k = rng.randint(2, 5)
        parts = [rng.choice(pool) for _ in range(k)]
        parts.append(''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))))
        rng.shuffle(parts)
        S.append(rng.choice(['', ' ', '\n', '  ']).join(parts))
    S.append('')  # the empty string
    long = []
    while sum(map(len, long)) < 20000:
        long.append(rng.choice(pool))
    S.append((' '.join(long))[:20000])  # a 20,000-character text
    return S


def pieces_of(vocab, ids, special):
    buf = ctypes.create_string_buffer(1024)
    out = []
    for i in ids:
        n = llama_cpp.llama_token_to_piece(vocab, i, buf, 1024, 0, special)
        assert 0 <= n <= 1024, (i, n)
        out.append(buf.raw[:n])
    return out


CHATS = [
    [{'role': 'system', 'content': 'You are a helpful assistant.'},
     {'role': 'user', 'content': 'Hello!'}],
    [{'role': 'system', 'content': 'You are terse.'},
     {'role': 'user', 'content': 'What is 2+2?'},
     {'role': 'assistant', 'content': '4'},
     {'role': 'user', 'content': 'And 3+3? Answer in a sentence, then write code:\n```python\nprint(3+3)\n```'}],
    [{'role': 'system', 'content': 'Réponds en français 🇫🇷.'},
     {'role': 'user', 'content': '你好'},
     {'role': 'assistant', 'content': 'Bonjour ! 你好 !'},
     {'role': 'user', 'content': '  spaces  and\n\nnewlines  '}],
]


def render_chat(tmpl: str, msgs, add_ass: bool) -> str:
    arr = (llama_cpp.llama_chat_message * len(msgs))()
    keep = []
    for i, m in enumerate(msgs):
        r, c = m['role'].encode(), m['content'].encode()
        keep += [r, c]
        arr[i].role, arr[i].content = r, c
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(tmpl.encode(), arr, len(msgs), add_ass, buf, size)
    if n < 0: raise RuntimeError(f'llama_chat_apply_template failed ({n}): template not recognised')
    assert n <= size
    return buf.raw[:n].decode('utf-8')


# Variants: a real vocabulary with some tokenizer keys changed, written as a tensor-less GGUF with gguf-py,
# so llama.cpp exercises paths no reachable model has (Gemma's vocabulary with add_space_prefix = true is
# the Phi-3 / Llama-2 SentencePiece behaviour: a "▁" in front of the text and after every special token).
VARIANTS = [('gemma-3-270m', 'gemma-3-270m+space-prefix', {'tokenizer.ggml.add_space_prefix': True})]


def write_variant(src, dst, overrides):
    import gguf
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=r.fields['general.architecture'].contents())
    for k, f in r.fields.items():
        if k.startswith('GGUF.') or k == 'general.architecture': continue
        v = overrides.get(k, f.contents())
        if f.types[0] == gguf.GGUFValueType.ARRAY: w.add_key_value(k, v, f.types[0], sub_type=f.types[-1])
        else: w.add_key_value(k, v, f.types[0])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def detokenize(vocab, ids):
    "llama_detokenize(remove_special=False, unparse_special=False)."
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    buf = ctypes.create_string_buffer(1 << 20)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, 1 << 20, False, False)
    assert 0 <= n, n
    return buf.raw[:n].decode('utf-8', 'replace')


def main():
    home = Path(os.environ.get('ORCD_HOME', Path.home() / '.cache' / 'orcd'))
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else home / 'models'
    OUT.mkdir(parents=True, exist_ok=True)
    strings = make_strings()
    llama_cpp.llama_backend_init()
    for name in MODELS:
        path = model_dir / f'{name}.gguf'
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        cases = []
        for s in strings:
            b = s.encode('utf-8')
            plain = llm.tokenize(b, add_bos=True, special=False)
            special = llm.tokenize(b, add_bos=True, special=True)
            bare = llm.tokenize(b, add_bos=False, special=False)
            rt = b''.join(pieces_of(vocab, bare, False)) == b
            cases.append({'plain': plain, 'special': special, 'roundtrip': rt})
        h_sp, h_pl = hashlib.sha256(), hashlib.sha256()
        all_ids = list(range(n_vocab))
        for i, (ps, pp) in enumerate(zip(pieces_of(vocab, all_ids, True), pieces_of(vocab, all_ids, False))):
            h_sp.update(len(ps).to_bytes(4, 'little') + ps)
            h_pl.update(len(pp).to_bytes(4, 'little') + pp)
        eog = [i for i in all_ids if llama_cpp.llama_vocab_is_eog(vocab, i)]
        v = {
            'n_vocab': n_vocab,
            'bos': llama_cpp.llama_vocab_bos(vocab), 'eos': llama_cpp.llama_vocab_eos(vocab),
            'add_bos': bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            'add_eos': bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            'eog': eog, 'pieces_sha256_special': h_sp.hexdigest(), 'pieces_sha256_plain': h_pl.hexdigest(),
        }
        tmpl_p = llama_cpp.llama_model_chat_template(llm.model, None)
        chats = []
        if tmpl_p:
            tmpl = tmpl_p.decode('utf-8')
            for msgs in CHATS:
                for add_ass in (True, False):
                    text = render_chat(tmpl, msgs, add_ass)
                    ids = llm.tokenize(text.encode(), add_bos=True, special=True)
                    chats.append({'messages': msgs, 'add_generation_prompt': add_ass, 'text': text, 'ids': ids})
        fx = {'model': name, 'generator': f'llama-cpp-python {llama_cpp.__version__} (llama.cpp tokenizer)',
              'strings': strings, 'cases': cases, 'vocab': v, 'chats': chats}
        out = OUT / f'{name}.json.gz'
        with gzip.open(out, 'wt', encoding='utf-8', compresslevel=9) as f:
            json.dump(fx, f, ensure_ascii=False, separators=(',', ':'))
        n_rt = sum(c['roundtrip'] for c in cases)
        print(f'{name}: {len(strings)} strings, {n_rt} round-trip, {len(eog)} EOG ids, {len(chats)} chats '
              f'-> {out} ({out.stat().st_size} bytes)')
        del llm
    import tempfile
    for base, name, overrides in VARIANTS:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / 'variant.gguf'
            write_variant(model_dir / f'{base}.gguf', path, overrides)
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            cases = []
            for s in strings:
                b = s.encode('utf-8')
                bare = llm.tokenize(b, add_bos=False, special=False)
                cases.append({'plain': llm.tokenize(b, add_bos=True, special=False),
                              'special': llm.tokenize(b, add_bos=True, special=True),
                              'detok': detokenize(vocab, bare)})
            del llm
        fx = {'model': name, 'base': base, 'kv_overrides': overrides,
              'generator': f'llama-cpp-python {llama_cpp.__version__} (llama.cpp tokenizer)',
              'strings': strings, 'cases': cases}
        out = OUT / f'{name}.json.gz'
        with gzip.open(out, 'wt', encoding='utf-8', compresslevel=9) as f:
            json.dump(fx, f, ensure_ascii=False, separators=(',', ':'))
        print(f'{name}: {len(strings)} strings -> {out} ({out.stat().st_size} bytes)')


if __name__ == '__main__':
    main()
