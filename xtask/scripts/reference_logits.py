#!/usr/bin/env python3
"""Independent numeric reference for qa-tiny: Hugging Face transformers on PyTorch.

Computes, for every scenario prompt of golden/qa-tiny/<model>/*.logits.json (laid out as the run
modality sends it), the top-5 logits at the first 4 prompt positions, for each exported architecture, and writes
golden/qa-tiny/reference-transformers.json. A test compares candle's logits with this file.

Run by hand where pip can install torch (CI does not run it):

    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors "numpy<2"
    .venv/bin/python xtask/scripts/reference_logits.py
"""

import json
import pathlib
import sys

import safetensors.torch
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[2]
POSITIONS = 4
TOP_K = 5


def scenario_prompts(model):
    """The prompts of the committed candle references, exactly as the golden trials send them."""
    out = {}
    for path in sorted((ROOT / "golden/qa-tiny" / model).glob("*.logits.json")):
        out[path.name[: -len(".logits.json")]] = json.loads(path.read_text())["prompt"]
    return out


def main():
    torch.set_grad_enabled(False)
    result = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    for arch in ["llama", "qwen2", "mistral"]:
        directory = ROOT / "fixtures/qa-tiny" / f"qa-tiny-{arch}"
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
        # candle writes safetensors without the `format: pt` metadata from_pretrained insists on,
        # so build the model from its config and load the tensors strictly.
        config = transformers.AutoConfig.from_pretrained(directory)
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        missing, unexpected = model.load_state_dict(safetensors.torch.load_file(directory / "model.safetensors"), strict=False)
        # Buffers such as rotary inverse frequencies are computed, not stored.
        missing = [m for m in missing if "rotary_emb" not in m]
        if missing or unexpected:
            sys.exit(f"{arch}: missing {missing}, unexpected {unexpected}")
        model.eval()
        per_model = {}
        for name, prompt in sorted(scenario_prompts(f"qa-tiny-{arch}").items()):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][:POSITIONS]
            logits = model(torch.tensor([ids])).logits[0]
            rows = []
            for row in logits:
                values, indices = torch.topk(row, TOP_K)
                rows.append({"ids": indices.tolist(), "logits": [float(v) for v in values]})
            per_model[name] = {"prompt": prompt, "positions": rows}
        result["models"][f"qa-tiny-{arch}"] = per_model
        print(f"{arch}: {len(per_model)} scenarios", file=sys.stderr)
    out = ROOT / "golden/qa-tiny/reference-transformers.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
