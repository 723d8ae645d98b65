#!/usr/bin/env python3
"""llama.cpp's own tokenization as reference data: the tokens llama.cpp gives each string of
`tokenizer_strings.strings()` (2,336 strings from a fixed seed) from every zoo converter file it
loads, recorded in `fixtures/zoo/TOKENIZATION.json`.

Run by a developer, never by CI or a test (the JSON it writes is committed; tests/zoo_llama_cpp.rs
holds the project's GGUF reader to it):

    # /tmp/llama-venv as in quantizer_reference.py
    TOKENIZER_INPUTS=DIR cargo test --test zoo_llama_cpp -- --ignored write_tokenizer_inputs
    /tmp/llama-venv/bin/python xtask/zoo/tokenization_reference.py DIR

For every `fixtures/zoo/<model_type>/converter-f32.gguf`, llama.cpp (`vocab_only`) tokenizes every
string twice: as text (`special=False`: a control token's spelling is text, as the engine's
`literal` ranges) and parsing control tokens (`special=True`, as the engine reads a prompt); the
second is recorded only where it differs from the first. It does the same from the project's
writer's file of the same model (`DIR/<model_type>.gguf`, written by the ignored test
`write_tokenizer_inputs`), and any string on which the two files part is an error naming the
model type and the strings. A file llama.cpp does not load is recorded under `refused` (none
now: phi3's two files, which llama.cpp refuses by their name, are tokenized with `general.name`
changed, `RENAMED`, recorded as `renamed`); a string on which llama.cpp aborts (gemma's and
gemma2's SentencePiece vocabulary has no byte tokens, so its byte fallback throws) is recorded as
null. Each string is tokenized in a child process that
is restarted after an abort, so one abort costs one string.

The model types with the same answers share one entry of `tokenizations` (the zoo's tokenizer is
one 512-token BPE for all but the SentencePiece copies of gemma and gemma2), which keeps the
file small; `architectures` maps each model type to its entry.

That 512-token vocabulary has no merge of digits, apostrophes or newlines, so on it many
pre-tokenizer splits give the same ids. `trained` therefore holds a byte-level BPE trained on the
strings themselves with no split (`trained_vocabulary`: its merges cross digit runs,
contractions, whitespace runs and scripts), and llama.cpp's tokens of every string from the
writer's llama file with that vocabulary in place of its own (embedded tokenizer.json removed)
under every `tokenizer.ggml.pre` name the project's reader accepts (quantizer_reference.py's
`PRE_NAMES`); names with the same answers share an entry. Its control tokens (`control`) are
the zoo's and the strings' special-token spellings, but for four (`LOOKS_CONTROL`) typed normal,
which llama.cpp makes control by their text.
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort prints no gdb backtrace (seconds each)

import llama_cpp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_strings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "fixtures" / "zoo"
OUT = ZOO / "TOKENIZATION.json"


def child(path: Path, texts: list[str], start: int, fd: int) -> None:
    """Loads `path` and writes one JSON line per text from `start`: [literal, parsed]."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    out = os.fdopen(fd, "w")
    try:
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except Exception as e:  # llama-cpp-python raises ValueError naming the file
        out.write(json.dumps({"refused": str(e).replace(str(path), path.name)}) + "\n")
        out.flush()
        os._exit(0)
    for text in texts[start:]:
        raw = text.encode("utf-8")
        literal = llm.tokenize(raw, add_bos=False, special=False)
        parsed = llm.tokenize(raw, add_bos=False, special=True)
        out.write(json.dumps([literal, parsed]) + "\n")
        out.flush()
    os._exit(0)


def tokenize(path: Path, texts: list[str]):
    """llama.cpp's [literal, parsed] per text (None where it aborts), or its refusal."""
    results: list = []
    while len(results) < len(texts):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            child(path, texts, len(results), write)
        os.close(write)
        with os.fdopen(read) as lines:
            for line in lines:
                answer = json.loads(line)
                if isinstance(answer, dict):
                    os.waitpid(pid, 0)
                    return answer["refused"]
                results.append(answer)
        _, status = os.waitpid(pid, 0)
        if len(results) < len(texts):
            if status == 0:
                raise SystemExit(f"{path}: llama.cpp stopped at string {len(results)} without aborting")
            results.append(None)  # aborted on this string
    return results


