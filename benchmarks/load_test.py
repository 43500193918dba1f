"""Load test (issues 6 and 17): mixed cheap requests under an attack mix, then while 4 clients upload 64 MiB tensors.

Run: ``.venv/bin/python benchmarks/load_test.py`` (about 3 minutes; ``--duration 5
--attack-seconds 5`` for a smoke run, ``--attack-seconds 0`` to leave the attack out).

1. Starts stock ``uvicorn app.main:app`` with the connection limits ``make run``
   passes (default settings, uploads spooled to a private temp dir), warms
   every route once and sends each hostile request of the attack mix once,
   then measures the server's idle RSS (the uvicorn process and its whole
   tree: pool workers included).
2. Baseline: 32 keep-alive connections of mixed requests (plan 50 %, inspect
   25 %, catalog 25 %) for ``--baseline-seconds``, nothing else.
3. Attack (issue 17): the same 32 connections for ``--attack-seconds``, plus
   the repros of issue 17's hostile probe (tests/hostile_requests.py: include
   globs of 1,024 mostly ``[``, distinct each time, some from clients that hang
   up; .npy v2 headers of ``(1,2),`` runs at the 64 KiB limit and of 1 MiB;
   GPTQ with 1e30 calibration; nibble files with hostile metadata to
   /v1/dequantize; lone surrogates in JSON and in a tensor name; 60 KB Host
   headers and paths with a trailing slash; the largest sweep the limits
   allow and one past them) sent at ``--attack-rate`` a second, each on its
   own connection, at most ``--attack-concurrency`` at once; and
   ``--trickle-connections`` connections trickling a request head one byte
   every ``--trickle-byte-seconds`` (slowloris) for the whole phase. Then the
   server is left to settle and RSS is measured again.
4. Load: the same 32 connections for ``--duration`` seconds, plus 4 clients
   each uploading a 64 MiB float32 ``.npy`` (4096 x 4096) to ``POST
   /v1/quantize`` (rtn, output=report) in a loop, one connection per upload.
5. Waits for the last uploads, lets the server settle, measures RSS again.

The load generator runs in this process (asyncio on uvloop, raw HTTP/1.1: an
httpx async client would measure itself, see benchmarks/api_bench.py); a
thread samples the server tree's RSS every 100 ms with psutil.  Printed:
requests/s, p50/p99 per route, failures (only quantize may see 503, and only
with Retry-After), each hostile kind's answers, peak and settled RSS, and
each target with PASS/MISS.  A failure is a transport error or an answer
other than 200 on a normal request; a hostile request must get the answer
tests/app/test_attack_mix.py checks it gets alone (or 503 with Retry-After
where the route takes a pool or sweep place).
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
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import uvloop

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from app.cli import SERVE_BACKLOG, SERVE_LIMIT_CONCURRENCY, SERVE_TIMEOUT_KEEP_ALIVE_SECONDS  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402
from tests.hostile_requests import BUILDERS, TRICKLE_BUILDER, HostileRequest  # noqa: E402

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
# what `make run` passes uvicorn (SECURITY.md, "Connections")
UVICORN_LIMITS = ("--limit-concurrency", str(SERVE_LIMIT_CONCURRENCY), "--timeout-keep-alive",
                  str(SERVE_TIMEOUT_KEEP_ALIVE_SECONDS), "--backlog", str(SERVE_BACKLOG))
HEAD_TIMEOUT_SECONDS = Settings().head_timeout_seconds  # the server's (default settings): a whole head's deadline
HOSTILE_ANSWER_SECONDS = 120.0  # how long a hostile request may wait for its answer before it counts as unanswered


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


@dataclass
class HostileFigures:
    """Answers to one kind of hostile request during the attack."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    busy_refusals: int = 0  # 503 with Retry-After, from a route that takes a pool or sweep place first
    unexpected: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    hung_up: int = 0  # sent whole, then the connection closed without reading the answer
    cut_at_end: int = 0  # trickled heads still incomplete when the attack ended (closed then)
    latencies: list[float] = field(default_factory=list)


Attack = dict[str, HostileFigures]


async def _read_any_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer, its body by Content-Length or, without one, up to the end of the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return int(lines[0].split()[1]), headers, body


def expected_status(request: HostileRequest, trickle_seconds: float) -> int:
    """What `request` must be answered: a head trickled for longer than the guarded loop's head deadline is
    408 (``request-head-timeout``), whatever its complete head would have been answered."""
    if request.delivery == "trickle" and trickle_seconds > HEAD_TIMEOUT_SECONDS:
        return 408
    return request.status


