"""A real uvicorn server of an ASGI app in a thread of the test process, and a port that never answers, for
protocol-level tests."""

from __future__ import annotations

import socket
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


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose SYNs go unanswered, as behind a firewall that drops them: a listening socket that never
    accepts, its queue of one filled."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()
