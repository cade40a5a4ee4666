"""What the security suite observes: effects, never what the model said.

- `Effects` snapshots the places an attack could leave a trace (files under chosen roots, the
  rows of the stores, the kernel's process table) and reports every difference;
- `listener` is a TCP server on 127.0.0.1 that records every connection and byte it receives,
  standing for an attacker's collection point;
- `kernel` is a real Kernel booted on a private LLMOS_HOME with the adversarial CPU mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (not following links) with a digest of its content."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            p = Path(dirpath, name)
            try:
                data = p.read_bytes() if p.is_file() and not p.is_symlink() else b"<special>"
            except OSError:
                data = b"<unreadable>"
            out[str(p)] = hashlib.sha256(data).hexdigest()
    return out


def _rows(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if not r[0].startswith(("sqlite_", "_")) and "fts" not in r[0]
        ]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


@dataclass
class Effects:
    """A before/after picture of what an attack could change."""

    roots: list[Path]
    stores: list[Path]
    before_files: dict[str, str] = field(default_factory=dict)
    before_rows: dict[str, dict[str, int]] = field(default_factory=dict)

    def snapshot(self) -> None:
        self.before_files = {k: v for r in self.roots for k, v in _tree(r).items()}
        self.before_rows = {str(s): _rows(s) for s in self.stores}

    def file_changes(self) -> list[str]:
        after = {k: v for r in self.roots for k, v in _tree(r).items()}
        changed = [f"+{k}" for k in after.keys() - self.before_files.keys()]
        changed += [f"-{k}" for k in self.before_files.keys() - after.keys()]
        changed += [
            f"~{k}"
            for k in after.keys() & self.before_files.keys()
            if after[k] != self.before_files[k]
        ]
        return sorted(changed)

    def row_changes(self) -> dict[str, dict[str, tuple[int, int]]]:
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for s in self.stores:
            before, after = self.before_rows.get(str(s), {}), _rows(s)
            diff = {t: (before.get(t, 0), n) for t, n in after.items() if before.get(t, 0) != n}
            if diff:
                out[str(s)] = diff
        return out


class Listener:
    """An attacker's collection point on 127.0.0.1: records whatever reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.received: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1.0)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                self.received.append(data)
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LLMOS_HOME", str(h))
    return h


@pytest.fixture
def kernel(home: Path) -> Iterator[Kernel]:
    k = Kernel(boot())
    yield k
    k.shutdown()
    k.system.close()
