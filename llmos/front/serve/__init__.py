"""`llmos serve`: the kernel as a network service for many users (FastAPI + uvicorn).

Reading order: `service` (what one running service holds), `auth` (bearer tokens to a kernel
caller), `errors` (kernel errors as HTTP statuses, one line each), `rest` (the REST API over
the kernel's operation table), `sse` (process output as resumable Server-Sent Events), `ops`
and `metrics` (usage, logs, Prometheus), `openai_api` (the OpenAI-compatible `/v1`),
`mcp_http` (programs as MCP tools over HTTP), `app` (the FastAPI application: middleware,
routers), `main` (uvicorn, signals, the `llmos serve` command).

Every route reaches the kernel only through `llmos.kernel.api`, as the caller its token names.
"""
