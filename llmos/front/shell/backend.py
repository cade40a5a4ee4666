"""Where the shell's commands go: one interface, two implementations.

`Local` calls the kernel's operation table (`llmos.kernel.api`) in this process as the OS user
(a `Caller`, like the CLI and the daemon); `Remote` sends the same operations to a
`llmos serve` over its REST API (`/api/...`, bearer token from `LLMOS_TOKEN`) and reads a
process's output as its resumable SSE stream.

    exec(program, inputs, stdin)  -> pid          run an installed program
    chat(messages)                -> pid          one conversation turn, as a `chat` process
    follow(pid)                   -> events       {"text": ...}..., then {"done": True,
                                                  "exit_status", "error"}
    act(action, pid)              -> reply        kill | stop | cont | approve | deny
    answer(pid, text), get(pid), ps(all), top(), programs()

Invariants: every failure is an `LlmosError` with one line (a remote error keeps the server's
message and exit code); a service that cannot be reached is `ServiceUnreachableError`, and the
next call simply tries again (`Remote.lost` says whether the last one failed, so the shell can
say it reconnected); a cut output stream is resumed after the last event seen, so no output is
lost or repeated.

What this does not do: parse command lines, keep jobs, or print anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Protocol

import httpx2

from llmos import params
from llmos.errors import LlmosError, ServiceUnreachableError
from llmos.kernel import api
from llmos.kernel.core import Kernel

ACTIONS = ("kill", "stop", "cont", "approve", "deny")


class Backend(Protocol):
    where: str  # "this machine" or the service's URL, for the banner and messages
    model: str  # the conversation's CPU

    def exec(self, program: str, inputs: dict[str, Any], stdin: str | None) -> int: ...
    def chat(self, messages: list[dict[str, str]]) -> int: ...
    def follow(self, pid: int) -> Iterator[dict[str, Any]]: ...
    def act(self, action: str, pid: int) -> dict[str, Any]: ...
    def answer(self, pid: int, text: str) -> dict[str, Any]: ...
    def get(self, pid: int) -> dict[str, Any]: ...
    def ps(self, all: bool = False) -> list[dict[str, Any]]: ...
    def top(self) -> dict[str, Any]: ...
    def programs(self) -> list[str]: ...
    def close(self) -> None: ...


class Local:
    """The kernel in this process. `model`, if given, is the CPU programs run on too."""

    where = "this machine"

    def __init__(self, kernel: Kernel, caller: api.Caller, model: str | None = None) -> None:
        self.kernel = kernel
        self.caller = caller
        self.program_model = model
        self.model = model or kernel.system.config.default_model

    def _call(self, op: str, **payload: Any) -> Any:
        return api.call(self.kernel, self.caller, op, payload)

    def exec(self, program: str, inputs: dict[str, Any], stdin: str | None) -> int:
        payload: dict[str, Any] = {"program": program, "inputs": inputs, "stdin": stdin}
        if self.program_model is not None:
            payload["model"] = self.program_model
        return int(self._call("exec", **payload)["pid"])

    def chat(self, messages: list[dict[str, str]]) -> int:
        return int(self._call("chat", model=self.model, messages=messages)["pid"])

    def follow(self, pid: int) -> Iterator[dict[str, Any]]:
        events: Iterator[dict[str, Any]] = self._call("follow", pid=pid)
        return events

    def act(self, action: str, pid: int) -> dict[str, Any]:
        reply: dict[str, Any] = self._call(action, pid=pid)
        return reply

    def answer(self, pid: int, text: str) -> dict[str, Any]:
        reply: dict[str, Any] = self._call("answer", pid=pid, text=text)
        return reply

    def get(self, pid: int) -> dict[str, Any]:
        reply: dict[str, Any] = self._call("get", pid=pid)
        return reply

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        return list(self._call("ps", all=all)["processes"])

    def top(self) -> dict[str, Any]:
        reply: dict[str, Any] = self._call("top")
        return reply

    def programs(self) -> list[str]:
        return [p["name"] for p in self._call("programs.list")["programs"]]

    def close(self) -> None:
        self.kernel.shutdown()
        self.kernel.system.close()


class Remote:
    """A `llmos serve` at `url`, as the user `token` names."""

    def __init__(self, url: str, token: str, model: str | None = None) -> None:
        self.where = url.rstrip("/")
        self.model = model or params.SHELL_REMOTE_MODEL
        self.program_model = model
        self.lost = False  # the last call could not reach the service
        self.http = httpx2.Client(
            base_url=self.where,
            headers={"Authorization": f"Bearer {token}"},
            timeout=params.SHELL_HTTP_TIMEOUT_S,
        )

    def _send(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx2.TransportError as exc:
            self.lost = True
            raise ServiceUnreachableError(f"cannot reach {self.where}: {_reason(exc)}") from None
        self.lost = False
        if r.status_code >= 400:
            raise _error(r.status_code, r.text)
        return r.json()

    def exec(self, program: str, inputs: dict[str, Any], stdin: str | None) -> int:
        body: dict[str, Any] = {"program": program, "inputs": inputs, "stdin": stdin}
        if self.program_model is not None:
            body["model"] = self.program_model
        return int(self._send("POST", "/api/processes", json=body)["pid"])

    def chat(self, messages: list[dict[str, str]]) -> int:
        body = {"model": self.model, "messages": messages}
        return int(self._send("POST", "/api/chat", json=body)["pid"])

    def follow(self, pid: int) -> Iterator[dict[str, Any]]:
        """The process's SSE stream as events; resumed after the last event id if it is cut."""
        after = 0
        tries = 0
        while True:
            try:
                with self.http.stream(
                    "GET",
                    f"/api/processes/{pid}/events",
                    params={"after": after},
                    timeout=httpx2.Timeout(params.SHELL_HTTP_TIMEOUT_S, read=None),
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise _error(r.status_code, r.text)
                    self.lost = False
                    for event, data, event_id in _sse(r.iter_lines()):
                        tries = 0
                        if event == "output":
                            after = event_id if event_id is not None else after
                            yield {"text": data["text"], "next": after}
                        elif event == "end":
                            yield {"done": True, **data}
                            return
            except httpx2.TransportError as exc:
                self.lost = True
                tries += 1
                if tries > params.SHELL_RECONNECT_TRIES:
                    raise ServiceUnreachableError(
                        f"lost {self.where} while following pid {pid}: {_reason(exc)}"
                    ) from None
                time.sleep(params.SHELL_RECONNECT_S)
                continue
            # the stream ended without an end event (the server is going away): resume
            tries += 1
            if tries > params.SHELL_RECONNECT_TRIES:
                raise ServiceUnreachableError(f"lost {self.where} while following pid {pid}")
            time.sleep(params.SHELL_RECONNECT_S)

    def act(self, action: str, pid: int) -> dict[str, Any]:
        if action == "kill":
            reply: dict[str, Any] = self._send("DELETE", f"/api/processes/{pid}")
        else:
            reply = self._send("POST", f"/api/processes/{pid}/{action}")
        return reply

    def answer(self, pid: int, text: str) -> dict[str, Any]:
        reply: dict[str, Any] = self._send(
            "POST", f"/api/processes/{pid}/answer", json={"text": text}
        )
        return reply

    def get(self, pid: int) -> dict[str, Any]:
        reply: dict[str, Any] = self._send("GET", f"/api/processes/{pid}")
        return reply

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        reply = self._send("GET", "/api/processes", params={"all": "true" if all else "false"})
        return list(reply["processes"])

    def top(self) -> dict[str, Any]:
        reply: dict[str, Any] = self._send("GET", "/api/top")
        return reply

    def programs(self) -> list[str]:
        return [p["name"] for p in self._send("GET", "/api/programs")["programs"]]

    def close(self) -> None:
        self.http.close()


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _error(status: int, body: str) -> LlmosError:
    """The service's error answer as one LlmosError with its message and exit code."""
    try:
        err = json.loads(body)["error"]
        message, code = str(err["message"]), int(err.get("code") or 1)
    except (ValueError, KeyError, TypeError):
        message, code = (body.strip().splitlines() or [f"HTTP {status}"])[0], 1
    exc = LlmosError(message)
    exc.exit_code = code
    return exc


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any], int | None]]:
    """(event, data, id) for each event of a text/event-stream; comments skipped."""
    event, data, event_id = "message", "", None
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data), event_id
            event, data, event_id = "message", "", None
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data += value
            elif key == "id" and value.isdigit():
                event_id = int(value)
