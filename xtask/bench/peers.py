#!/usr/bin/env python3
"""The peers of `cargo xtask bench engine`: llama.cpp (through llama-cpp-python) and Hugging Face
transformers, measured by the same protocol as the project's own engine, and llama.cpp's own
converter and quantizer, which make the peer GGUFs.

Run by the xtask, one command per child process, in the virtualenv it makes under
`target/bench/venv`; never by CI or a test. Each `measure` prints one JSON line on stdout (what
it measured, raw per repetition: the xtask takes the medians) and nothing else there; progress
and errors go to stderr.

    peers.py measure llama.cpp MODEL.gguf [--device cuda] --threads 2 --reps 5 --ids 17,4,…
    peers.py measure transformers MODEL_DIR --dtype bf16 [--device cuda] --threads 2 --reps 5 --ids 17,4,…
    peers.py converter DEST            # llama.cpp's tree from the llama-cpp-python sdist
    peers.py convert TREE MODEL_DIR f32|f16|q8_0 OUT.gguf
    peers.py quantize IN.gguf OUT.gguf q4_k_m THREADS

The protocol (shared/reference/candle-cpu-speed.md): load (timed), 1 warm-up, then `--reps`
repetitions of prefill = one forward of the prompt ids from an empty cache, argmax of the last
logits; decode = `--tokens` single-token forwards over the cache, greedy argmax each step. The
greedy ids (the prefill's, then one per decode step) of the last repetition are printed too, and
the five likeliest ids of the warm-up's prefill with their logits (`first_top`).
"""

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path


def peak_rss_bytes():
    """This process's peak resident set (VmHWM), as the xtask reads it for its own children."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def argmax(values):
    import numpy as np

    return int(np.argmax(values))


def top(values, k):
    """The `k` likeliest ids of a logits row, best first, each with its logit: `[[id, logit], …]`."""
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    best = np.argsort(-values, kind="stable")[:k]
    return [[int(i), float(values[i])] for i in best]


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level `eval`: no sampler, no prompt cache."""

    def __init__(self, path, threads, context, device):
        import llama_cpp

        if device == "cuda" and not llama_cpp.llama_supports_gpu_offload():
            sys.exit("llama-cpp-python here was built without GPU offload: no CUDA figures to give")
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        self.llm = llama_cpp.Llama(
            n_gpu_layers=-1 if device == "cuda" else 0,
            model_path=str(path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=context,
            n_batch=context,
            logits_all=False,
            verbose=False,
        )
        self.llama_cpp = llama_cpp
        self.n_vocab = self.llm.n_vocab()

    def _logits(self):
        # Without logits_all, eval keeps no scores: the last position's logits, from the context.
        import numpy as np

        row = self.llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def _next(self):
        return argmax(self._logits())

    def top(self, k):
        return top(self._logits(), k)

    def prefill(self, ids):
        # reset() rewinds the token count; eval removes every cached position from there on.
        self.llm.reset()
        self.llm.eval(ids)
        return self._next()

    def step(self, token):
        self.llm.eval([token])
        return self._next()


class Transformers:
    """A transformers causal LM with its own KV cache (`past_key_values`), in inference mode."""

    def __init__(self, path, threads, dtype, device):
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.torch = torch
        self.version = f"transformers {transformers.__version__}, torch {torch.__version__}"
        torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        except TypeError:
            # transformers 4.x spells it `torch_dtype`.
            model = transformers.AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch_dtype)
        self.device = device
        self.model = model.to(device).eval()
        self.past = None

    def _forward(self, ids, past):
        with self.torch.inference_mode():
            # Only the last position's logits, as generate() asks and the other engines compute.
            out = self.model(
                input_ids=self.torch.tensor([ids], device=self.device), past_key_values=past, use_cache=True, logits_to_keep=1
            )
        self.past = out.past_key_values
        self.last = out.logits[0, -1]
        return int(self.torch.argmax(self.last))

    def top(self, k):
        return top(self.last.float().cpu().numpy(), k)

    def prefill(self, ids):
        return self._forward(ids, None)

    def step(self, token):
        return self._forward([token], self.past)


