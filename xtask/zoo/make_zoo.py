#!/usr/bin/env python3
"""The architecture zoo: one tiny random-weight model per registry `model_type`, written by
transformers' own classes, with transformers' own reference outputs.

Run by a developer, never by CI or a test (the zoo it writes is committed):

    python3 -m venv /tmp/zoo-venv
    /tmp/zoo-venv/bin/pip install -r xtask/zoo/requirements.txt
    /tmp/zoo-venv/bin/python xtask/zoo/make_zoo.py            # every model_type
    /tmp/zoo-venv/bin/python xtask/zoo/make_zoo.py qwen2 phi3 # only these
    cargo xtask fixtures --check                              # the manifest it rewrote

With `--converter DIR` (DIR: llama.cpp's tree, `vendor/llama.cpp` of the llama-cpp-python source
distribution on PyPI) it also writes, beside each model, the GGUFs llama.cpp's own converter
makes of it, `converter-f32.gguf` and `converter-q8_0.gguf`:

    /tmp/zoo-venv/bin/pip install gguf sentencepiece protobuf
    (cd /tmp && pip download --no-binary :all: --no-deps llama-cpp-python)  # or fetch the sdist
    tar xzf /tmp/llama_cpp_python-*.tar.gz -C /tmp                           # from PyPI by hand
    /tmp/zoo-venv/bin/python xtask/zoo/make_zoo.py --converter \
        /tmp/llama_cpp_python-0.3.36/vendor/llama.cpp --gguf-only              # the GGUFs alone

`--gguf-only` leaves the models and references as committed and only (re)writes the converter's
GGUFs. The converter knows the zoo's tokenizer by a hash of how it encodes a check text; the
zoo's tokenizer is qa-tiny's (qwen2's pre-tokenizer regex over a 512-token vocabulary), whose
hash it cannot know, so the driver tells it `qwen2` for a tokenizer with exactly that regex and
refuses any other. An architecture the converter refuses is printed with its error and listed in
`fixtures/zoo/CONVERTER.json` (tests/zoo.rs holds the same list).

For each model_type it writes `fixtures/zoo/<model_type>/`: config.json and model.safetensors
exactly as `save_pretrained` writes them (transformers 5.x: `rope_parameters`, null sliding
windows, ...), the shared tokenizer of qa-tiny (vocab 512), and `reference.json`: for each
prompt, its token ids, the top-5 logits at every prompt position (full-sequence forward, f32) and
the greedy continuation (`GREEDY_TOKENS` ids, no end-of-sequence stop).

Weights are drawn wide (std well above transformers' init) and, per model, the seed is advanced
until every scored position (every prompt position and every greedy step) has a top-1/top-2
logit margin of at least `MIN_MARGIN`, so that no engine within 1e-4 of transformers can
decode differently because of a near-tie. Then `fixtures/zoo/MANIFEST.sha256` is rewritten
over the whole zoo.
"""

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import safetensors
import torch
import transformers

transformers.utils.logging.disable_progress_bar()
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "fixtures" / "zoo"
TOKENIZER_DIR = ROOT / "fixtures" / "qa-tiny" / "qa-tiny-llama"

