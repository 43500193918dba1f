"""Load test (issue 6): mixed cheap requests while 4 clients upload 64 MiB tensors to quantize.

Run: ``.venv/bin/python benchmarks/load_test.py`` (60 s of load; ``--duration 5`` for a smoke run).

1. Starts ``uvicorn app.main:app`` (default settings, uploads spooled to a
   private temp dir) and warms every route once, then measures the server's
   idle RSS (the uvicorn process and its whole tree: pool workers included).
2. Baseline: 32 keep-alive connections of mixed requests (plan 50 %, inspect
   25 %, catalog 25 %) for ``--baseline-seconds``, no uploads.
3. Load: the same 32 connections for ``--duration`` seconds, plus 4 clients
   each uploading a 64 MiB float32 ``.npy`` (4096 x 4096) to ``POST
   /v1/quantize`` (rtn, output=report) in a loop, one connection per upload.
4. Waits for the last uploads, lets the server settle, measures RSS again.

The load generator runs in this process (asyncio on uvloop, raw HTTP/1.1: an
httpx async client would measure itself, see benchmarks/api_bench.py); a
thread samples the server tree's RSS every 100 ms with psutil.  Printed:
requests/s, p50/p99 per route, failures (only quantize may see 503, and only
with Retry-After), peak and settled RSS, and each target with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import uvloop

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.conftest import start_server  # noqa: E402

GiB = 1024**3
MiB = 1024**2
BOUNDARY = "nibble-load-boundary"
PLAN_BODY: dict[str, Any] = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
                             "workload": {"context_length": 8192, "concurrent_sequences": 4}}
INSPECT_BODY: dict[str, Any] = {"preset": "qwen3-30b-a3b"}
# (route label, method, path, body): one cycle of 8 is the mix, 4 plan : 2 inspect : 2 catalog.
MIX: tuple[tuple[str, str, str, dict[str, Any] | None], ...] = (
    ("plan", "POST", "/v1/plan", PLAN_BODY),
    ("inspect", "POST", "/v1/models/inspect", INSPECT_BODY),
    ("plan", "POST", "/v1/plan", PLAN_BODY),
    ("catalog", "GET", "/v1/models", None),
    ("plan", "POST", "/v1/plan", PLAN_BODY),
    ("inspect", "POST", "/v1/models/inspect", INSPECT_BODY),
    ("plan", "POST", "/v1/plan", PLAN_BODY),
    ("catalog", "GET", "/v1/devices/h100-80gb", None),
)
TARGET_P99_RATIO = 5.0
TARGET_PEAK_RSS_BYTES = int(1.5 * GiB)
TARGET_SETTLED_RSS_RATIO = 1.10


@dataclass
class RouteFigures:
    """Latencies (seconds) and failures of one route during one phase."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refused_with_retry_after: int = 0

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


Phase = dict[str, RouteFigures]


def _request_bytes(method: str, path: str, host: str, body: dict[str, Any] | None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def _mixed_connection(host: str, port: int, offset: int, deadline: float, phase: Phase) -> None:
    """One keep-alive connection sending the mix back to back until `deadline`."""
    requests = [(label, _request_bytes(method, path, f"{host}:{port}", body)) for label, method, path, body in MIX]
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while time.perf_counter() < deadline:
            label, request = requests[index % len(requests)]
            index += 1
            started = time.perf_counter()
            try:
                writer.write(request)
                status, headers, _ = await _read_answer(reader)
            except (OSError, asyncio.IncompleteReadError) as exc:
                phase[label].failures.append(f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            phase[label].latencies.append(time.perf_counter() - started)
            if status != 200:
                phase[label].failures.append(f"HTTP {status}")
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def upload_body(rows: int, columns: int) -> bytes:
    """A multipart body: method=rtn, output=report, and a float32 ``rows x columns`` ``.npy`` as ``file``."""
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((rows, columns), dtype=np.float32), allow_pickle=False)
    fields = "".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                     for name, value in (("method", "rtn"), ("output", "report")))
    file_head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="w.npy"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n")
    return fields.encode() + file_head.encode() + buffer.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()


async def _upload_once(host: str, port: int, body: bytes) -> tuple[int, dict[str, str]]:
    """POST one upload on a fresh connection; the answer may come before the body is all sent (503)."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /v1/quantize HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    answer = asyncio.ensure_future(_read_answer(reader))
    try:
        writer.write(head.encode())
        view = memoryview(body)
        for start in range(0, len(body), 4 * MiB):
            if answer.done():
                break
            writer.write(view[start:start + 4 * MiB])
            await writer.drain()
    except OSError:
        pass  # the server answered early and closed; the answer is read below
    try:
        status, headers, _ = await answer
    finally:
        writer.close()
    return status, headers


async def _uploader(host: str, port: int, body: bytes, deadline: float, figures: RouteFigures) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            status, headers = await _upload_once(host, port, body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            figures.failures.append(f"{type(exc).__name__}: {exc}")
            continue
        if status == 503 and "retry-after" in headers:
            figures.refused_with_retry_after += 1
            await asyncio.sleep(float(headers["retry-after"]))
            continue
        figures.latencies.append(time.perf_counter() - started)
        if status != 200:
            figures.failures.append(f"HTTP {status}")


async def run_phase(host: str, port: int, connections: int, seconds: float, uploaders: int,
                    body: bytes | None) -> tuple[Phase, float]:
    """Mixed load for `seconds` (plus `uploaders` upload loops); the figures and the phase's wall seconds."""
    phase: Phase = defaultdict(RouteFigures)
    started = time.perf_counter()
    deadline = started + seconds
    tasks = [_mixed_connection(host, port, offset, deadline, phase) for offset in range(connections)]
    if body is not None:
        tasks += [_uploader(host, port, body, deadline, phase["quantize"]) for _ in range(uploaders)]
    await asyncio.gather(*tasks)
    return phase, time.perf_counter() - started


