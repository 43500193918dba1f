"""Where the time of ``POST /v1/quantize`` over HTTP goes (issue 21): nibble beside stock uvicorn's own floor.

Run: ``.venv/bin/python benchmarks/upload_floor.py`` (from the repository root).

Starts two stock uvicorn servers (httptools, the default): nibble (``app.main:app``, default settings) and
`drain_app`, an ASGI app that only reads the request body and answers its size, with glibc's allocator set as
nibble sets it (app/allocator.py).  A client process then sends the same multipart body (a 64 MiB float32
``.npy``, rtn g128, output=report, as ``benchmarks/api_bench.py`` does) to each, in alternating rounds, and times
the last byte sent (the upload: the client's ``sendall`` returns once the server has taken all but what the
sockets' buffers hold) and the answer.  Also per round: each server process's CPU (all threads, from
``/proc/<pid>/task/*/schedstat``, Linux) and, in this process, `quantize_file` on the same file.

What it shows: the drain app's upload is what uvicorn itself costs to hand 64 MiB to an application as ASGI
messages; nibble's upload beyond it is nibble's own work (multipart parsing, the spool file); nibble's answer
beyond its upload is the job in a pool worker and the answer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from app.allocator import keep_receive_buffers  # noqa: E402
from app.settings import Settings  # noqa: E402
from benchmarks.api_bench import _read_response, multipart_body, upload_head  # noqa: E402
from quant_core.single_file import QuantizeJob, ReadLimits, quantize_file  # noqa: E402
from tests.e2e.conftest import free_port  # noqa: E402


async def drain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole request body and answer its size in bytes: the least an ASGI app can do with an upload."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        keep_receive_buffers()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    answer = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def _serve(app: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
            return process, port
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"uvicorn {app} did not start") from None
            time.sleep(0.1)


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process `pid` so far (ns resolution, Linux)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended meanwhile
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    weights = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    servers = {"drain": _serve("benchmarks.upload_floor:drain_app"), "nibble": _serve("app.main:app")}
    figures: dict[str, dict[str, list[float]]] = {name: {"upload": [], "answer": [], "cpu": []} for name in servers}
    local: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="nibble-bench-") as folder:
            npy_path = Path(folder) / "w.npy"
            np.save(npy_path, weights, allow_pickle=False)
            body = multipart_body({"method": "rtn", "group_size": "128", "output": "report"}, "file", "w.npy",
                                  npy_path.read_bytes())
            job = QuantizeJob(npy_path, "npy", None, ("rtn",), 128, False, None,
                              ReadLimits(4096, 256 * 2**20, 16 * 2**20), threads=Settings().job_threads)
            sockets = {}
            for name, (_, port) in servers.items():
                sockets[name] = socket.create_connection(("127.0.0.1", port))
                sockets[name].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            time.sleep(2.0)  # the pool's workers finish importing
            for round_ in range(args.rounds + 1):  # round 0 warms up
                started = time.perf_counter()
                quantize_file(job, "report", None)
                if round_:
                    local.append(time.perf_counter() - started)
                for name in (("drain", "nibble") if round_ % 2 else ("nibble", "drain")):
                    process, port = servers[name]
                    cpu = _cpu_seconds(process.pid)
                    started = time.perf_counter()
                    sockets[name].sendall(upload_head(f"127.0.0.1:{port}", body))
                    sockets[name].sendall(body)
                    sent = time.perf_counter()
                    status, answer = _read_response(sockets[name])
                    answered = time.perf_counter()
                    if status != 200:
                        raise RuntimeError(f"{name} answered {status}: {answer[:300]!r}")
                    time.sleep(0.05)  # let the server finish its own work (cleanup) before reading its CPU
                    if round_:
                        figures[name]["upload"].append(sent - started)
                        figures[name]["answer"].append(answered - started)
                        figures[name]["cpu"].append(_cpu_seconds(process.pid) - cpu)
            for connection in sockets.values():
                connection.close()
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)
    print(f"64 MiB multipart upload, {args.rounds} alternating rounds (best / median, ms):")
    for name, label in (("drain", "stock uvicorn, drain-only ASGI app"), ("nibble", "nibble POST /v1/quantize")):
        print(f"  {label:<36} " + "  ".join(
            f"{kind} {1000 * min(values):6.1f} / {1000 * statistics.median(values):6.1f}"
            for kind, values in figures[name].items()))
    print(f"  {'in process, quantize_file()':<36} job {1000 * min(local):6.1f} / "
          f"{1000 * statistics.median(local):6.1f}")
    floor = min(figures["drain"]["answer"]) + min(local)
    print(f"best nibble answer / best in process: {min(figures['nibble']['answer']) / min(local):.2f}; "
          f"if the upload cost only uvicorn's floor: ({1000 * min(figures['drain']['answer']):.1f} + "
          f"{1000 * min(local):.1f}) / {1000 * min(local):.1f} = {floor / min(local):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