PROMPTS = [
    "The quick brown fox",
    "12+7=",
    "def add(a, b):\n    return",
    "Once upon a time, in a land far away, there lived",
]
GREEDY_TOKENS = 12
TOP_K = 5
MIN_MARGIN = 0.02
# The test holds an f32 engine to 1e-4 of the f64 reference; a draw is kept only where
# transformers' own f32 forward stays within this of it, so f32 rounding alone cannot fail it.
F32_BUDGET = 4e-5
MAX_SEEDS = 400
# Special tokens of the shared tokenizer (<|endoftext|>, <|im_start|>, <|im_end|>): a greedy
# continuation holding one would end generation early or read as a leaked special token.
SPECIAL_IDS = {0, 1, 2}
# With tied embeddings the last token's own embedding dominates a random model's final state, so
# its logits name that token again and greedy decoding repeats it: the layers' matrices are drawn
# this much wider for such models, and every greedy continuation must hold MIN_DISTINCT tokens.
TIED_GAIN = 3.0
MIN_DISTINCT = 4
# Gemma 2 and 3 normalise each block's output (post-norms), so no gain reaches the residual and
# their random models repeat the last token whatever the draw: their greedy continuations may,
# and the logits at every prompt position carry their check.
REPEATS_ALLOWED = {"gemma2", "gemma3_text"}
# The zoo's tokenizer is a byte-level BPE (tokenizer.json only). Where llama.cpp's converter
# picks the vocabulary's kind by `tokenizer_class` (phi3: GPT2Tokenizer for a BPE, else a
# SentencePiece tokenizer.model it needs) or builds the model type's own tokenizer through
# AutoTokenizer without one (gemma3_text: GemmaTokenizer, which adds pieces past the 512 ids),
# tokenizer_config.json names the class the file really is, as a BPE model's repository
# (Phi-4's, a phi3) ships it. No id, weight or reference changes.
TOKENIZER_CLASS = {"phi3": "GPT2Tokenizer", "gemma3_text": "GPT2Tokenizer"}
# Gemma's and Gemma 2's converters read a SentencePiece `tokenizer.model` and nothing else. The
# zoo gives them one that lists the BPE's 512 tokens as its pieces under the same ids (the three
# special tokens as control pieces; SentencePiece needs one unknown piece, so the token
# UNKNOWN_ID, which no reference of theirs holds, is it): the converter's file then has the
# model's vocabulary and ids, but it tokenizes text as SentencePiece does, not as tokenizer.json
# does, so tests feed such a file the reference's ids (transformers and the engine read
# tokenizer.json; nothing else reads tokenizer.model).
SENTENCEPIECE = {"gemma", "gemma2"}
UNKNOWN_ID = 4

# Shapes shared by every architecture: tiny, and 4 query heads over 2 KV heads where it can.
COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)

# Per model_type: what differs from COMMON (names as each config class spells them). Everything
# not named keeps the config class's default, as a published config would.
ARCHITECTURES = {
    "llama": dict(rope_theta=500000.0),
    "mistral": dict(rope_theta=1000000.0),
    "qwen2": dict(rope_theta=1000000.0),
    "qwen3": dict(head_dim=16, rope_theta=1000000.0),
    "qwen3_moe": dict(
        head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, rope_theta=1000000.0
    ),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16),
    "phi3": dict(),
    "starcoder2": dict(),
    "stablelm": dict(),
    # One KV head, as `multi_query` means for the old decoder architecture (transformers reads
    # no other value there; llama.cpp's converter reads this one): Falcon-7B's config states none.
    "falcon": dict(num_kv_heads=1),
    "granite": dict(),
    "olmo2": dict(),
    "deepseek_v2": dict(
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        num_key_value_heads=4,
    ),
    "gpt_bigcode": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=128),
}


def config_for(model_type):
    """The config class of `model_type` over COMMON and its overrides; keys the class does not
    know (gpt_bigcode's n_embd against hidden_size) are dropped, so each spells its own."""
    overrides = dict(COMMON)
    overrides.update(ARCHITECTURES[model_type])
    if model_type == "gpt_bigcode":
        for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings"]:
            overrides.pop(k)
    if model_type == "falcon":
        overrides.pop("intermediate_size")
        overrides.pop("num_key_value_heads")
    rope_theta = overrides.pop("rope_theta", None)
    config = AutoConfig.for_model(model_type, **overrides)
    if rope_theta is not None:
        # transformers 5 keeps the rope base in `rope_parameters`; set it there as a user would.
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict) and "rope_theta" in params:
            params["rope_theta"] = rope_theta
        else:
            config.rope_theta = rope_theta
    return config


def redraw(model, generator, gain):
    """Every parameter drawn wide: matrices ~ N(0, gain² · 2/fan_in) (embeddings N(0, 1)), the
    output projection wider still, norm weights around their init, biases ~ N(0, 0.2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim == 1:
                scale = 0.2
                p.copy_(p.float() + noise * scale if "norm" in name or "ln" in name else noise * scale)
            elif "embed" in name or name.endswith("wte.weight") or name.endswith("wpe.weight") \
                    or "word_embeddings" in name:
                p.copy_(noise)
            elif "lm_head" in name:
                p.copy_(noise * (10.0 / math.sqrt(p.shape[-1])))
            else:
                fan_in = p.shape[-1]
                p.copy_(noise * (gain * math.sqrt(2.0 / fan_in)))


def forward_logits(model, ids):
    """The logits of a full-sequence forward pass, computed in f64 from the f32 weights: the
    reference is the exact value of the f32 model, so an engine's f32 rounding is its own."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].double()


def f32_error(model, prompts):
    """The largest difference between transformers' f32 forward and the f64 reference."""
    worst = 0.0
    for p in prompts:
        logits = forward_logits(model, p["ids"])
        for row, pos in zip(logits, p["positions"]):
            for i, v in zip(pos["ids"], pos["logits"]):
                worst = max(worst, abs(float(row[i]) - v))
    return worst


