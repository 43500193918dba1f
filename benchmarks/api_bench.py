"""API benchmark (issue 4): plan vs healthz throughput, and quantize over HTTP vs in process.

Run: ``.venv/bin/python benchmarks/api_bench.py`` (from the repository root).

1. Starts ``uvicorn app.main:app`` (default settings: process pool of 2) on a free port.
2. From a separate load-generator process (asyncio + httpx, 32 concurrent
   connections), measures requests/s and p50/p99 latency of ``GET /healthz``
   and ``POST /v1/plan`` (Llama-3.1-70B preset on 2 x H100-80GB), each for a
   fixed duration after a warm-up.  Target: plan throughput >= 0.4 x healthz.
3. Times ``POST /v1/quantize`` (output=report, rtn g128) of a 64 MiB float32
   tensor (4096 x 4096) end to end, against ``quantize()`` of the same array
   in this process (best of N each).  Target: HTTP <= 1.5 x in-process.
Prints every figure and the two ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from quant_core.formats import int4  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402

PLAN_BODY: dict[str, Any] = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2}}


def _request_bytes(method: str, path: str, host: str, body: dict[str, Any] | None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one keep-alive request and read its whole answer; returns the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _load(base_url: str, method: str, path: str, body: dict[str, Any] | None, connections: int,
                seconds: float, warmup_seconds: float) -> dict[str, float]:
    """`connections` keep-alive HTTP/1.1 connections, each sending requests back to back.

    A minimal asyncio client (on uvloop) rather than httpx.AsyncClient: on this machine httpx's
    async client tops out near 200 requests/s, far below the server, and would measure itself.
    """
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    request = _request_bytes(method, path, f"{host}:{port}", body)
    latencies: list[float] = []
    failures = 0

    async def worker(warm_deadline: float, deadline: float) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < warm_deadline:
                await _exchange(reader, writer, request)
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                failures += status != 200
        finally:
            writer.close()

    warm_deadline = time.perf_counter() + warmup_seconds
    deadline = warm_deadline + seconds
    await asyncio.gather(*(worker(warm_deadline, deadline) for _ in range(connections)))
    latencies.sort()
    return {
        "requests": len(latencies), "failures": failures, "rps": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def _load_process(base_url: str, method: str, path: str, body: dict[str, Any] | None, connections: int,
                  seconds: float, warmup_seconds: float, results: Any) -> None:
    uvloop.install()
    results.put(asyncio.run(_load(base_url, method, path, body, connections, seconds, warmup_seconds)))


def run_load(base_url: str, method: str, path: str, body: dict[str, Any] | None, connections: int,
             seconds: float, warmup_seconds: float) -> dict[str, float]:
    """Run the load generator in a separate process, so it does not share a core's GIL with the server."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_load_process,
                              args=(base_url, method, path, body, connections, seconds, warmup_seconds, results))
    process.start()
    figures: dict[str, float] = results.get(timeout=seconds + warmup_seconds + 120)
    process.join()
    return figures


def time_quantize(base_url: str, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` seconds of quantize over HTTP and in process, 4096 x 4096 float32 (64 MiB)."""
    weights = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, weights, allow_pickle=False)
    payload = buffer.getvalue()
    in_process: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        quantize(weights, int4(128), "rtn")
        in_process.append(time.perf_counter() - started)
    over_http: list[float] = []
    with httpx.Client(base_url=base_url, timeout=300.0) as client:
        client.post("/v1/quantize", files={"file": ("w.npy", payload[:128 + 16 * 4])})  # wake a worker
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post("/v1/quantize", files={"file": ("w.npy", payload)}, data={"method": "rtn"})
            over_http.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"quantize answered {response.status_code}: {response.text[:300]}")
    return min(over_http), min(in_process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="quantize timings (best of)")
    args = parser.parse_args()
    print(f"nproc={os.cpu_count()} connections={args.connections} seconds={args.seconds}")
    with start_server() as base_url:
        time.sleep(2.0)  # let the pool's workers finish importing before measuring
        health = run_load(base_url, "GET", "/healthz", None, args.connections, args.seconds, args.warmup)
        plan = run_load(base_url, "POST", "/v1/plan", PLAN_BODY, args.connections, args.seconds, args.warmup)
        http_seconds, local_seconds = time_quantize(base_url, args.repeats)
    for name, figures in (("GET /healthz", health), ("POST /v1/plan", plan)):
        print(f"{name:<16} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:7.2f} ms  "
              f"p99 {figures['p99_ms']:7.2f} ms  ({figures['requests']:.0f} requests, "
              f"{figures['failures']:.0f} failed)")
    plan_ratio = plan["rps"] / health["rps"]
    quantize_ratio = http_seconds / local_seconds
    print(f"plan/healthz throughput ratio: {plan_ratio:.2f} (target >= 0.40) "
          f"{'PASS' if plan_ratio >= 0.4 else 'MISS'}")
    print(f"quantize 4096x4096 f32 (64 MiB), rtn g128: HTTP {http_seconds:.3f} s, in process "
          f"{local_seconds:.3f} s, ratio {quantize_ratio:.2f} (target <= 1.50) "
          f"{'PASS' if quantize_ratio <= 1.5 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
