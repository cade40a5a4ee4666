"""The FastAPI application of `llmos serve`: middleware, error handlers and the routers.

`create_app(service)` builds the application around one `Service`. Routers: the REST API
(`rest`), usage, logs and `/metrics` (`ops`, `metrics`), the OpenAI-compatible `/v1`
(`openai_api`), the web console at `/console` (`console`, with its static files), MCP over
streamable HTTP at `/mcp` (`mcp_http`, whose transport runs for the app's lifespan), health
(`/healthz`: the process answers; `/readyz`: the kernel is up and not draining). Every answer
that is an error has the one-line OpenAI error shape (`errors`).

Middleware (outermost first):
- access log and request metrics: one structured JSON line per request on the `llmos.access`
  logger (method, path, status, user, duration), never a token or a body; and the request's
  latency by route template and status into the app's metrics (`metrics`);
- body limit: a request body over params.SERVE_MAX_BODY_BYTES is refused with 413 before it is
  read whole (by Content-Length, and by counting a body sent without one).

Invariants: no route answers a traceback; an unhandled exception is a 500 with one line and its
traceback goes to the server's log.

What this does not do: bind sockets or handle signals (see `main`).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos import params
from llmos.errors import LlmosError
from llmos.front.serve import console, errors, mcp_http, metrics, openai_api, ops, rest
from llmos.front.serve.service import Service

access_log = logging.getLogger("llmos.access")
server_log = logging.getLogger("llmos.serve")


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One worker thread per blocking call or open stream: the default (40) would make the
        # 41st streaming client wait behind the others.
        anyio.to_thread.current_default_thread_limiter().total_tokens = params.SERVE_THREADS
        async with mcp_endpoint.running():  # the MCP transport's task group
            yield

    app = FastAPI(
        title="llmos",
        summary="The LLM computer as a time-shared service: programs run as processes.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics.Metrics(service)  # this app's own Prometheus registry
    app.include_router(rest.router)
    app.include_router(ops.router)  # usage, logs, /metrics
    app.include_router(openai_api.router)  # /v1: models, chat completions, embeddings
    app.include_router(console.router)  # /console: the web console's pages and data
    app.mount(f"{console.PATH}/static", console.static, name="console-static")
    mcp_endpoint = mcp_http.MCPEndpoint(service.kernel)
    app.router.routes.append(
        Route("/mcp", endpoint=mcp_endpoint, methods=["GET", "POST", "DELETE"])
    )
    _health(app)
    _handlers(app)
    app.add_middleware(BodyLimit, limit=params.SERVE_MAX_BODY_BYTES)
    app.add_middleware(AccessLog, metrics=app.state.metrics)
    return app


def _health(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=True)
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        service: Service = request.app.state.service
        ready = service.ready and not service.draining
        body = {"ready": ready, "draining": service.draining}
        return JSONResponse(body, status_code=200 if ready else 503)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LlmosError)
    async def llmos_error(request: Request, exc: LlmosError) -> JSONResponse:
        return errors.response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return errors.plain(422, describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "protocol"
        return errors.plain(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        server_log.error(
            "unhandled error on %s %s\n%s",
            request.method,
            request.url.path,
            "".join(traceback.format_exception(exc)),
        )
        return errors.plain(500, f"internal error: {type(exc).__name__}: {exc}", "error")


def describe_validation(exc: RequestValidationError) -> str:
    """The first problem of a request, as one line naming where it is."""
    problems = exc.errors()
    if not problems:
        return "invalid request"
    err = problems[0]
    loc = [str(p) for p in err.get("loc", ())]
    if loc and loc[0] == "body" and err.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    kind = err.get("type", "")
    if kind == "missing":
        return f"'{where or 'body'}' is required"
    if kind == "extra_forbidden":
        return f"unknown field '{where}'"
    return f"'{where or 'body'}': {err.get('msg', 'invalid')}"


class BodyLimit:
    """413 for a request body larger than `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit, scope, receive, send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True  # answer now; the app sees a client that went away
                    await _too_large(self.limit, scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, sending)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    message = f"request body is larger than {limit} bytes"
    await errors.plain(413, message, "too_large")(scope, receive, send)


class AccessLog:
    """One JSON line per request on `llmos.access`, and its latency into the app's metrics."""

    def __init__(self, app: ASGIApp, metrics: metrics.Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.monotonic() - started
            self.metrics.request(metrics.route_of(scope), str(scope.get("method")), status, seconds)
            state = scope.get("state") or {}
            client = scope.get("client") or ("", 0)
            access_log.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "user": state.get("user"),
                        "client": client[0],
                        "ms": round(seconds * 1000, 1),
                    }
                )
            )