def margin(row):
    top = torch.topk(row, 2).values
    return float(top[0] - top[1])


def reference(model, tokenizer, texts=PROMPTS):
    """Every prompt's ids, top-k logits at each position and greedy continuation; and the
    smallest top-1/top-2 margin over all of them, with whether a special token was generated."""
    prompts, worst, special = [], math.inf, False
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        logits = forward_logits(model, ids)
        positions = []
        for row in logits:
            values, indices = torch.topk(row, TOP_K)
            positions.append({"ids": indices.tolist(), "logits": values.tolist()})
            worst = min(worst, margin(row))
        seq = list(ids)
        greedy = []
        for _ in range(GREEDY_TOKENS):
            row = forward_logits(model, seq)[-1]
            worst = min(worst, margin(row))
            nxt = int(torch.argmax(row))
            special |= nxt in SPECIAL_IDS
            greedy.append(nxt)
            seq.append(nxt)
        prompts.append({"text": text, "ids": ids, "positions": positions, "greedy": greedy})
    return prompts, worst, special


def write_tokenizer_class(model_type):
    """`tokenizer_class` in the model's tokenizer_config.json where TOKENIZER_CLASS names one."""
    if model_type not in TOKENIZER_CLASS:
        return
    path = ZOO / model_type / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = TOKENIZER_CLASS[model_type]
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_sentencepiece(model_type):
    """tokenizer.model for a model_type in SENTENCEPIECE (see there)."""
    if model_type not in SENTENCEPIECE:
        return
    from sentencepiece import sentencepiece_model_pb2 as spm

    out = ZOO / model_type
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    vocab = dict(tokenizer["model"]["vocab"])
    for added in tokenizer["added_tokens"]:
        vocab[added["content"]] = added["id"]
    by_id = sorted((i, t) for t, i in vocab.items())
    assert [i for i, _ in by_id] == list(range(len(by_id))), "ids 0..n, each once"
    special = {a["id"] for a in tokenizer["added_tokens"] if a.get("special")}
    assert UNKNOWN_ID not in special
    model = spm.ModelProto()
    model.trainer_spec.model_type = spm.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(by_id)
    model.trainer_spec.unk_id = UNKNOWN_ID
    model.trainer_spec.bos_id = -1
    model.trainer_spec.eos_id = -1
    model.trainer_spec.pad_id = -1
    model.trainer_spec.byte_fallback = False
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    for i, text in by_id:
        piece = model.pieces.add()
        piece.piece = text
        # Later (merged) tokens score lower, as BPE ranks its merges.
        piece.score = -float(i)
        if i == UNKNOWN_ID:
            piece.type = spm.ModelProto.SentencePiece.UNKNOWN
        elif i in special:
            piece.type = spm.ModelProto.SentencePiece.CONTROL
    (out / "tokenizer.model").write_bytes(model.SerializeToString())


def write_model(model_type, tokenizer):
    write_reference_model(config_for(model_type), ZOO / model_type, model_type, tokenizer,
                          repeats_allowed=model_type in REPEATS_ALLOWED)
    write_tokenizer_class(model_type)
    write_sentencepiece(model_type)


def write_reference_model(config, out, name, tokenizer, repeats_allowed=False, texts=PROMPTS, record=None,
                          gain=None, max_seeds=MAX_SEEDS):
    """`config`'s model drawn (the first seed whose margins, greedy continuations and f32
    rounding pass, see the header; the layers' matrices `gain` times wider, by default
    TIED_GAIN for a tied model), saved to `out` with the shared tokenizer and its
    `reference.json` (`record` adds fields to it); `name` labels the printed line."""
    if gain is None:
        gain = TIED_GAIN if config.tie_word_embeddings else 1.0
    model_type = config.model_type
    for seed in range(max_seeds):
        torch.manual_seed(seed)
        # The eager paths: grouped matmuls and fused kernels do not take f64.
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
        )
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        # Tied weights share storage: redraw draws the embedding, which is then the head too.
        redraw(model, generator, gain)
        prompts, worst, special = reference(model.double(), tokenizer, texts)
        model.float()
        rounding = f32_error(model, prompts)
        varied = repeats_allowed or all(len(set(p["greedy"])) >= MIN_DISTINCT for p in prompts)
        if worst >= MIN_MARGIN and not special and varied and rounding <= F32_BUDGET:
            break
    else:
        raise SystemExit(f"{name}: no seed below {max_seeds} gives margins >= {MIN_MARGIN} "
                         f"within the f32 budget {F32_BUDGET}")
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER_DIR / f, out / f)
    (out / "reference.json").write_text(json.dumps({
        "model_type": model_type,
        **(record or {}),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "min_margin_required": MIN_MARGIN,
        "f32_error": rounding,
        "min_margin": worst,
        "top_k": TOP_K,
        "prompts": prompts,
    }, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name:12} seed {seed:3}  min margin {worst:7.3f}  f32 error {rounding:.1e}  "
          f"{size / 1024:7.1f} KiB")


