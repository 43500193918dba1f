"""Collect importance statistics (llama.cpp's "imatrix": the mean of x² per input column) from a Hugging Face model.

Run: ``python benchmarks/collect_importance.py MODEL TEXT -o stats.safetensors``
(``--format gguf`` writes llama.cpp's GGUF imatrix layout, ``--format dat`` its
legacy one; all three are what ``POST /v1/quantize``'s ``importance`` field reads).

Every ``torch.nn.Linear`` of the model gets a forward pre-hook that adds, for
each input column j, ``Σ x_j²`` over every token it sees, and the token count;
the statistic is their ratio (llama.cpp's tools/imatrix does the same for each
matrix multiplication).  The text is read as paragraphs (blank-line
separated) and each is run alone, truncated to ``--max-tokens``, so no padding
token enters the sums.  Names are ``<module>.weight``, the weight's name in the
model's state dict (for a checkpoint saved from the same class).

torch and transformers are development dependencies of nibble, not runtime
ones: this script is for users making their own statistics.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def paragraphs(text: str) -> list[str]:
    """The blank-line separated paragraphs of `text`, whitespace-collapsed, empty ones dropped."""
    return [" ".join(block.split()) for block in text.split("\n\n") if block.strip()]


def collect(model: Any, tokenizer: Any, texts: Iterable[str], max_tokens: int = 256) -> dict[str, np.ndarray]:
    """Mean of x² per input column of every Linear layer of `model` over the tokens of `texts`."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Any:
        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().to(torch.float64).reshape(-1, inputs[0].shape[-1])
            squares = (x * x).sum(dim=0)
            sums[name] = sums[name] + squares if name in sums else squares
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(hook_for(f"{name}.weight")))
    model.eval()
    try:
        with torch.no_grad():
            for text in texts:
                encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
                model(**encoded)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).numpy().astype(np.float32) for name in sorted(sums)}


def write(path: Path, vectors: dict[str, np.ndarray], form: str, tokens: int = 1) -> None:
    """Write `vectors` as safetensors float32 vectors, llama.cpp's GGUF imatrix, or its legacy .dat."""
    if form == "safetensors":
        from safetensors.numpy import save_file

        save_file({name: np.ascontiguousarray(v, dtype=np.float32) for name, v in vectors.items()}, str(path))
    elif form == "gguf":
        import gguf

        # llama.cpp tools/imatrix/imatrix.cpp save_imatrix: <name>.in_sum2 [cols, 1] and <name>.counts [1, 1]
        writer = gguf.GGUFWriter(path, arch="imatrix")
        writer.add_string("general.type", "imatrix")
        for name, vector in vectors.items():
            writer.add_tensor(f"{name}.in_sum2", (vector.astype(np.float32) * np.float32(tokens)).reshape(1, -1))
            writer.add_tensor(f"{name}.counts", np.array([[tokens]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    else:
        from quant_core.tensorio import write_importance_dat

        write_importance_dat(path, vectors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Hugging Face model directory or id (loaded with AutoModel)")
    parser.add_argument("text", type=Path, help="calibration text; paragraphs separated by blank lines")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--format", choices=("safetensors", "gguf", "dat"), default="safetensors")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype="float32")
    texts = paragraphs(args.text.read_text(encoding="utf-8"))
    vectors = collect(model, tokenizer, texts, args.max_tokens)
    write(args.output, vectors, args.format)
    print(f"{len(vectors)} tensors from {len(texts)} paragraphs -> {args.output} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
