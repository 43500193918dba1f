"""A spread of ``/v1/plan`` and ``/v1/plan/sweep`` requests and their full answers, to check that work on the
route's speed changes no answer byte.

`REQUESTS` covers every preset (the variants of ``test_plans.PLAN_VARIANTS``, a T4, memory in bytes), every
weight format and checkpoint layout, each vLLM release, the generic engine, a device given by its capability,
pasted config.json files (a misspelt key, GPTQ and FP8 quantization configs), sizes, checkpoint headers (base64 and
the multipart form), sweeps, and refusals (400, 413, 415, 422: unknown names, extra and conflicting fields, bad
JSON, a repeated key, a lone surrogate, the wrong media type).  Before and after a change::

    PYTHONPATH=$PWD python -m tests.app.plan_answers capture /tmp/before.json   # on the old tree
    PYTHONPATH=$PWD python -m tests.app.plan_answers compare /tmp/before.json   # on the new one

The answers are not kept in the repository: a planner change moves them (4 MB of JSON).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app
from quant_core.catalog import list_presets
from tests.app.conftest import make_settings
from tests.app.test_plan_form import EMBEDDING, LAYERS, LM_HEAD, TINY_SPEC, form
from tests.app.test_plans import PLAN_VARIANTS

#: (name, path, keyword arguments of ``TestClient.post``)
Request = tuple[str, str, dict[str, Any]]
#: response headers that differ between two runs of the same request
VARYING_HEADERS = frozenset({"x-request-id", "date"})
_LLAMA_CONFIG: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16"}
_HEADERS = {"a.safetensors": EMBEDDING, "b.safetensors": LM_HEAD, "c.safetensors": LAYERS}
_RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("bad-json", b'{"model": ', "application/json"),
    ("repeated-key", b'{"model": {"preset": "a", "preset": "b"}, "hardware": {"device": "h100-80gb"}}',
     "application/json"),
    ("empty", b"", "application/json"),
    ("text-plain", b'{"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "t4"}}', "text/plain"),
    ("bom", '{"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "t4"}}'.encode("utf-8-sig"),
     "application/json"),
    ("lone-surrogate", b'{"model": {"preset": "\\ud800"}, "hardware": {"device": "t4"}}', "application/json"),
    ("array", b"[1, 2]", "application/json"),
]


def _requests() -> list[Request]:
    requests: list[Request] = []

    def plan(name: str, body: dict[str, Any], path: str = "/v1/plan") -> None:
        requests.append((name, path, {"json": body}))

    for preset in (preset.id for preset in list_presets()):
        for index, variant in enumerate(PLAN_VARIANTS):
            plan(f"{preset}/variant-{index}", {"model": {"preset": preset},
                                               "hardware": {"device": "h100-80gb", "count": 2}, **variant})
        plan(f"{preset}/t4", {"model": {"preset": preset}, "hardware": {"device": "t4"}})
        plan(f"{preset}/bytes", {"model": {"preset": preset}, "hardware": {"memory_bytes": 24 * 2**30, "count": 4}})
    llama_8b = {"model": {"preset": "llama-3.1-8b"}}
    for weight_format in ("int4", "int8", "bf16", "fp16", "fp8", "mxfp4", "nvfp4", "nf4", "gguf-q4_k_m", "gguf-q8_0",
                          "fit"):
        plan(f"format/{weight_format}", {**llama_8b, "hardware": {"device": "l4"},
                                         "weights": {"format": weight_format}})
    # one value changed at a time from the same request: answers that differ only there
    base = {**llama_8b, "hardware": {"device": "h100-80gb", "count": 2}}
    for section, values in (
            ("hardware", {"count": 4, "compute_units": 132}),
            ("workload", {"context_length": 32768, "concurrent_sequences": 8}),
            ("weights", {"group_size": 64, "symmetric": True, "zero": "fp16", "pad": True, "layout": "awq"}),
            ("kv_cache", {"dtype": "fp8", "block_size": 32}),
            ("parallel", {"tensor": 1, "pipeline": 2, "data": 2}),
            ("runtime", {"memory_utilization": 0.8, "engine_version": "0.33", "overhead_bytes": 2**30,
                         "activation_bytes": 2**30, "max_batched_tokens": 4096, "max_num_seqs": 64,
                         "float_format": "fp16", "enforce_eager": True})):
        for key, value in values.items():
            plan(f"one-value/{section}.{key}", {**base, section: {**base.get(section, {}), key: value}})
    for key, value in (("scales", "block"), ("double_quant", False)):
        weight_format = "fp8" if key == "scales" else "nf4"
        plan(f"one-value/weights.{key}", {**base, "weights": {"format": weight_format, key: value}})
    for layout in ("gptq", "awq", "compressed-tensors"):
        plan(f"layout/{layout}", {**llama_8b, "hardware": {"device": "a100-40gb"}, "weights": {"layout": layout}})
    for version in ("0.11", "0.19", "0.33"):
        plan(f"vllm/{version}", {"model": {"preset": "qwen3-30b-a3b"}, "hardware": {"device": "h100-80gb", "count": 2},
                                 "runtime": {"engine_version": version, "expert_parallel": True}})
    plan("engine/generic", {**llama_8b, "hardware": {"device": "a10g"}, "runtime": {"engine": "generic"}})
    plan("hardware/capability", {"model": {"preset": "gpt-oss-20b"}, "hardware": {
        "memory_bytes": 24 * 2**30, "compute_capability": "7.5", "compute_units": 40}})
    misspelt = {key: value for key, value in _LLAMA_CONFIG.items() if key != "num_key_value_heads"}
    plan("config/misspelt-key", {"model": {"hf_config": {**misspelt, "num_kv_heads": 8}},
                                 "hardware": {"device": "h100-80gb"}})
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
    plan("config/gptq", {"model": {"hf_config": {**_LLAMA_CONFIG, "quantization_config": gptq}},
                         "hardware": {"device": "a100-80gb"}})
    fp8 = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    plan("config/fp8", {"model": {"hf_config": {**_LLAMA_CONFIG, "quantization_config": fp8}},
                        "hardware": {"device": "h100-80gb"}})
    tiny = {"model": {"spec": TINY_SPEC}, "hardware": {"device": "l4"}}
    plan("sizes", tiny)
    plan("headers/base64", {**tiny, "checkpoint": {"headers": [
        {"file": name, "header_base64": base64.b64encode(data).decode()} for name, data in _HEADERS.items()]}})
    requests.append(("headers/form", "/v1/plan", {"files": form(tiny, _HEADERS)}))
    requests.append(("headers/form-sweep", "/v1/plan/sweep", {"files": form(
        {**tiny, "sweep": {"context_lengths": [1024, 4096]}}, _HEADERS)}))
    plan("sweep/grid", {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
                        "sweep": {"context_lengths": [4096, 8192, 32768], "formats": ["bf16", "int4", "fp8"],
                                  "device_counts": [2, 4]}}, "/v1/plan/sweep")
    plan("sweep/devices", {"model": {"preset": "qwen3-30b-a3b"}, "hardware": {"device": "h100-80gb"},
                           "sweep": {"devices": ["h100-80gb", "l4", "t4", "mi300x"]}}, "/v1/plan/sweep")
    plan("refused/unknown-preset", {"model": {"preset": "nope"}, "hardware": {"device": "h100-80gb"}})
    plan("refused/unknown-device", {**llama_8b, "hardware": {"device": "nope"}})
    plan("refused/extra-field", {**llama_8b, "hardware": {"device": "h100-80gb"}, "extra": 1})
    plan("refused/device-and-bytes", {**llama_8b, "hardware": {"device": "h100-80gb", "memory_bytes": 5}})
    plan("refused/string-count", {**llama_8b, "hardware": {"device": "h100-80gb", "count": "2"}})
    plan("refused/unused-group-size", {**llama_8b, "hardware": {"device": "h100-80gb"},
                                       "weights": {"format": "bf16", "group_size": 64}})
    plan("refused/tensor-degree", {**llama_8b, "hardware": {"device": "h100-80gb", "count": 4},
                                   "parallel": {"tensor": 3}})
    plan("refused/int8-kv", {**llama_8b, "hardware": {"device": "h100-80gb"}, "kv_cache": {"dtype": "int8"}})
    plan("refused/expert-parallel-dense", {**llama_8b, "hardware": {"device": "h100-80gb"},
                                           "runtime": {"expert_parallel": True}})
    plan("refused/sweep-rows", {**llama_8b, "hardware": {"device": "h100-80gb"},
                                "sweep": {"context_lengths": list(range(1, 5000))}}, "/v1/plan/sweep")
    for name, content, media_type in _RAW_BODIES:
        requests.append((f"refused/{name}", "/v1/plan", {"content": content, "headers": {"Content-Type": media_type}}))
    return requests


REQUESTS: list[Request] = _requests()


def answers(requests: list[Request] = REQUESTS, before_each: Callable[[], None] | None = None
            ) -> dict[str, dict[str, Any]]:
    """Each request's status, headers (less `VARYING_HEADERS`) and body, from one app (default test settings);
    `before_each` is called before each request."""
    found: dict[str, dict[str, Any]] = {}
    with TestClient(create_app(make_settings())) as client:
        for name, path, arguments in requests:
            if before_each is not None:
                before_each()
            response = client.post(path, **arguments)
            found[name] = {"status": response.status_code, "body": response.content.decode("utf-8", "replace"),
                           "headers": {key: value for key, value in response.headers.items()
                                       if key.lower() not in VARYING_HEADERS}}
    return found


def main(arguments: list[str]) -> int:
    """``capture PATH`` writes the answers; ``compare PATH`` says which differ from those written (exit 1 if any)."""
    mode, path = arguments
    found = answers()
    if mode == "capture":
        with open(path, "w", encoding="utf-8") as file:
            json.dump(found, file)
        print(f"{len(found)} answers written to {path}")
        return 0
    with open(path, encoding="utf-8") as file:
        expected: dict[str, dict[str, Any]] = json.load(file)
    differ = [name for name in expected if found.get(name) != expected[name]]
    print(f"{len(expected)} answers compared, {len(differ)} differ{': ' if differ else ''}{', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
