"""A 64 MiB upload while 32 connections post /v1/plan back to back, under each of uvicorn's HTTP protocols.

Run: ``.venv/bin/python benchmarks/upload_under_load.py`` (from the repository root).

For uvicorn's httptools protocol (its default when httptools is installed)
and its h11 protocol (``--http h11``), in that order, it starts stock
``uvicorn app.main:app`` on a free port and times ``POST /v1/quantize``
(output=report, rtn g128) of a 4096 x 4096 float32 .npy from a raw-socket
client: three uploads on an idle server (after one to warm up), then two while the load generator
of api_bench.py (another process, 32 keep-alive connections) posts
/v1/plan (Llama-3.1-70B on 2 x H100) for 10 s.  Prints each upload's seconds,
the best idle and the worst loaded one, and the plan throughput during the
uploads.  No issue sets a target; BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.api_bench import PLAN_BODY, _read_response, multipart_body, run_load, upload_head  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402

PROTOCOLS = (("uvicorn's httptools protocol", "httptools"), ("uvicorn's h11 protocol", "h11"))


def _request() -> tuple[bytes, bytes]:
    weights = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, weights, allow_pickle=False)
    body = multipart_body({"method": "rtn", "group_size": "128", "output": "report"}, "file", "w.npy",
                          buffer.getvalue())
    return upload_head("bench", body), body


def _uploads(port: int, head: bytes, body: bytes, count: int, delay: float, seconds: list[float]) -> None:
    time.sleep(delay)
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            started = time.perf_counter()
            client.sendall(head)
            client.sendall(body)
            status, answer = _read_response(client)
            if status != 200:
                raise RuntimeError(f"quantize answered {status}: {answer[:300]!r}")
            seconds.append(time.perf_counter() - started)


def main() -> int:
    head, body = _request()
    for label, http in PROTOCOLS:
        with start_server(uvicorn_options=("--http", http)) as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            idle: list[float] = []
            _uploads(port, head, body, 4, 0.0, idle)
            idle = idle[1:]  # the first warms the workers up
            loaded: list[float] = []
            uploader = threading.Thread(target=_uploads, args=(port, head, body, 2, 3.0, loaded))
            uploader.start()
            load = run_load(base_url, "POST", "/v1/plan", PLAN_BODY, 32, 10.0, 1.0)
            uploader.join()
        print(f"{label} (--http {http}):")
        print("  idle upload seconds:   " + ", ".join(f"{s:.3f}" for s in idle))
        print("  loaded upload seconds: " + ", ".join(f"{s:.3f}" for s in loaded)
              + f"  (plan {load['rps']:.0f} req/s, p99 {load['p99_ms']:.1f} ms, {load['failures']:.0f} failed)")
        print(f"  worst loaded / best idle: {max(loaded) / min(idle):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
