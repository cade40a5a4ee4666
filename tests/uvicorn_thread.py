"""An ASGI app served by uvicorn in a thread of the test process, on 127.0.0.1.

For tests that need the service's real HTTP stack (the console's browser, the shell's `--url`)
while keeping its kernel in the test's hands. `start()` returns once uvicorn accepts
connections; `stop()` asks it to exit and joins its thread (a graceful shutdown of at most 1 s).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

import uvicorn


class UvicornThread:
    def __init__(self, app: Any, port: int, *, lifespan: Literal["on", "off"] = "on") -> None:
        self.app = app
        self.port = port
        self.lifespan = lifespan
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan=self.lifespan,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
