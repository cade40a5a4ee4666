"""What one running `llmos serve` holds: its kernel, its user store and its state.

One `Service` per server process. Routes get it from the application's state
(`app.state.service`); tests build one around a kernel of their own.

Invariants:
- `draining` only goes from False to True: once SIGTERM arrives no new process is spawned
  (503), while open streams may finish for params.SERVE_DRAIN_S.
- `ready` is True only once the kernel and its default CPU are up and until draining starts.

What this does not do: authenticate (see `auth`), or run the HTTP server (see `main`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from llmos.kernel.core import Kernel
from llmos.store.users import UserStore


@dataclass
class Service:
    kernel: Kernel
    users: UserStore
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    draining: bool = False
    metrics_auth: bool = False  # `/metrics` needs an admin's token (`--metrics-auth`)
    lost: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_draining(self) -> None:
        with self._lock:
            self.draining = True
            self.ready = False