# Run in a child Python per conversion: the converter is a script, not a library; the driver
# only tells it the zoo tokenizer's pre-tokenizer (see the header) and then runs its main().
CONVERTER_DRIVER = r"""
import sys, json
from pathlib import Path
tree, model_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(tree))
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[3:]
import convert_hf_to_gguf as c
from conversion import base
QWEN2 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
         "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
original = base.TextModel.get_vocab_base_pre
def zoo_pre(self, tokenizer):
    pre = json.loads((model_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    regex = pre["pretokenizers"][0]["pattern"]["Regex"]
    if regex != QWEN2:
        return original(self, tokenizer)
    return "qwen2"
base.TextModel.get_vocab_base_pre = zoo_pre
c.main()
"""

CONVERTER_TYPES = ["f32", "q8_0"]


def write_converter_ggufs(model_type, tree):
    """The converter's GGUFs of one zoo model, or its refusal (the last line of its error)."""
    out = ZOO / model_type
    for outtype in CONVERTER_TYPES:
        target = out / f"converter-{outtype}.gguf"
        target.unlink(missing_ok=True)
        run = subprocess.run(
            [sys.executable, "-c", CONVERTER_DRIVER, str(tree), str(out), str(out),
             "--outtype", outtype, "--outfile", str(target)],
            capture_output=True, text=True)
        if run.returncode != 0:
            target.unlink(missing_ok=True)
            lines = [l for l in (run.stderr + run.stdout).strip().splitlines() if l.strip()]
            # Paths relative to the repository: the record is committed.
            why = (lines[-1] if lines else f"exit {run.returncode}").replace(f"{ROOT}/", "")
            print(f"{model_type:12} converter refuses: {why}")
            return why
        print(f"{model_type:12} converter-{outtype}.gguf {target.stat().st_size / 1024:7.1f} KiB")
    return None


def write_manifest(root=ZOO):
    lines = []
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.sha256"):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        lines.append(f"{digest}  {f.relative_to(root).as_posix()}\n")
    (root / "MANIFEST.sha256").write_text("".join(lines))


def main():
    args = sys.argv[1:]
    tree = None
    if "--converter" in args:
        i = args.index("--converter")
        tree = Path(args[i + 1]).resolve()
        del args[i:i + 2]
    gguf_only = "--gguf-only" in args
    args = [a for a in args if a != "--gguf-only"]
    if gguf_only and tree is None:
        raise SystemExit("--gguf-only needs --converter DIR")
    wanted = args or list(ARCHITECTURES)
    unknown = [m for m in wanted if m not in ARCHITECTURES]
    if unknown:
        raise SystemExit(f"unknown model_type {unknown}; known: {list(ARCHITECTURES)}")
    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"))
    ZOO.mkdir(parents=True, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"safetensors {safetensors.__version__}")
    for model_type in wanted:
        if not gguf_only:
            write_model(model_type, tokenizer)
    if tree is not None:
        refusals_path = ZOO / "CONVERTER.json"
        record = json.loads(refusals_path.read_text()) if refusals_path.exists() else {"refused": {}}
        record["converter"] = tree.parents[1].name if tree.parent.name == "vendor" else str(tree.name)
        for model_type in wanted:
            if gguf_only:
                # Neither is part of the model or its reference (see TOKENIZER_CLASS, SENTENCEPIECE).
                write_tokenizer_class(model_type)
                write_sentencepiece(model_type)
            why = write_converter_ggufs(model_type, tree)
            if why is None:
                record["refused"].pop(model_type, None)
            else:
                record["refused"][model_type] = why
        record["refused"] = dict(sorted(record["refused"].items()))
        refusals_path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"converter refuses {len(record['refused'])}: {', '.join(record['refused']) or 'none'}")
    write_manifest()


if __name__ == "__main__":
    main()
