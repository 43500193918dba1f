"""API benchmark (issue 4): plan vs healthz throughput, and quantize over HTTP vs in process.

Run: ``.venv/bin/python benchmarks/api_bench.py`` (from the repository root).

1. Starts stock ``uvicorn app.main:app`` (default settings: process pool of 2) on a free port
   (``--uvicorn-option=--http=h11`` and the like pass uvicorn options through), on the guarded event loop
   ``make run`` uses (``--bare``: uvicorn's default loop).
2. From a separate load-generator process (a minimal asyncio HTTP/1.1 client
   on uvloop, 32 keep-alive connections), measures requests/s and p50/p99
   latency of ``GET /healthz`` and ``POST /v1/plan`` (Llama-3.1-70B preset on
   2 x H100-80GB), each for a fixed duration after a warm-up.
   Target: plan throughput >= 0.4 x healthz.
3. Times ``POST /v1/quantize`` (output=report, rtn g128) of a 64 MiB float32
   tensor (4096 x 4096 .npy) end to end from a separate client process (raw
   HTTP/1.1 socket, multipart body built once), against the same work in this
   process: `quantize_file` on the same .npy, which gives the same report (the
   figures are checked equal), with the server's thread count per job
   (``NIBBLE_JOB_THREADS``, default 1).  The server streams the upload to a
   temp file, then runs the job on a pool worker.  Rounds alternate; best of N and median.
   Target (issue 21): HTTP <= 2.5 x in process (best of N, N = 15 rounds).  The bare `quantize()` of the
   array in memory is printed too.
Prints every figure and the two ratios, and the median of the per-round ratios (each HTTP time over the
in-process time measured just before it: the pairs share the VM's phase).  ``--part plan`` or
``--part quantize`` runs one half.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from app.settings import Settings  # noqa: E402
from quant_core.formats import int4  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402
from quant_core.single_file import QuantizeJob, ReadLimits, quantize_file  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402

#: issue 21: HTTP quantize of a 64 MiB file at most this many times the same work in process (best of 15)
QUANTIZE_TARGET = 2.5
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


BOUNDARY = "nibble-api-bench-boundary-7f3a9c"


def multipart_body(fields: dict[str, str], file_field: str, filename: str, payload: bytes) -> bytes:
    """A multipart/form-data body built once: text fields, then one file part (as browsers and httpx send)."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             for name, value in fields.items()]
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n")
    return "".join(parts).encode() + head.encode() + payload + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_head(host: str, body: bytes) -> bytes:
    """The HTTP/1.1 request head of ``POST /v1/quantize`` carrying `body` (from `multipart_body`)."""
    return (f"POST /v1/quantize HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a Content-Length from `sock`: (status, body)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection before answering")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        body += chunk
    return int(head[9:12]), bytes(body)


def _upload_client(base_url: str, npy_path: str, fields: dict[str, str], commands: Any) -> None:
    """Client process: on each command, POST the multipart upload on one keep-alive socket; send back timings.

    The body is built once, before timing (a client that has the file bytes), and sent with two
    ``sendall`` calls (head, body) on a raw HTTP/1.1 socket: httpx's sync client needs ~0.3 s of
    its own CPU to push 64 MiB through h11 on this machine, and would measure itself.
    """
    url = httpx.URL(base_url)
    body = multipart_body(fields, "file", "w.npy", Path(npy_path).read_bytes())
    head = upload_head(f"{url.host}:{url.port}", body)
    with socket.create_connection((url.host, url.port or 80)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while commands.recv() == "go":
            started = time.perf_counter()
            sock.sendall(head)
            sock.sendall(body)
            status, answer = _read_response(sock)
            seconds = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"quantize answered {status}: {answer[:300]!r}")
            commands.send((seconds, json.loads(answer)))