async def send_hostile(host: str, port: int, request: HostileRequest, deadline: float, trickle_byte_seconds: float,
                       figures: HostileFigures) -> None:
    """Send `request` on a connection of its own as its delivery says, and file its answer in `figures`."""
    figures.sent += 1
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        figures.transport_errors.append(f"connect: {type(exc).__name__}")
        return
    payload = request.head(f"{host}:{port}") + request.body
    answer = asyncio.ensure_future(_read_any_answer(reader))
    try:
        try:
            if request.delivery == "trickle":
                for position in range(len(payload)):
                    if answer.done() or writer.is_closing():
                        break  # refused at the head deadline: the 408 is read below
                    if time.perf_counter() >= deadline:
                        figures.cut_at_end += 1
                        return
                    writer.write(payload[position:position + 1])
                    await writer.drain()
                    await asyncio.sleep(trickle_byte_seconds)
            else:
                view = memoryview(payload)
                for start in range(0, len(payload), MiB):
                    if answer.done():
                        break  # answered early (a 413 from a length field): the rest is not needed
                    writer.write(view[start:start + MiB])
                    await writer.drain()
                if request.delivery == "hang-up":
                    figures.hung_up += 1
                    return
        except OSError:
            pass  # the server answered early and closed; the answer is read below
        status, headers, _ = await asyncio.wait_for(answer, HOSTILE_ANSWER_SECONDS)
    except (OSError, asyncio.IncompleteReadError) as exc:  # TimeoutError (no answer) is an OSError
        figures.transport_errors.append(type(exc).__name__)
        return
    finally:
        answer.cancel()
        writer.close()
    figures.latencies.append(time.perf_counter() - started)
    figures.statuses[status] += 1
    if status == 503 and request.busy_refusal and "retry-after" in headers:
        figures.busy_refusals += 1
    elif status != expected_status(request, len(payload) * trickle_byte_seconds):
        figures.unexpected.append(f"HTTP {status}")


async def _attack(host: str, port: int, requests: list[HostileRequest], deadline: float, rate: float,
                  concurrency: int, trickles: int, trickle_byte_seconds: float, attack: Attack) -> None:
    """`requests` at `rate` a second (at most `concurrency` in flight), `trickles` slowloris heads, until `deadline`."""
    places = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Future[None]] = set()

    async def one(request: HostileRequest) -> None:
        try:
            await send_hostile(host, port, request, deadline, trickle_byte_seconds, attack[request.kind])
        finally:
            places.release()

    async def trickler(index: int) -> None:
        while time.perf_counter() < deadline:
            request = TRICKLE_BUILDER(index)
            await send_hostile(host, port, request, deadline, trickle_byte_seconds, attack[request.kind])

    tricklers = [asyncio.ensure_future(trickler(index)) for index in range(trickles)]
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for request in requests:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await places.acquire()
        if time.perf_counter() >= deadline:
            places.release()
            break
        task = asyncio.ensure_future(one(request))
        pending.add(task)
        task.add_done_callback(pending.discard)
        next_at = max(next_at + interval, time.perf_counter() - interval)  # steady: no burst to catch up
    await asyncio.gather(*tricklers, *pending)


async def run_attack_phase(host: str, port: int, connections: int, seconds: float, requests: list[HostileRequest],
                           rate: float, concurrency: int, trickles: int, trickle_byte_seconds: float
                           ) -> tuple[Phase, float, Attack, float]:
    """The mixed load for `seconds` beside the attack; the figures, the mixed load's wall seconds, the attack's
    figures and the seconds until its last hostile request was answered."""
    phase: Phase = defaultdict(RouteFigures)
    attack: Attack = defaultdict(HostileFigures)
    started = time.perf_counter()
    deadline = started + seconds
    attacking = asyncio.ensure_future(_attack(host, port, requests, deadline, rate, concurrency, trickles,
                                              trickle_byte_seconds, attack))
    await asyncio.gather(*[_mixed_connection(host, port, offset, deadline, phase) for offset in range(connections)])
    mixed_wall = time.perf_counter() - started
    await attacking
    return phase, mixed_wall, attack, time.perf_counter() - started


async def warm_hostile(host: str, port: int) -> None:
    """Each hostile request once, whole and answered, so what it loads is in the idle figure."""
    figures = HostileFigures()
    for index, builder in enumerate((*BUILDERS, TRICKLE_BUILDER)):
        request = replace(builder(index), delivery="whole")
        await send_hostile(host, port, request, time.perf_counter() + HOSTILE_ANSWER_SECONDS, 0.0, figures)


