"""The service's operations side over HTTP: usage, logs and Prometheus metrics.

    GET /api/usage[?since=YYYY-MM-DD&until=&user=]   usage per user and UTC day, with cost at
                                                     the configured prices (the caller's; an
                                                     admin's: everyone's, or `user`'s)
    GET /api/logs[?limit=&program=&status=]          the caller's runs, newest first
    GET /api/logs/search?q=[&limit=]                 full-text search of the caller's runs
    GET /api/logs/{run_id}                           one run (an id or a unique prefix) with
                                                     its messages
    GET /metrics                                     Prometheus text (`metrics`)

Each `/api` route is one kernel-API operation (`usage`, `logs.list`, `logs.search`, `logs.get`)
called as the authenticated caller, so scoping is the kernel's: a user sees only their own
usage and runs (another user's run id is a 404, like one that does not exist); an admin sees
all, like `llmos logs`.

`/metrics` needs no token unless the server runs with `--metrics-auth` (then an admin's
bearer token): it names users in its labels, so keep it on an internal network or behind the
proxy (docs/SERVE.md).

What this does not do: count anything itself (the kernel's meter does; see `metrics`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmos import params
from llmos.errors import AccessError
from llmos.front.serve.auth import caller as auth_caller
from llmos.front.serve.auth import user_of
from llmos.kernel import api

router = APIRouter()
CallerDep = Annotated[api.Caller, Depends(auth_caller)]
Limit = Annotated[int, Query(ge=1, le=params.LOGS_API_MAX)]


def _call(request: Request, caller: api.Caller, op: str, payload: dict[str, Any]) -> Any:
    return api.call(request.app.state.service.kernel, caller, op, payload)


@router.get("/api/usage")
def usage(
    request: Request,
    caller: CallerDep,
    since: str | None = None,
    until: str | None = None,
    user: str | None = None,
) -> Any:
    return _call(request, caller, "usage", {"since": since, "until": until, "user": user})


@router.get("/api/logs")
def logs_list(
    request: Request,
    caller: CallerDep,
    limit: Limit = params.LOG_LIST_DEFAULT,
    program: str | None = None,
    status: str | None = None,
) -> Any:
    payload = {"limit": limit, "program": program, "status": status}
    return _call(request, caller, "logs.list", payload)


@router.get("/api/logs/search")
def logs_search(
    request: Request, caller: CallerDep, q: str, limit: Limit = params.LOG_LIST_DEFAULT
) -> Any:
    return _call(request, caller, "logs.search", {"query": q, "limit": limit})


@router.get("/api/logs/{run_id}")
def logs_get(request: Request, caller: CallerDep, run_id: str) -> Any:
    return _call(request, caller, "logs.get", {"run_id": run_id})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    service = request.app.state.service
    if service.metrics_auth and not user_of(request).admin:
        raise AccessError("metrics need an admin's token on this server")
    data = generate_latest(request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