def measure(args):
    ids = [int(i) for i in args.ids.split(",")]
    started = time.perf_counter()
    if args.engine == "llama.cpp":
        engine = LlamaCpp(args.model, args.threads, len(ids) + args.tokens + 8, args.device)
    else:
        engine = Transformers(args.model, args.threads, args.dtype, args.device)
    load = time.perf_counter() - started
    prefill, decode, greedy, first_top = [], [], [], []
    for rep in range(args.reps + 1):
        started = time.perf_counter()
        token = engine.prefill(ids)
        after_prefill = time.perf_counter()
        if rep == 0:  # the warm-up's prefill logits, outside every timed repetition
            first_top = engine.top(5)
        greedy = [token]
        for _ in range(args.tokens):
            token = engine.step(token)
            greedy.append(token)
        done = time.perf_counter()
        if rep > 0:  # repetition 0 is the warm-up
            prefill.append(after_prefill - started)
            decode.append(done - after_prefill)
        print(f"  {args.engine} rep {rep}/{args.reps}: prefill {after_prefill - started:.3f} s, "
              f"decode {done - after_prefill:.3f} s", file=sys.stderr)
    print(json.dumps({
        "version": engine.version,
        "load_s": load,
        "prefill_s": prefill,
        "decode_s": decode,
        "greedy": greedy,
        "first_top": first_top,
        "peak_rss_bytes": peak_rss_bytes(),
    }), flush=True)


def converter(args):
    """llama.cpp's tree (`vendor/llama.cpp`) from the sdist of the installed llama-cpp-python:
    the wheel carries no converter, the sdist carries the whole tree it was built from."""
    import llama_cpp

    dest = Path(args.dest)
    version = llama_cpp.__version__
    tree = dest / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={version}", "-d", str(dest)], check=True, stdout=sys.stderr)
        sdist = next(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
        with tarfile.open(sdist) as t:
            t.extractall(dest, filter="data")
    if not (tree / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"failed to find convert_hf_to_gguf.py in {tree}")
    print(tree)


def convert(args):
    """llama.cpp's converter, run as its main() in this process. It knows a tokenizer's
    pre-tokenizer by a hash of how it encodes a check text, and cannot know the generated model's
    (a byte-level BPE trained on a small corpus): one whose pre-tokenizer is plain ByteLevel with
    its regex splits as GPT-2's does, and is told so; any other is left to the converter."""
    tree, model_dir = Path(args.tree), Path(args.model)
    sys.path.insert(0, str(tree))
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outtype", args.outtype, "--outfile", args.out]
    import convert_hf_to_gguf as c

    try:
        from conversion import base
        text_model = base.TextModel
    except ImportError:  # older trees keep every class in the script
        text_model = c.TextModel
    original = text_model.get_vocab_base_pre

    def pre(self, tokenizer):
        spec = json.loads((model_dir / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
        if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
            return "gpt-2"
        return original(self, tokenizer)

    text_model.get_vocab_base_pre = pre
    c.main()


def quantize(args):
    """llama.cpp's quantizer (`llama-quantize`) through the C API llama-cpp-python binds."""
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{args.type.upper()}", None)
    if ftype is None:
        raise SystemExit(f"llama_cpp has no LLAMA_FTYPE_MOSTLY_{args.type.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = args.threads
    rc = llama_cpp.llama_model_quantize(args.input.encode(), args.out.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("engine", choices=["llama.cpp", "transformers"])
    m.add_argument("model")
    m.add_argument("--threads", type=int, required=True)
    m.add_argument("--reps", type=int, required=True)
    m.add_argument("--ids", required=True)
    m.add_argument("--tokens", type=int, default=64)
    m.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    m.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the model runs (llama.cpp: every layer offloaded; argmax waits for the device)")
    t = sub.add_parser("converter")
    t.add_argument("dest")
    c = sub.add_parser("convert")
    c.add_argument("tree")
    c.add_argument("model")
    c.add_argument("outtype")
    c.add_argument("out")
    q = sub.add_parser("quantize")
    q.add_argument("input")
    q.add_argument("out")
    q.add_argument("type")
    q.add_argument("threads", type=int)
    args = parser.parse_args()
    {"measure": measure, "converter": converter, "convert": convert, "quantize": quantize}[args.command](args)


if __name__ == "__main__":
    main()
