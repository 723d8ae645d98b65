"""Records the `{arch}.*` keys and rope factor tensors llama.cpp's converter writes for the zoo
variants whose rope the GGUF writer carries (scaled, or an explicit head width), as
`harness/src/format/gguf/converter_keys.json`, which `write.rs`'s tests hold the writer to.

    PYTHONPATH=<llama.cpp>/gguf-py python xtask/zoo/converter_keys.py <llama.cpp tree>

with llama-cpp-python 0.3.36's vendored llama.cpp, run through `make_zoo.py`'s converter driver
(its zoo pre-tokenizer name). phi3's LongRoPE variants state no `tokenizer_class`, so they are
converted with the zoo phi3's tokenizer_config.json (their tokenizer.json is the zoo phi3's).
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["llama-linear", "qwen2-yarn", "deepseek-coder-v2-lite", "mistral-nemo", "llama-head-dim",
            "phi-3.5-mini", "phi-4-mini"]


def driver():
    src = (ROOT / "xtask/zoo/make_zoo.py").read_text()
    return re.search(r'CONVERTER_DRIVER = r"""(.*?)"""', src, re.S).group(1)


def value(field):
    kind = field.types[0].name
    v = field.contents()
    return {"type": kind, "value": v}


def main(tree):
    out = {"made_by": "xtask/zoo/converter_keys.py over llama-cpp-python 0.3.36's convert_hf_to_gguf.py --outtype f32",
           "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in VARIANTS:
            model = tmp / name
            shutil.copytree(ROOT / "fixtures/zoo-variants" / name, model)
            if name.startswith("phi-"):
                shutil.copy(ROOT / "fixtures/zoo/phi3/tokenizer_config.json", model / "tokenizer_config.json")
            target = tmp / f"{name}.gguf"
            subprocess.run([sys.executable, "-c", driver(), tree, str(model), str(model),
                            "--outtype", "f32", "--outfile", str(target)], check=True, capture_output=True)
            reader = GGUFReader(target)
            arch = reader.fields["general.architecture"].contents()
            keys = {k: value(f) for k, f in reader.fields.items() if k.startswith(arch + ".")}
            tensors = {t.name: [float(x) for x in t.data] for t in reader.tensors if t.name.startswith("rope_")}
            out["variants"][name] = {"keys": keys, "tensors": tensors}
    path = ROOT / "harness/src/format/gguf/converter_keys.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
