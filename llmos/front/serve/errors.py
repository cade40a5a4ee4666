"""Kernel errors as HTTP answers: one status per kind, one line of text, never a traceback.

The body has the OpenAI error shape, so the official clients raise their own typed errors:
`{"error": {"message": "<one line>", "type": "<LlmosError.kind>", "code": <exit code>}}`.

    kind                                  status
    auth (missing/unknown/revoked token)  401 (+ WWW-Authenticate: Bearer)
    access, policy                        403
    no_such_process (also another        404 (another owner's pid answers exactly like a
      owner's pid), not_found (a run,         pid that does not exist)
      memory, page or shared segment)
    protocol, input, program, output,     422
      step_limit, context_overflow, model, budget
    quota (a per-user limit)              429 (+ Retry-After: the error's own wait, e.g. to
                                          00:00 UTC for tokens_per_day, else a default)
    admission (the table is full),        503 (+ Retry-After)
      draining
    backend (a remote CPU failed)         502
    anything else                         500 (its one line; the traceback goes to the log)

What this does not do: decide anything; it only translates.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from llmos.errors import LlmosError

STATUS = {
    "auth": 401,
    "access": 403,
    "policy": 403,
    "no_such_process": 404,
    "not_found": 404,
    "no_such_program": 404,
    "protocol": 422,
    "input": 422,
    "budget": 422,
    "program": 422,
    "output": 422,
    "step_limit": 422,
    "context_overflow": 422,
    "model": 422,
    "quota": 429,
    "admission": 503,
    "draining": 503,
    "backend": 502,
}
RETRY_AFTER_S = {"quota": 60, "admission": 5, "draining": 30}


class HTTPError(LlmosError):
    """An error of the HTTP layer itself (a route that does not exist, a body too large)."""

    def __init__(self, status: int, message: str, kind: str = "protocol") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"


def body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": one_line(message), "type": kind, "code": code}}


def response(exc: LlmosError, retry_after: float | None = None) -> JSONResponse:
    """The HTTP answer for `exc`."""
    kind = exc.kind
    status = exc.status if isinstance(exc, HTTPError) else STATUS.get(kind, 500)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    wait = retry_after if retry_after is not None else getattr(exc, "retry_after_s", None)
    if wait is None:
        wait = RETRY_AFTER_S.get(kind)
    if status in (429, 503) and wait is not None:
        headers["Retry-After"] = str(max(1, round(wait)))
    return JSONResponse(body(str(exc), kind, exc.exit_code), status_code=status, headers=headers)


def plain(status: int, message: str, kind: str = "protocol") -> JSONResponse:
    return response(HTTPError(status, message, kind))
