"""A real uvicorn server of an ASGI app in a thread of the test process, for protocol-level tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.e2e.conftest import free_port


@contextmanager
def uvicorn_in_thread(app: Any, **config: Any) -> Iterator[int]:
    """Serve `app` on a free 127.0.0.1 port (uvicorn.Config `config` on top of quiet defaults); yield the port.

    The server is asked to exit when the block ends.
    """
    port = free_port()
    settings: dict[str, Any] = {"lifespan": "off", "log_level": "warning", **config}
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **settings))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