def print_attack(attack: Attack, seconds: float, trickles: int) -> None:
    trickled = attack[TRICKLE_BUILDER(0).kind].sent
    hostile = sum(figures.sent for figures in attack.values()) - trickled
    print(f"hostile requests: {hostile} in {seconds:.1f} s ({hostile / seconds:.1f}/s, until the last answer), "
          f"and {trickled} heads trickled on {trickles} connections")
    print(f"  {'kind':<34} {'sent':>5}  {'answers (status x count)':<26} {'503+RA':>6} {'hung up':>7} "
          f"{'cut':>4} {'transport':>9} {'unexpected':>10} {'p50 ms':>8} {'max ms':>8}")
    for kind in sorted(attack):
        figures = attack[kind]
        ordered = sorted(figures.latencies)
        p50 = 1000 * ordered[len(ordered) // 2] if ordered else float("nan")
        worst = 1000 * ordered[-1] if ordered else float("nan")
        answers = ", ".join(f"{status} x{count}" for status, count in sorted(figures.statuses.items()))
        print(f"  {kind:<34} {figures.sent:5d}  {answers:<26} {figures.busy_refusals:6d} {figures.hung_up:7d} "
              f"{figures.cut_at_end:4d} {len(figures.transport_errors):9d} {len(figures.unexpected):10d} "
              f"{p50:8.1f} {worst:8.1f}")
        for problem in sorted(set(figures.unexpected + figures.transport_errors))[:3]:
            count = figures.unexpected.count(problem) + figures.transport_errors.count(problem)
            print(f"      {problem} (x{count})")


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
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of load with the uploaders (0: no upload phase)")
    parser.add_argument("--baseline-seconds", type=float, default=None,
                        help="seconds of mixed load alone (default: 15, or less when both phases are shorter)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--uploaders", type=int, default=4)
    parser.add_argument("--rows", type=int, default=4096, help="uploaded tensor rows (4096 x 4096 f32 = 64 MiB)")
    parser.add_argument("--columns", type=int, default=4096)
    parser.add_argument("--settle-seconds", type=float, default=5.0)
    parser.add_argument("--attack-seconds", type=float, default=30.0, help="seconds of the attack mix (0: none)")
    parser.add_argument("--attack-rate", type=float, default=5.0, help="hostile requests sent a second")
    parser.add_argument("--attack-concurrency", type=int, default=16, help="hostile requests in flight at most")
    parser.add_argument("--trickle-connections", type=int, default=32, help="connections trickling a head")
    parser.add_argument("--trickle-byte-seconds", type=float, default=0.25, help="seconds between trickled bytes")
    parser.add_argument("--attack-settle-seconds", type=float, default=10.0,
                        help="seconds the server is left alone after the attack before RSS is measured")
    args = parser.parse_args()
    baseline_seconds = (args.baseline_seconds if args.baseline_seconds is not None
                        else min(15.0, max(args.duration, args.attack_seconds)))
    uvloop.install()
    body = upload_body(args.rows, args.columns)
    hostile = [BUILDERS[index % len(BUILDERS)](index)
               for index in range(int(args.attack_rate * args.attack_seconds) + 1)] if args.attack_seconds else []
    print(f"nproc={os.cpu_count()} load average {' '.join(f'{load:.2f}' for load in os.getloadavg())} "
          f"connections={args.connections} uploaders={args.uploaders} "
          f"tensor={args.rows}x{args.columns} f32 ({args.rows * args.columns * 4 / MiB:.0f} MiB) "
          f"baseline={baseline_seconds:g} s attack={args.attack_seconds:g} s (rate {args.attack_rate:g}/s, "
          f"{args.trickle_connections} trickling) duration={args.duration:g} s")
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="nibble-load-") as temp_dir, \
            start_server({"NIBBLE_TEMP_DIR": temp_dir}, uvicorn_options=UVICORN_LIMITS) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        server = server_process(base_url)
        sampler = RssSampler(server)
        # Warm-up: every route once (and one small quantize), so lazy imports are in the idle figure.
        asyncio.run(run_phase(host, int(port), len(MIX), 1.0, 1, upload_body(256, 256)))
        if hostile:
            asyncio.run(warm_hostile(host, int(port)))
        idle = settled_rss(sampler, 3.0)
        sampler.start()
        baseline, baseline_wall = asyncio.run(run_phase(host, int(port), args.connections, baseline_seconds, 0, None))
        print_phase("baseline (mixed load alone)", baseline, baseline_wall)
        baseline_p99 = baseline["plan"].percentile_ms(0.99)
        plan_failures = len(baseline["plan"].failures)
        if hostile:
            attacked, attacked_wall, attack, attack_wall = asyncio.run(run_attack_phase(
                host, int(port), args.connections, args.attack_seconds, hostile, args.attack_rate,
                args.attack_concurrency, args.trickle_connections, args.trickle_byte_seconds))
            after_attack = settled_rss(sampler, args.attack_settle_seconds)
            attack_peak, sampler.peak = sampler.peak, 0
            left_after_attack = list(Path(temp_dir).iterdir())
            print_phase("under attack (mixed load beside the attack mix)", attacked, attacked_wall)
            print_attack(attack, attack_wall, args.trickle_connections)
            print(f"RSS idle {idle / MiB:.0f} MiB, peak (baseline and attack) {attack_peak / MiB:.0f} MiB, "
                  f"after the attack (+{args.attack_settle_seconds:g} s) {after_attack / MiB:.0f} MiB; "
                  f"temp files left behind: {len(left_after_attack)}")
            attack_ratio = attacked["plan"].percentile_ms(0.99) / baseline_p99
            attack_plan_failures = len(attacked["plan"].failures)
            attack_other = sum(len(attacked[label].failures) for label in attacked if label != "plan")
            unexpected = sum(len(figures.unexpected) for figures in attack.values())
            checks += [
                (f"plan p99 under attack / baseline = {attack_ratio:.2f} (<= {TARGET_P99_RATIO:g})",
                 attack_ratio <= TARGET_P99_RATIO),
                (f"failed plan requests under attack = {attack_plan_failures} (== 0)", attack_plan_failures == 0),
                (f"other failed normal requests under attack = {attack_other} (== 0)", attack_other == 0),
                (f"hostile answers other than their own (or 503 + Retry-After) = {unexpected} (== 0)",
                 unexpected == 0),
                (f"RSS after the attack / idle = {after_attack / idle:.3f} (<= {TARGET_SETTLED_RSS_RATIO:.2f})",
                 after_attack <= TARGET_SETTLED_RSS_RATIO * idle),
            ]
        if args.duration > 0:
            loaded, loaded_wall = asyncio.run(run_phase(host, int(port), args.connections, args.duration,
                                                        args.uploaders, body))
            after = settled_rss(sampler, args.settle_seconds)
        sampler.stop()
        left_behind = list(Path(temp_dir).iterdir())
    if args.duration > 0:
        print_phase("under load (with uploads)", loaded, loaded_wall)
        plan_ratio = loaded["plan"].percentile_ms(0.99) / baseline_p99
        plan_failures += len(loaded["plan"].failures)
        other_failures = sum(len(loaded[label].failures) for label in loaded if label not in ("plan",))
        all_requests = sum(len(f.latencies) + len(f.failures) + f.refused_with_retry_after for f in loaded.values())
        refused = loaded["quantize"].refused_with_retry_after
        print(f"failures under load: {other_failures + len(loaded['plan'].failures)} of {all_requests} "
              f"({100 * (other_failures + len(loaded['plan'].failures)) / max(all_requests, 1):.3f} %), "
              f"quantize 503 with Retry-After: {refused} ({100 * refused / max(all_requests, 1):.3f} %)")
        print(f"RSS idle {idle / MiB:.0f} MiB, peak under load {sampler.peak / MiB:.0f} MiB, "
              f"after load (+{args.settle_seconds:g} s) {after / MiB:.0f} MiB")
        print(f"temp files left behind after the load: {len(left_behind)}")
        checks += [
            (f"plan p99 under load / baseline = {plan_ratio:.2f} (<= {TARGET_P99_RATIO:g})",
             plan_ratio <= TARGET_P99_RATIO),
            (f"failed plan requests (baseline and load) = {plan_failures} (== 0)", plan_failures == 0),
            (f"other failures (anything but quantize 503 + Retry-After) = {other_failures} (== 0)",
             other_failures == 0),
            (f"peak RSS under load = {sampler.peak / GiB:.2f} GiB (<= 1.5 GiB)", sampler.peak <= TARGET_PEAK_RSS_BYTES),
            (f"RSS after load / idle = {after / idle:.3f} (<= {TARGET_SETTLED_RSS_RATIO:.2f})",
             after <= TARGET_SETTLED_RSS_RATIO * idle),
            (f"uploads completed under load = {len(loaded['quantize'].latencies)} (> 0)",
             len(loaded["quantize"].latencies) > 0),
        ]
    print(f"load average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    for text, ok in checks:
        print(f"{verdict(ok)}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
