#!/usr/bin/env python3
"""The strings tokenizers are compared on: `strings(seed)`, deterministic for a seed (Python's
`random.Random`, whose integer-seeded `randrange`/`choice` sequence is stable across versions).

Each family covers what pre-tokenizers and byte-level BPE part on: words of many scripts,
emoji (ZWJ sequences, skin tones, flags, keycaps, variation selectors), digit runs of every
length and numbers with separators, contractions in every case, whitespace runs of every kind,
punctuation runs, code, URLs, the tokenizers' own special-token spellings inside text, characters
a small vocabulary holds only as bytes (rare, private-use and unassigned code points, combining
marks, control characters), very long words, and random mixtures of all of these.

Imported by `tokenization_reference.py`; run alone it prints the count and a few samples.
"""

import random
import sys

SEED = 1000

WORDS = {
    "latin": ["hello", "World", "naïve", "café", "Straße", "façade", "jalapeño", "Ærøskøbing", "Łódź",
              "İstanbul", "ﬁnal", "coöperate", "résumé", "Ångström", "señor", "ÉCOLE", "smörgåsbord",
              "Dvořák", "Việt", "Nguyễn", "ĳssel"],
    "cyrillic": ["привет", "мир", "Български", "ЁЖИК", "съешь", "щётка", "Україна", "ђак", "Қазақ"],
    "greek": ["Ελληνικά", "καλημέρα", "ΑΘΗΝΑ", "ψυχή", "ὀδύσσεια", "ς", "ΣΊΣΥΦΟΣ"],
    "arabic": ["العربية", "مرحبا", "بِسْمِ", "كتاب", "٣٤٥", "فارسی", "اردو"],
    "hebrew": ["שלום", "עִבְרִית", "ירושלים"],
    "cjk": ["我想在", "工作", "天气很好", "中華人民共和國", "漢字", "𠀀𠀁", "鿿", "㐀"],
    "kana": ["こんにちは", "カタカナ", "ひらがな", "ｶﾀｶﾅ", "ー", "東京タワー"],
    "hangul": ["안녕하세요", "한국어", "ㄱㄴㄷ", "갃", "힣"],
    "devanagari": ["नमस्ते", "हिन्दी", "क्षत्रिय", "संस्कृतम्", "०१२३"],
    "thai": ["สวัสดี", "ภาษาไทย", "กรุงเทพมหานคร", "๑๒๓"],
    "other": ["ქართული", "Հայերեն", "ᏣᎳᎩ", "ትግርኛ", "தமிழ்", "ಕನ್ನಡ", "བོད་ཡིག", "ဗမာ", "ខ្មែរ", "ᠮᠣᠩᠭᠣᠯ"],
}

EMOJI = ["🚀", "✅", "🦙", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "1️⃣", "#️⃣", "❤️", "❤", "☺️",
         "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "🫠", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "✌🏻", "🔥🔥🔥", "⚡️", "🐈‍⬛"]

CONTRACTIONS = ["s", "t", "re", "ve", "m", "ll", "d"]

SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", "\r\n\r\n", " \n", "\n ", "\u00a0",
          "\u3000", "\u2009", "\u2002", "\u200b", "\x0b", "\x0c", "\u2028", "\u2029", "\u0085", "\u1680",
          " \t \n", "\u00a0\u00a0", "\u202f", "\ufeff"]

PUNCT = ["!", "?", ".", ",", ";", ":", "-", "—", "–", "…", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\",
         "|", "@", "#", "$", "%", "^", "&", "*", "_", "=", "+", "~", "`", "'", '"', "«", "»", "“", "”", "‘",
         "’", "¿", "¡", "·", "•", "§", "¶", "†", "‡", "‰", "′", "″", "、", "。", "「", "」", "！", "？",
         "：", "，", "€", "£", "¥", "©", "®", "™", "°", "±", "×", "÷", "→", "⇒", "∀", "∑", "√", "∞"]

