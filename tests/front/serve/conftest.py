"""A live `llmos serve` on loopback for the service's tests.

`Server.start(home)` runs the real `llmos serve` console script in a subprocess on a free port,
with users `alice` and `bob` (plain) and `root` (admin) added through `llmos user add`, and
waits for `/readyz`. `server.client(user)` is an `httpx2.Client` with that user's bearer token.
`server.kill()` sends SIGKILL (a crash); `server.stop()` sends SIGTERM and waits.

Fixtures: `server` (one per test module: the model loads once) and `fresh_server` (one per
test, for tests that kill or restart it). Programs: `summarize` (text) is installed for alice.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import _SCRUBBED_ENV, llmos_command, run_llmos

START_TIMEOUT_S = 120.0
SUMMARIZE = """---
description: Summarize text in one sentence.
config:
  temperature: 0
  maxOutputTokens: 48
---
Summarize in one sentence: {{input}}
"""


def sse_events(raw: str) -> list[dict[str, Any]]:
    """An SSE body as its events (`id`, `event`, `data` parsed as JSON); comments skipped."""
    out = []
    for block in raw.split("\n\n"):
        ev: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            ev[key] = value[1:] if value.startswith(" ") else value
        if "data" in ev:
            ev["data"] = json.loads(ev["data"])
            out.append(ev)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    home: Path
    port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["LLMOS_HOME"] = str(self.home)
        return env

    def add_user(self, name: str, admin: bool = False) -> str:
        args = ["user", "add", name] + (["--admin"] if admin else [])
        done = run_llmos(*args, home=self.home)
        assert done.returncode == 0, done.stderr
        self.tokens[name] = done.stdout.strip()
        return self.tokens[name]

    def start(self, *extra: str) -> Server:
        if not self.port:
            self.port = free_port()
        self.log = self.home / f"serve-{self.port}-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*llmos_command(), "serve", "--port", str(self.port), *extra],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llmos serve exited: {self.output()}")
            try:
                if httpx2.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"llmos serve did not get ready: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def client(self, user: str | None = None, **kw: object) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=120.0, **kw)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def _server(home: Path) -> Server:
    server = Server(home)
    server.add_user("alice")
    server.add_user("bob")
    server.add_user("root", admin=True)
    return server


def install_summarize(server: Server, user: str = "alice") -> None:
    with server.client(user) as c:
        r = c.put("/api/programs/summarize", json={"source": SUMMARIZE})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = _server(tmp_path_factory.mktemp("serve-home"))
    s.start()
    install_summarize(s)
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    s = _server(tmp_path / "home")
    try:
        yield s
    finally:
        s.kill()
