"""CPU seconds of one multipart `/v1/plan` from checkpoint headers, in process (BENCHMARKS.md, "Header forms").

Three forms, each body built once and posted as bytes through Starlette's TestClient, `time.process_time()` around
the post (the whole process: the app's event loop and threads, and the client, which only hands the bytes over):

- ``deepseek-v3``: DeepSeek-V3's 163 safetensors headers, index and config (tests.checkpoints, 21.6 MB;
  needs ../shared/fixtures);
- ``four-15mb``: the same model with 1,200 routed experts dealt to 4 headers of 15.2-15.3 MB each (426,167 tensors,
  the most a form holds: 4 x 16 MiB is past max_checkpoint_form_bytes' 64 MiB), with its config;
- ``4096-parts``: 4,096 header parts (the most max_checkpoint_files allows) of one or two tensors each.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/header_form_cpu.py [form ...] [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings, safetensors_header
from tests.checkpoints import deepseek_v3_headers
from tests.shared_fixtures import FIXTURES

H200 = 143_771 * 2**20


def multipart(parts: list[tuple[str, str | None, bytes, str]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of `parts` (field, file name, bytes, content type) and its headers."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for field, filename, data, content_type in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
                 .encode())
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), {"content-type": f"multipart/form-data; boundary={boundary}"}


def form(name: str) -> tuple[bytes, dict[str, str]]:
    """The body of form `name`."""
    request: dict[str, Any] = {"hardware": {"memory_bytes": H200, "count": 8}}
    parts: list[tuple[str, str | None, bytes, str]] = []
    if name in ("deepseek-v3", "four-15mb"):
        config = json.loads((FIXTURES / "models" / "deepseek-v3.json").read_text())
        if name == "four-15mb":
            config["n_routed_experts"] = 1200
        headers, index, _ = deepseek_v3_headers(config, shards=163 if name == "deepseek-v3" else 4)
        parts.append(("request", None, json.dumps(request).encode(), "application/json"))
        parts += [("header", file, data, "application/octet-stream") for file, data in headers.items()]
        if name == "deepseek-v3":
            parts.append(("index", "model.safetensors.index.json", index, "application/json"))
        parts.append(("config", "config.json", json.dumps(config).encode(), "application/json"))
    else:
        spec = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
                "vocab_size": 1000}
        files = {"a.safetensors": safetensors_header({"model.embed_tokens.weight": ("BF16", [1000, 256], 512_000)}),
                 "b.safetensors": safetensors_header({"lm_head.weight": ("BF16", [1000, 256], 512_000)}),
                 "c.safetensors": safetensors_header({f"model.layers.{i}.self_attn.q_proj.weight":
                                                      ("BF16", [256, 256], 131_072) for i in range(2)})}
        for i in range(4093):
            files[f"x{i:05d}.safetensors"] = safetensors_header({f"model.layers.{i % 2}.extra{i}.weight":
                                                                 ("BF16", [4], 8)})
        parts.append(("request", None, json.dumps({"model": {"spec": spec}, "hardware": {"device": "l4"}}).encode(),
                      "application/json"))
        parts += [("header", file, data, "application/octet-stream") for file, data in files.items()]
    return multipart(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("forms", nargs="*", default=["deepseek-v3", "four-15mb", "4096-parts"])
    parser.add_argument("--runs", type=int, default=2)
    arguments = parser.parse_args()
    with TestClient(create_app(make_settings())) as client:
        client.get("/healthz")
        for name in arguments.forms:
            body, headers = form(name)
            for run in range(arguments.runs):
                cpu, wall = time.process_time(), time.perf_counter()
                response = client.post("/v1/plan", content=body, headers=headers)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                assert response.status_code == 200, response.text[:300]
                print(f"{name:12} {len(body) / 1e6:6.1f} MB  run {run}: cpu {cpu:.2f} s  wall {wall:.2f} s")


if __name__ == "__main__":
    main()