CODE = [
    "fn main() {\n    println!(\"{}\", 42);\n}\n",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if x != None and y >= 3:\n\tpass",
    "const f = (x) => x ** 2; // square",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "<div class=\"a\">&nbsp;&lt;b&gt;</div>",
    "{\"key\": [1, 2.5, true, null], \"k2\": {\"x\": \"y\"}}",
    "$ ls -la | grep '^d' > out.txt 2>&1",
    "x <<= 2; y >>>= 1; z &&= w || !v;",
    "    indented\n        more\n\t\ttabbed",
    "let s = r#\"raw \"string\"\"#;",
    "@decorator\nclass Foo(Bar):\n    __slots__ = ('a',)",
    "a_very_long_snake_case_identifier_name = CamelCaseIdentifierName()",
    "0x1F 0b1010 0o777 1e-9 6.02E+23 1_000_000u64",
    "/* comment */ // line\n# hash\n-- sql",
    "```python\nprint('hi')\n```",
]

URLS = [
    "https://example.com/path/to/page?query=1&other=two#frag",
    "http://user:pass@host.example.org:8080/a%20b",
    "ftp://files.example.net/pub/file.tar.gz",
    "mailto:someone@example.com",
    "www.example.co.uk/index.html",
    "https://ja.wikipedia.org/wiki/東京",
    "https://xn--bcher-kva.example/straße?q=ü",
    "git@github.com:owner/repo.git",
    "file:///C:/Users/Name/Documents/report.pdf",
]

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_start|>user\nhi<|im_end|>", "<|endoftext|",
           "<|im_", "|>", "<|", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<s>", "</s>", "<unk>",
           "<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]"]

# Characters a 512-token byte-level vocabulary holds only as bytes or not at all.
RARE = ["\ue000", "\uf8ff", "\U000f0000", "\U0010fffd", "\u0378", "\u0530", "\U0002fffe", "\U000e0080",
        "\U0001fbff", "\ufdd0", "\uffff", "\U0001d400", "\U0001f9ff", "\u2fff", "\U00013000", "\U0001e900",
        "\U00016fe4", "\u0e3a", "\u10fe"]
COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0303", "\u20dd", "\u0489", "\u036f", "\u1dff", "\ufe0f",
             "\u200d", "\u200c", "\u034f"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\u00ad", "\u200e", "\u202e",
           "\u2066"]


def all_words():
    return [w for ws in WORDS.values() for w in ws]


def cases(word):
    """Every upper/lower-case spelling of `word`."""
    out = [""]
    for c in word:
        out = [p + x for p in out for x in sorted({c.lower(), c.upper()})]
    return out