# Spellings of the strings llama.cpp makes control tokens by their text whatever their type
# (llama-vocab.cpp, "control-looking token"; the reader's `CONTROL_LOOKING` in
# harness/src/format/gguf/read.rs): typed normal in the trained vocabulary, so the reference holds
# llama.cpp's override (parsed with `special=True`).
LOOKS_CONTROL = ["<|end|>", "</s>", "<eos>", "<end_of_turn>"]
# The control tokens of the trained vocabulary: the zoo tokenizer's, at the same ids, then every
# other whole special-token spelling of the strings.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [
    t for t in tokenizer_strings.SPECIAL if t.count("<") + t.count("[") == 1 and t[-1] in ">]"
    and t not in ("<|endoftext|>", "<|im_start|>", "<|im_end|>") and t not in LOOKS_CONTROL]


def trained_vocabulary(texts: list[str]) -> tuple[list[str], list[str]]:
    """A byte-level BPE (tokens, merges) trained on `texts` themselves with no pre-tokenizer
    split, so its merges cross what every split separates (digit runs, contractions, whitespace
    runs, punctuation, scripts): under a split, the ids show where it cut. The zoo's 512-token
    vocabulary has no such merges (none of digits, apostrophes or newlines after newlines), so on
    it many splits give the same ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=2, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    tokens += [t for t in LOOKS_CONTROL if t not in tokens]  # normal tokens no merge reaches
    assert tokens[: len(SPECIAL)] == SPECIAL and len(set(tokens)) == len(tokens)
    return tokens, [" ".join(m) for m in model["merges"]]


def trained_reference(writer_dir: Path, texts: list[str], tmp: Path) -> dict:
    """llama.cpp's tokens of `texts` from the writer's llama file with its vocabulary replaced by
    `trained_vocabulary` and its embedded tokenizer.json removed, under every pre-tokenizer name
    the reader accepts; names whose answers are the same share an entry."""
    from quantizer_reference import PRE_NAMES, patch

    tokens, merges = trained_vocabulary(texts)
    types = [3 if t in SPECIAL else 1 for t in tokens]
    groups: list = []
    names: dict[str, int] = {}
    for name in PRE_NAMES:
        dst = tmp / f"trained-{name}.gguf"
        changes = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                   "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": name}
        patch(writer_dir / "llama.gguf", changes, dst, remove=("tokenizer.huggingface.json",))
        answers = tokenize(dst, texts)
        if isinstance(answers, str) or any(a is None for a in answers):
            raise SystemExit(f"llama.cpp refuses or aborts on the trained vocabulary under `{name}`")
        entry = {
            "literal": [a[0] for a in answers],
            "parsed": {str(i): a[1] for i, a in enumerate(answers) if a[1] != a[0]},
        }
        if entry not in groups:
            groups.append(entry)
        names[name] = groups.index(entry)
        print(f"trained vocabulary under {name}: entry {names[name]}", file=sys.stderr)
    return {"control": SPECIAL, "tokens": tokens, "merges": merges, "pre": names, "tokenizations": groups}


# Zoo files whose `general.name` llama.cpp's vocabulary load keys a quirk on, with the name they
# are tokenized under instead. phi3: for a name containing "phi3" or "phi-3" llama.cpp sets
# attributes of `</s>`, `<unk>` and `<s>` by text (`token_to_id.at`, llama-vocab.cpp), which throws
# on the zoo's vocabulary (it has none of them), so it loads neither file as named.
RENAMED = {"phi3": "zoo"}


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: tokenization_reference.py DIR (the writer's files, see the docstring)")
    writer_dir = Path(sys.argv[1])
    texts = tokenizer_strings.strings()
    refused: dict[str, str] = {}
    groups: list = []
    architectures: dict[str, int] = {}
    renamed_dir = tempfile.TemporaryDirectory()
    for converter in sorted(ZOO.glob("*/converter-f32.gguf")):
        model_type = converter.parent.name
        writer = writer_dir / f"{model_type}.gguf"
        if not writer.exists():
            raise SystemExit(f"{writer} is missing: run write_tokenizer_inputs (see the docstring)")
        if model_type in RENAMED:
            from quantizer_reference import patch

            for whose in ("converter", "writer"):
                src = converter if whose == "converter" else writer
                dst = Path(renamed_dir.name) / f"{whose}-{model_type}.gguf"
                patch(src, {"general.name": RENAMED[model_type]}, dst)
                converter, writer = (dst, writer) if whose == "converter" else (converter, dst)
        theirs = tokenize(converter, texts)
        ours = tokenize(writer, texts)
        if isinstance(theirs, str) or isinstance(ours, str):
            if isinstance(ours, str) != isinstance(theirs, str):
                raise SystemExit(f"{model_type}: llama.cpp loads one file and not the other: {theirs!r} / {ours!r}")
            refused[model_type] = theirs
            print(f"{model_type}: refused ({theirs})", file=sys.stderr)
            continue
        parted = [repr(t) for t, a, b in zip(texts, theirs, ours) if a != b]
        if parted:
            raise SystemExit(
                f"{model_type}: llama.cpp tokenizes {len(parted)} strings otherwise from the writer's file "
                f"than from the converter's: {', '.join(parted[:10])}"
            )
        entry = {
            "literal": [None if r is None else r[0] for r in theirs],
            "parsed": {str(i): r[1] for i, r in enumerate(theirs) if r is not None and r[1] != r[0]},
        }
        if entry not in groups:
            groups.append(entry)
        architectures[model_type] = groups.index(entry)
        aborted = sum(r is None for r in theirs)
        print(f"{model_type}: {len(texts) - aborted} strings tokenized alike from both files, "
              f"{aborted} aborted, {len(entry['parsed'])} parsed otherwise", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        trained = trained_reference(writer_dir, texts, Path(tmp))
    renamed_dir.cleanup()
    OUT.write_text(render(texts, refused, groups, architectures, trained), encoding="utf-8")
    write_manifest()


def write_manifest() -> None:
    """`fixtures/zoo/MANIFEST.sha256` with the new file, as make_zoo.py's `write_manifest` writes it
    (which this venv cannot import: make_zoo.py needs torch)."""
    lines = []
    for f in sorted(p for p in ZOO.rglob("*") if p.is_file() and p.name != "MANIFEST.sha256"):
        lines.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(ZOO).as_posix()}\n")
    (ZOO / "MANIFEST.sha256").write_text("".join(lines))


def render(texts, refused, groups, architectures, trained) -> str:
    """The JSON with one line per string and per token list, so a review reads a change as a line."""
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731

    def entries(groups: list, indent: str) -> list[str]:
        lines = []
        for g, entry in enumerate(groups):
            lines.append(f"{indent}{{")
            lines.append(f'{indent} "parsed": {dump(entry["parsed"])},')
            lines.append(f'{indent} "literal": [')
            literal = entry["literal"]
            lines += [f"{indent}  {dump(t)}" + ("," if i < len(literal) - 1 else "") for i, t in enumerate(literal)]
            lines += [f"{indent} ]", f"{indent}}}" + ("," if g < len(groups) - 1 else "")]
        return lines

    lines = ["{", f' "llama_cpp": {dump("llama-cpp-python " + llama_cpp.__version__)},',
             f' "generator": {dump(f"xtask/zoo/tokenizer_strings.py, seed {tokenizer_strings.SEED}")},',
             f' "refused": {dump(refused)},', f' "renamed": {dump(RENAMED)},', f' "architectures": {dump(architectures)},', ' "strings": [']
    lines += [f"  {dump(t)}" + ("," if i < len(texts) - 1 else "") for i, t in enumerate(texts)]
    lines += [" ],", ' "tokenizations": [']
    lines += entries(groups, "  ")
    lines += [" ],", ' "trained": {', f'  "control": {dump(trained["control"])},',
              f'  "tokens": {dump(trained["tokens"])},',
              f'  "merges": {dump(trained["merges"])},', f'  "pre": {dump(trained["pre"])},', '  "tokenizations": [']
    lines += entries(trained["tokenizations"], "   ")
    lines += ["  ]", " }", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
