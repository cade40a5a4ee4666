"""A reply's text as its tokens arrive: UTF-8 decoded across token boundaries, cut at a stop
string, and held back where it could still become one.

A token is a few bytes, not always a whole character, and a stop string may span tokens, so
the embedded CPU cannot stream each token's text as it comes. `ReplyText` decodes the bytes
incrementally (a character split between two tokens is emitted once whole), finds the first
stop string in the text not yet emitted (the reply ends before it), and `take` emits only what
no later token can turn into a stop string: a tail that is the beginning of one waits.

Invariants:
- The text emitted, joined, is the reply's decoded text up to its first stop string; a stop
  string itself is never emitted.
- `take(final=True)` emits everything left (an unfinished character as U+FFFD).

What this module does not do: sample or end the reply (the engine thread does), or know about
chunks or callers.
"""

from __future__ import annotations

import codecs


class ReplyText:
    """One reply's text not yet emitted, and the stop strings that end it. `held` may start
    with text the caller has not received from earlier (a moved reply's)."""

    def __init__(self, stop: list[str], held: str = "") -> None:
        self.stop = list(stop)
        self.held = held
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, piece: bytes) -> bool:
        """Append a token's bytes; True if the text now holds a stop string (it is cut there,
        and the reply ends)."""
        self.held += self._decoder.decode(piece)
        for stop in self.stop:
            at = self.held.find(stop) if stop else -1
            if at >= 0:
                self.held = self.held[:at]
                return True
        return False

    def take(self, *, final: bool) -> str:
        """The text to emit now: all of it when `final`, else all but a tail that could still
        become a stop string."""
        if final:
            self.held += self._decoder.decode(b"", final=True)
            keep = 0
        else:
            keep = max(
                (n for s in self.stop for n in range(1, len(s)) if self.held.endswith(s[:n])),
                default=0,
            )
        emit = self.held[: len(self.held) - keep]
        self.held = self.held[len(emit) :]
        return emit
