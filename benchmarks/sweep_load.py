"""/healthz latency while twenty clients post the largest /v1/plan/sweep at once (issue 17).

Run: ``.venv/bin/python benchmarks/sweep_load.py`` (from the repository root).

Starts ``uvicorn app.main:app`` (default settings) on a free port, times
``GET /healthz`` every 50 ms for 3 s on the idle server, then for 10 s while
twenty threads each post the maximum sweep (4,096 rows of 64 devices: 2^18
device rows, Llama-3.1-70B on H100s).  Prints p50, p99 and the worst
/healthz, their ratios against the idle server, and the sweeps' answers
(large sweeps run `sweep_concurrency` at a time, `sweep_queue` wait, the
rest are 503 with Retry-After).  Target: /healthz p99 under the sweeps
within 10x of idle (before the gate: p50 1.2 s, worst 4.8 s; BENCHMARKS.md).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.conftest import start_server  # noqa: E402

SWEEPS = 20
TARGET_P99_RATIO = 10.0
MAXIMUM_SWEEP = {
    "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb"},
    "sweep": {"context_lengths": [1024 * (i + 1) for i in range(64)], "concurrent_sequences": list(range(1, 65)),
              "device_counts": [64]},
}


def _healthz_ms(base_url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get(f"{base_url}/healthz").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    return sorted(latencies)


def _figures(latencies: list[float]) -> tuple[float, float, float]:
    return (latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            latencies[-1])


def main() -> int:
    with start_server() as base_url:
        _healthz_ms(base_url, 1)  # warm up
        idle = _figures(_healthz_ms(base_url, 3))
        statuses: list[int] = []

        def sweep() -> None:
            statuses.append(httpx.post(f"{base_url}/v1/plan/sweep", json=MAXIMUM_SWEEP, timeout=600).status_code)

        threads = [threading.Thread(target=sweep) for _ in range(SWEEPS)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        loaded = _figures(_healthz_ms(base_url, 10))
        for thread in threads:
            thread.join()
    print(f"/healthz idle:                     p50 {idle[0]:8.1f} ms  p99 {idle[1]:8.1f} ms  worst {idle[2]:8.1f} ms")
    print(f"/healthz under {SWEEPS} maximum sweeps: p50 {loaded[0]:8.1f} ms  p99 {loaded[1]:8.1f} ms  "
          f"worst {loaded[2]:8.1f} ms")
    ratio = loaded[1] / idle[1]
    print(f"sweep answers: {dict(sorted(Counter(statuses).items()))}")
    verdict = "PASS" if ratio <= TARGET_P99_RATIO else "FAIL"
    print(f"/healthz p99 under sweeps / idle = {ratio:.2f} (<= {TARGET_P99_RATIO:g}) {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
