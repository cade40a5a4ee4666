"""The faulty CPU: a test double that wraps a real CPU and dies in the middle of a reply.

For failover tests and benchmarks only: `FaultyCPU(inner, after)` passes everything through to
`inner`, except that the first reply to reach its `after`-th streamed chunk breaks off there
with a BackendError, as a CPU whose server or engine went away would. `died_at` is when
(time.perf_counter()), None until then. It dies once; later replies stream normally. The
wrapped CPU is real, so what the kernel recovers (a KV checkpoint, a re-prefill) is real.

It never ships as a user's CPU: `llmos models` does not list it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from llmos.errors import BackendError
from llmos.hw.cpu.base import CPU, Chunk, GenRequest, Message


class FaultyCPU(CPU):
    """`inner`, whose first reply breaks off after `after` chunks (see the module note)."""

    def __init__(self, inner: CPU, after: int) -> None:
        self.inner, self.after, self.name = inner, after, inner.name
        self.capabilities = inner.capabilities
        self.died_at: float | None = None

    @property
    def died(self) -> bool:
        return self.died_at is not None

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    @property
    def kv_model(self) -> str | None:
        return self.inner.kv_model

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def count_messages(self, messages: list[Message]) -> int:
        return self.inner.count_messages(messages)

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        stream = self.inner.generate(request)
        try:
            for n, chunk in enumerate(stream, 1):
                yield chunk
                if n >= self.after and self.died_at is None:
                    self.died_at = time.perf_counter()
                    raise BackendError(f"{self.name} went away")
        finally:
            close = getattr(stream, "close", None)  # a generator: end the inner reply too
            if close is not None:
                close()
