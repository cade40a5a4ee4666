"""Feedback on long work: what a process is doing before its first token, on stderr.

A follower (`llmos run` in the foreground, `llmos logs -f`) gets the process's notices and
progress events (`llmos.kernel.api.follow_process`) and hands them to a `ProgressLine`:

- a notice (a page-out, say) is always one line on stderr, `llmos: <notice>`, as it happens,
  so it comes before the answer it concerns;
- progress (reading a large input, paging out, the CPU's prefill) is one line rewritten in
  place, `llmos: prefill 1024/4096 prompt tokens (25%)`, only when stderr is a terminal, and
  erased before the answer's first text, so it never mixes with stdout or lands in a log file.

What this module does not do: decide what is worth saying (the kernel does) or print answers.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

ERASE = "\r\x1b[K"  # carriage return, erase to the end of the line


class ProgressLine:
    """One rewritable status line on a terminal's stderr, and one-line notices anywhere."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.shown: str | None = None

    def event(self, event: dict[str, Any]) -> None:
        """A follower's `notice` or `progress` event."""
        if "notice" in event:
            self.notice(str(event["notice"]))
        if "progress" in event:
            self.show(event["progress"])

    def show(self, text: str | None) -> None:
        if not self.live or text == self.shown:
            return
        self.stream.write(ERASE + (f"llmos: {text}" if text else ""))
        self.stream.flush()
        self.shown = text

    def notice(self, text: str) -> None:
        shown = self.shown
        self.clear()
        self.stream.write(f"llmos: {text}\n")
        self.stream.flush()
        self.show(shown)

    def clear(self) -> None:
        """Erase the line (before any other output)."""
        if self.shown is not None:
            self.stream.write(ERASE)
            self.stream.flush()
            self.shown = None