def _figures(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must match between the HTTP answer and the in-process report (everything but seconds)."""
    return [(t["name"], t["shape"], t["method"], t["group_size"], t["bytes"], t["quality"])
            for t in report["tensors"]]


def time_quantize(base_url: str, repeats: int) -> dict[str, list[float]]:
    """Seconds of quantize 4096 x 4096 float32 (64 MiB), rtn g128, over HTTP and in process, alternating.

    In process is the same work as the server's job: `quantize_file` on the same .npy file (memory-mapped,
    from the page cache; what ``nibble quantize`` does without a server), giving the same report; the bare
    `quantize()` of the array already in memory is timed too, for reference.  Rounds alternate (in
    process, then over HTTP) so that load from other processes hits both sides alike.
    """
    weights = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    limits = ReadLimits(4096, 256 * 2**20, 16 * 2**20)
    fields = {"method": "rtn", "group_size": "128", "output": "report"}
    timings: dict[str, list[float]] = {"http": [], "quantize_file": [], "quantize": []}
    with tempfile.TemporaryDirectory(prefix="nibble-bench-") as folder:
        npy_path = Path(folder) / "w.npy"
        np.save(npy_path, weights, allow_pickle=False)
        # the server's job: one thread (settings.job_threads; its workers run one job per core)
        job = QuantizeJob(npy_path, "npy", None, ("rtn",), 128, False, None, limits, threads=Settings().job_threads)
        context = multiprocessing.get_context("spawn")
        commands, child_end = context.Pipe()
        client = context.Process(target=_upload_client, args=(base_url, str(npy_path), fields, child_end))
        client.start()
        try:
            local_report = quantize_file(job, "report", None)  # warm-up, both sides, full size
            commands.send("go")
            _, http_report = commands.recv()
            if _figures(http_report) != _figures(local_report):
                raise RuntimeError("the HTTP report's figures differ from the in-process report's")
            for _ in range(repeats):
                started = time.perf_counter()
                quantize(weights, int4(128), "rtn", threads=job.threads)
                timings["quantize"].append(time.perf_counter() - started)
                started = time.perf_counter()
                quantize_file(job, "report", None)
                timings["quantize_file"].append(time.perf_counter() - started)
                commands.send("go")
                seconds, _ = commands.recv()
                timings["http"].append(seconds)
        finally:
            commands.send("stop")
            client.join(timeout=30)
    return timings


def report_plan(health: dict[str, float], plan: dict[str, float]) -> None:
    """Print the plan and healthz figures and their throughput ratio against the target."""
    for name, figures in (("GET /healthz", health), ("POST /v1/plan", plan)):
        print(f"{name:<16} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:7.2f} ms  "
              f"p99 {figures['p99_ms']:7.2f} ms  ({figures['requests']:.0f} requests, "
              f"{figures['failures']:.0f} failed)")
    plan_ratio = plan["rps"] / health["rps"]
    print(f"plan/healthz throughput ratio: {plan_ratio:.2f} (target >= 0.40) "
          f"{'PASS' if plan_ratio >= 0.4 else 'MISS'}")


def report_quantize(quantize_timings: dict[str, list[float]], repeats: int) -> None:
    """Print the quantize timings (best and median of each) and the ratios against the target."""
    best = {name: min(values) for name, values in quantize_timings.items()}
    median = {name: statistics.median(values) for name, values in quantize_timings.items()}
    print(f"quantize 4096x4096 f32 (64 MiB), rtn g128, report ({repeats} alternating rounds):")
    for name, label in (("http", "POST /v1/quantize (raw-socket client process)"),
                        ("quantize_file", "in process, quantize_file() on the .npy"),
                        ("quantize", "in process, quantize() of the array in memory")):
        print(f"  {label:<48} best {best[name]:.3f} s  median {median[name]:.3f} s")
    ratio = best["http"] / best["quantize_file"]
    print(f"quantize HTTP / in process (same work), best of {repeats}: {ratio:.2f} (target <= {QUANTIZE_TARGET:.2f}) "
          f"{'PASS' if ratio <= QUANTIZE_TARGET else 'MISS'}; median: {median['http'] / median['quantize_file']:.2f}; "
          f"vs bare quantize(): best {best['http'] / best['quantize']:.2f}, "
          f"median {median['http'] / median['quantize']:.2f}")
    paired = sorted(h / q for h, q in zip(quantize_timings["http"], quantize_timings["quantize_file"], strict=True))
    print(f"  paired rounds (HTTP / the in-process run just before it): median {statistics.median(paired):.2f}, "
          f"quartiles {paired[len(paired) // 4]:.2f}-{paired[3 * len(paired) // 4]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="quantize rounds (best of and median)")
    parser.add_argument("--part", choices=("all", "plan", "quantize"), default="all")
    parser.add_argument("--uvicorn-option", action="append", default=[],
                        help="an option for uvicorn, e.g. --uvicorn-option=--http=h11 (repeatable)")
    parser.add_argument("--bare", action="store_true",
                        help="serve on uvicorn's default loop, not the guarded one make run uses (to measure it)")
    args = parser.parse_args()
    print(f"nproc={os.cpu_count()} connections={args.connections} seconds={args.seconds} "
          f"uvicorn options: {' '.join(args.uvicorn_option) or 'none'}, "
          f"loop: {'uvicorn default' if args.bare else 'guarded'}")
    with start_server(uvicorn_options=args.uvicorn_option, guarded=not args.bare) as base_url:
        time.sleep(2.0)  # let the pool's workers finish importing before measuring
        if args.part in ("all", "plan"):
            health = run_load(base_url, "GET", "/healthz", None, args.connections, args.seconds, args.warmup)
            plan = run_load(base_url, "POST", "/v1/plan", PLAN_BODY, args.connections, args.seconds, args.warmup)
            report_plan(health, plan)
        if args.part in ("all", "quantize"):
            report_quantize(time_quantize(base_url, args.repeats), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