def fixed():
    """The enumerated strings: each family's cases one by one."""
    out = []
    for script, words in WORDS.items():
        out += words
        out.append(" ".join(words))
        out.append("".join(words))
    for e in EMOJI:
        out += [e, f"a{e}b", f" {e} ", e * 3]
    out.append("".join(EMOJI))
    for n in range(1, 41):
        digits = "".join(str((i * 7 + n) % 10) for i in range(n))
        out += [digits, f" {digits}", f"x{digits}y", f"{digits}.{digits[::-1]}"]
    out += ["1,234", "12,345,678.90", "1.234.567,89", "1 234 567", "1\u00a0234\u202f567", "1'000'000", "1_000_000",
            "-0.5", "+3.14159", "3e10", "2.5E-3", "10%", "$1,000.00", "€12,50", "١٢٣٤٥", "۱۲۳", "１２３４", "²³¹",
            "½¾", "Ⅻ", "3..3", "3...", ".5", "0.000001", "192.168.0.1", "2024-01-31T12:34:56Z", "12:30", "+1 (555) 123-4567",
            "v1.2.3-rc.4", "1/2/2025", "3×4=12", "9-5", "007", "0"]
    for c in CONTRACTIONS:
        for spelled in cases(c):
            out += [f"it'{spelled}", f"'{spelled}", f"I'{spelled} here", f" '{spelled}", f"x'{spelled}'{spelled}",
                    f"1'{spelled}", f"'{spelled}a"]
    out += ["I've been told he's there, 'RE you sure? 'M not sure I'll make it", "We'Ve a'lL", "don't", "DON'T",
            "rock 'n' roll", "'''", "''s", "it’s", "y'all'd've", "O'Neill's", "'tis"]
    for s in SPACES:
        out += [s, f"a{s}b", f"{s}lead", f"trail{s}", f"{s}{s}{s}x", f"x{s}{s}", f"1{s}2", f"!{s}?", f"你{s}好"]
    out += ["  leading and trailing   ", "tabs\tand\t\tnewlines\n\n\nand \r\n crlf", " ", "\n", "   \n   \n",
            "a\n\n\n\n\n\n\n\nb", " " * 40, "\t" * 9 + "x", "x \n y \r\n z \t\n w"]
    for p in PUNCT:
        out += [p, p * 2, p * 7, f"a{p}b", f" {p}{p} ", f"{p}\n", f"{p}word"]
    out += ["------======= !!!!!!?????? ......", "...!?!?...", "-->", "<!--", "=>", "::", "||", "&&", "~~~", "..\n\n"]
    for c in CODE:
        out += [c, c.replace("    ", "\t")]
    for u in URLS:
        out += [u, f"See {u}.", f"<{u}>"]
    for s in SPECIAL:
        out += [s, f"a{s}b", f" {s} ", f"{s}{s}", f"text {s}\nmore"]
    for r in RARE + CONTROL:
        out += [r, f"a{r}b", f" {r}", r * 3]
    for m in COMBINING:
        out += [f"e{m}", f"a{m}{m}{m}", f" {m}", f"{m}", f"ñ{m}x", f"क{m}"]
    out.append("Z" + "".join(COMBINING * 3) + "algo")
    for n in [50, 100, 257, 600, 1500]:
        out += ["a" * n, "ab" * (n // 2), "Pneumonoultramicroscopicsilicovolcanoconiosis" * (n // 45 + 1),
                "я" * n, "中" * n, "😀" * (n // 4 + 1), "9" * n]
    out += ["Hello world", "CamelCaseWords and snake_case_words and SHOUTING", "我想在apple工作1314151天～ こんにちは世界",
            "нещо на Български, Ελληνικά, العربية", "🚀 (normal) ✅ 🦙🦙"]
    return out


def fragment(rng):
    """One random piece of a mixture."""
    family = rng.randrange(12)
    if family == 0:
        return rng.choice(all_words())
    if family == 1:
        return rng.choice(EMOJI)
    if family == 2:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 25)))
    if family == 3:
        return "'" + rng.choice(cases(rng.choice(CONTRACTIONS)))
    if family == 4:
        return rng.choice(SPACES) * rng.randrange(1, 4)
    if family == 5:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randrange(1, 6)))
    if family == 6:
        code = rng.choice(CODE)
        start = rng.randrange(len(code))
        return code[start:start + rng.randrange(1, 30)]
    if family == 7:
        return rng.choice(URLS)
    if family == 8:
        return rng.choice(SPECIAL)
    if family == 9:
        return rng.choice(RARE + CONTROL + COMBINING)
    if family == 10:
        return "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(1, 4))).encode(
            "utf-8", "replace").decode("utf-8", "replace")
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randrange(1, 40)))


def strings(seed=SEED, mixtures=600):
    """`fixed()` then `mixtures` random mixtures of its families, without repeats, in a fixed order."""
    out, seen = [], set()
    for s in fixed():
        if s not in seen:
            seen.add(s)
            out.append(s)
    rng = random.Random(seed)
    count = len(out) + mixtures
    while len(out) < count:
        s = "".join(fragment(rng) for _ in range(rng.randrange(1, 12)))
        s = "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF)
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


if __name__ == "__main__":
    generated = strings(int(sys.argv[1]) if len(sys.argv) > 1 else SEED)
    print(len(generated), "strings;", sum(map(len, generated)), "characters")
    for s in generated[:: len(generated) // 10]:
        print(repr(s))
