"""A process's output as Server-Sent Events that a client can resume.

`GET /api/processes/{pid}/events` answers `text/event-stream`: one `output` event per batch of
output pieces, whose `id` is the number of pieces delivered so far, then one `end` event with
how the process ended. A client that loses the stream reconnects with `Last-Event-ID: <id>`
(or `?after=<id>`) and gets exactly the pieces after it: none missing, none repeated, since
pieces are never rewritten once a follower can see them.

    id: 12
    event: output
    data: {"text": "..."}

    event: end
    data: {"exit_status": "ok", "error": null, "process": {...}}

Invariants: a stream is read in its own worker thread (blocking on the process's condition, so
a slow client holds only its own thread: no head-of-line blocking); a client that disconnects
ends its stream, never its process (`DELETE` or `kill` ends a process).

What this does not do: decide who may follow (the kernel's `follow` checks ownership).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llmos.errors import InputError
from llmos.kernel import api
from llmos.kernel.core import Kernel


def resume_point(last_event_id: str | None, after: int | None) -> int:
    """Where a (re)connecting client starts: after the last event it saw."""
    if last_event_id not in (None, ""):
        try:
            point = int(str(last_event_id).strip())
        except ValueError:
            raise InputError(f"Last-Event-ID must be an event id, got {last_event_id!r}") from None
    else:
        point = after or 0
    if point < 0:
        raise InputError(f"an event id is never negative, got {point}")
    return point


def frame(data: dict[str, Any], event: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream(kernel: Kernel, caller: api.Caller, pid: int, start: int) -> Iterator[str]:
    """The event stream of process `pid` from piece `start` (ownership checked first, so an
    unknown or foreign pid is a 404 before any byte is sent)."""
    proc = api.owned(kernel, caller, pid)
    events = api.follow_process(proc, caller, start)
    return _frames(events)


def _frames(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    yield ": stream\n\n"  # headers and a first byte now, so the client knows it is connected
    for event in events:
        if "text" in event:
            yield frame({"text": event["text"]}, "output", event["next"])
        elif event.get("done"):
            yield frame(
                {
                    "exit_status": event["exit_status"],
                    "error": event["error"],
                    "process": event["process"],
                },
                "end",
            )
            return
