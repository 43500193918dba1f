"""Record what llama.cpp's converter, convert_hf_to_gguf.py, writes for the tiny llama, qwen2, mistral and qwen3
checkpoints of tests/checkpoints.py, and the qwen2 with a byte-level BPE tokenizer: every metadata key with its
GGUF type and value (arrays: length, first items and a SHA-256 of all of them) and every tensor's name, ggml type
and shape, into recorded.json.  The tests read that file, never the converter.

Run once, from the repository root, with the converter's dependencies (torch, transformers, sentencepiece):
python -m tests.quant_core.data.gguf_model.record PATH/TO/llama.cpp

recorded.json was made on 2026-12-06 with the llama.cpp that PyPI's llama-cpp-python 0.3.36 sdist vendors
(commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f, 2026-10-01), ``convert_hf_to_gguf.py DIR --outtype f16``,
transformers 5.23.0 and sentencepiece 0.2.3.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf

from tests.checkpoints import write_llama_checkpoint

HERE = Path(__file__).parent
#: the directory names the checkpoints get (the converter's general.name comes from it)
MODELS = {"llama": "tiny-llama", "qwen2": "tiny-qwen2", "mistral": "tiny-mistral", "qwen3": "tiny-qwen3",
          "qwen2-bpe": "tiny-qwen2-bpe"}
#: the converter names a BPE pre-tokenizer by the hash of its token ids for a check text, which only real
#: tokenizers match; for the tiny byte-level BPE (Qwen2's pre-tokenizer) it is told "qwen2" instead
#: (``TextModel.get_vocab_base_pre`` replaced for that run), and the tests add the tiny tokenizer's hash to
#: nibble's table the same way
PRE_TOKENIZER = {"qwen2-bpe": "qwen2"}
#: runs the converter with ``get_vocab_base_pre`` answering argv[1], the converter's arguments following
DRIVER = """
import runpy, sys
from pathlib import Path
llama_cpp = Path(sys.argv[2])
sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
import conversion.base
pre = sys.argv[1]
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [str(llama_cpp / "convert_hf_to_gguf.py"), *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
#: config.json changes made to the tiny llama or qwen2 (a Mistral is a llama with Mistral's config class)
CONFIGS: dict[str, dict[str, Any]] = {
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": None}}


def write_model(directory: Path, arch: str) -> None:
    """The tiny checkpoint recorded as `arch` (llama, qwen2, mistral), written to `directory`."""
    family = arch.removesuffix("-bpe")
    write_llama_checkpoint(directory, family=family if family in ("qwen2", "qwen3") else "llama",
                           bpe=arch.endswith("-bpe"))
    if arch in CONFIGS:
        path = directory / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **CONFIGS[arch]}, indent=2))


def _plain(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def describe(path: Path) -> dict[str, Any]:
    """A GGUF file's metadata (``GGUF.*`` header fields left out) and tensors, as recorded.json holds them."""
    reader = gguf.GGUFReader(path)
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        types = [kind.name for kind in field.types]
        if isinstance(value, list):
            items = [_plain(item) for item in value]
            digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()
            metadata[key] = {"types": types, "length": len(items), "first": items[:4], "sha256": digest}
        else:
            metadata[key] = {"types": types, "value": _plain(value)}
    tensors = {tensor.name: {"type": tensor.tensor_type.name, "shape": [int(n) for n in tensor.shape]}
               for tensor in reader.tensors}
    return {"metadata": metadata, "tensors": dict(sorted(tensors.items()))}


def main(llama_cpp: Path) -> None:
    recorded: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for arch, name in MODELS.items():
            directory = Path(scratch) / name
            write_model(directory, arch)
            out = Path(scratch) / f"{name}.gguf"
            arguments = [str(directory), "--outtype", "f16", "--outfile", str(out)]
            if arch in PRE_TOKENIZER:
                command = [sys.executable, "-c", DRIVER, PRE_TOKENIZER[arch], str(llama_cpp), *arguments]
            else:
                command = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), *arguments]
            subprocess.run(command, check=True, capture_output=True)
            recorded[arch] = describe(out)
    (HERE / "recorded.json").write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
