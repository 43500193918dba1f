"""A real uvicorn server in a subprocess on a free port, shared by the end-to-end tests.

`live_server` (module scope) yields the base URL; `start_server` is the
function behind it, for tests and benchmarks that need their own settings
(pass ``NIBBLE_*`` variables in `env`).  The server is stopped with SIGTERM,
then killed if it does not exit within 10 s.  `browser` (module scope) is
Debian's headless Chromium driven by Playwright, for the page's tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import SERVE_LOOP

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless (tests that take it are skipped where it or Playwright is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def start_server(env: Mapping[str, str] | None = None, startup_timeout_seconds: float = 60.0,
                 log_path: Path | None = None, uvicorn_options: Sequence[str] = (),
                 guarded: bool = True) -> Iterator[str]:
    """Start stock ``uvicorn app.main:app`` on a free port; yield its base URL once /healthz answers.

    `uvicorn_options` are more of uvicorn's own command-line options (``--limit-concurrency 8``, ...).  The
    server runs on nibble's guarded event loop (``--loop app.connections:GuardedEventLoop``), as ``make run``
    starts it, unless `guarded` is false (bare ``uvicorn app.main:app``).
    """
    port = free_port()
    environment = {**os.environ, **(env or {})}
    log = (log_path or Path(os.devnull)).open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", *(("--loop", SERVE_LOOP) if guarded else ()), *uvicorn_options],
        cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with code {process.returncode} before serving")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not answer /healthz within {startup_timeout_seconds} s")
            time.sleep(0.1)
        yield base_url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    """The base URL of a real uvicorn server under default settings, for one test module."""
    with start_server() as base_url:
        yield base_url