class RssSampler(threading.Thread):
    """Samples the RSS of a process and all its descendants every `interval` seconds; keeps the peak."""

    def __init__(self, root: psutil.Process, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def current(self) -> int:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, self.current())

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def server_process(base_url: str) -> psutil.Process:
    port = base_url.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        if port in child.cmdline():
            return child
    raise LookupError(f"no child process serves {base_url}")


def settled_rss(sampler: RssSampler, settle_seconds: float) -> int:
    """RSS after `settle_seconds`: the smallest of ten samples over the last second."""
    time.sleep(max(0.0, settle_seconds - 1.0))
    samples = []
    for _ in range(10):
        samples.append(sampler.current())
        time.sleep(0.1)
    return min(samples)


def print_phase(name: str, phase: Phase, seconds: float) -> None:
    total = sum(len(f.latencies) for f in phase.values())
    print(f"{name}: {seconds:.1f} s, {total} answered requests, {total / seconds:.0f} req/s")
    for label in sorted(phase):
        figures = phase[label]
        print(f"  {label:<8} {len(figures.latencies):7d} answered  {len(figures.latencies) / seconds:8.1f} req/s  "
              f"p50 {figures.percentile_ms(0.50):9.2f} ms  p99 {figures.percentile_ms(0.99):9.2f} ms  "
              f"failed {len(figures.failures)}  503+Retry-After {figures.refused_with_retry_after}")
        for failure in sorted(set(figures.failures))[:5]:
            print(f"           failure: {failure} (x{figures.failures.count(failure)})")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load with the uploaders")
    parser.add_argument("--baseline-seconds", type=float, default=None,
                        help="seconds of mixed load without uploads (default: min(15, duration))")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--uploaders", type=int, default=4)
    parser.add_argument("--rows", type=int, default=4096, help="uploaded tensor rows (4096 x 4096 f32 = 64 MiB)")
    parser.add_argument("--columns", type=int, default=4096)
    parser.add_argument("--settle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    baseline_seconds = args.baseline_seconds if args.baseline_seconds is not None else min(15.0, args.duration)
    uvloop.install()
    body = upload_body(args.rows, args.columns)
    print(f"nproc={os.cpu_count()} connections={args.connections} uploaders={args.uploaders} "
          f"tensor={args.rows}x{args.columns} f32 ({args.rows * args.columns * 4 / MiB:.0f} MiB) "
          f"baseline={baseline_seconds:g} s duration={args.duration:g} s")
    with tempfile.TemporaryDirectory(prefix="nibble-load-") as temp_dir, \
            start_server({"NIBBLE_TEMP_DIR": temp_dir}) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        server = server_process(base_url)
        sampler = RssSampler(server)
        # Warm-up: every route once (and one small quantize), so lazy imports are in the idle figure.
        asyncio.run(run_phase(host, int(port), len(MIX), 1.0, 1, upload_body(256, 256)))
        idle = settled_rss(sampler, 3.0)
        sampler.start()
        baseline, baseline_wall = asyncio.run(run_phase(host, int(port), args.connections, baseline_seconds, 0, None))
        loaded, loaded_wall = asyncio.run(run_phase(host, int(port), args.connections, args.duration,
                                                    args.uploaders, body))
        after = settled_rss(sampler, args.settle_seconds)
        sampler.stop()
        left_behind = list(Path(temp_dir).iterdir())
    print_phase("baseline (no uploads)", baseline, baseline_wall)
    print_phase("under load (with uploads)", loaded, loaded_wall)
    plan_ratio = loaded["plan"].percentile_ms(0.99) / baseline["plan"].percentile_ms(0.99)
    plan_failures = len(loaded["plan"].failures) + len(baseline["plan"].failures)
    other_failures = sum(len(loaded[label].failures) for label in loaded if label not in ("plan",))
    all_requests = sum(len(f.latencies) + len(f.failures) + f.refused_with_retry_after for f in loaded.values())
    refused = loaded["quantize"].refused_with_retry_after
    print(f"failures under load: {other_failures + len(loaded['plan'].failures)} of {all_requests} "
          f"({100 * (other_failures + len(loaded['plan'].failures)) / max(all_requests, 1):.3f} %), "
          f"quantize 503 with Retry-After: {refused} ({100 * refused / max(all_requests, 1):.3f} %)")
    print(f"RSS idle {idle / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB, "
          f"after load (+{args.settle_seconds:g} s) {after / MiB:.0f} MiB")
    print(f"temp files left behind after the load: {len(left_behind)}")
    checks = [
        (f"plan p99 under load / baseline = {plan_ratio:.2f} (<= {TARGET_P99_RATIO:g})",
         plan_ratio <= TARGET_P99_RATIO),
        (f"failed plan requests = {plan_failures} (== 0)", plan_failures == 0),
        (f"other failures (anything but quantize 503 + Retry-After) = {other_failures} (== 0)",
         other_failures == 0),
        (f"peak RSS = {sampler.peak / GiB:.2f} GiB (<= 1.5 GiB)", sampler.peak <= TARGET_PEAK_RSS_BYTES),
        (f"RSS after load / idle = {after / idle:.3f} (<= {TARGET_SETTLED_RSS_RATIO:.2f})",
         after <= TARGET_SETTLED_RSS_RATIO * idle),
        (f"uploads completed under load = {len(loaded['quantize'].latencies)} (> 0)",
         len(loaded["quantize"].latencies) > 0),
    ]
    for text, ok in checks:
        print(f"{verdict(ok)}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
