"""The kernel API's store operations: memories (remember, recall, forget, list, page), shared
segments (ls, create, read, write, chmod, rm), usage with its cost, and the log of runs (list,
search, get), each for the caller's owner.

Invariants: every store answer is scoped to the caller's owner (an admin sees everyone's usage
and runs); another owner's run id answers exactly like one that does not exist.

What this does not do: keep anything itself (the stores do: `llmos.store`).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from llmos import params
from llmos.errors import (
    AccessError,
    InputError,
    LogStoreError,
    NoSuchRunError,
    NotFoundError,
)
from llmos.kernel.api.base import Caller, Empty, Request
from llmos.kernel.core import Kernel
from llmos.store.runrecord import RunRecord
from llmos.store.shm import SharedMemory
from llmos.store.usage import Usage, day_of, parse_day


class RememberRequest(Request):
    text: str
    tags: list[str] = Field(default_factory=list)


class RecallRequest(Request):
    query: str
    k: int = Field(default=params.RECALL_DEFAULT_K, ge=1, le=params.RECALL_MAX_K)


class IdRequest(Request):
    id: int = Field(ge=0)


class ListRequest(Request):
    limit: int = Field(default=params.MEMORY_LIST_DEFAULT, ge=1)


class ShmNameRequest(Request):
    name: str


class ShmCreateRequest(Request):
    name: str
    text: str = ""
    others: str = ""
    acl: dict[str, str] = Field(default_factory=dict)


class ShmWriteRequest(Request):
    name: str
    text: str
    append: bool = False
    if_version: int | None = Field(default=None, ge=0)


class ShmChmodRequest(Request):
    name: str
    others: str | None = None
    grant: dict[str, str] = Field(default_factory=dict)


# --- memory and shared segments ------------------------------------------------------------------


def _remember(kernel: Kernel, caller: Caller, req: RememberRequest) -> dict[str, Any]:
    mid = kernel.system.memory.remember(caller.owner, req.text, req.tags, source="cli")
    return {"id": mid}


def _recall(kernel: Kernel, caller: Caller, req: RecallRequest) -> dict[str, Any]:
    hits = kernel.system.memory.recall(caller.owner, req.query, req.k)
    return {"hits": [h.to_json() for h in hits]}


def _forget(kernel: Kernel, caller: Caller, req: IdRequest) -> dict[str, Any]:
    if not kernel.system.memory.forget(caller.owner, req.id):
        raise NotFoundError(f"no memory m{req.id} of {caller.owner}")
    return {"forgotten": req.id}


def _memories(kernel: Kernel, caller: Caller, req: ListRequest) -> dict[str, Any]:
    return {"hits": [h.to_json() for h in kernel.system.memory.memories(caller.owner, req.limit)]}


def _page(kernel: Kernel, caller: Caller, req: IdRequest) -> dict[str, Any]:
    page = kernel.system.memory.page(caller.owner, req.id)
    if page is None:
        raise NotFoundError(f"no page p{req.id} of {caller.owner}")
    return {"page": page}


def _shm(kernel: Kernel) -> SharedMemory:
    return SharedMemory(kernel.system.memory)


def _shm_ls(kernel: Kernel, caller: Caller, req: Empty) -> dict[str, Any]:
    return {"segments": [s.info() for s in _shm(kernel).list(caller.owner)]}


def _shm_create(kernel: Kernel, caller: Caller, req: ShmCreateRequest) -> dict[str, Any]:
    seg = _shm(kernel).create(caller.owner, req.name, req.text, others=req.others, acl=req.acl)
    return {"segment": seg.info()}


def _shm_read(kernel: Kernel, caller: Caller, req: ShmNameRequest) -> dict[str, Any]:
    seg = _shm(kernel).read(caller.owner, req.name)
    return {"segment": seg.info(), "text": seg.text}


def _shm_write(kernel: Kernel, caller: Caller, req: ShmWriteRequest) -> dict[str, Any]:
    seg = _shm(kernel).write(
        caller.owner, req.name, req.text, append=req.append, if_version=req.if_version
    )
    return {"segment": seg.info()}


def _shm_chmod(kernel: Kernel, caller: Caller, req: ShmChmodRequest) -> dict[str, Any]:
    seg = _shm(kernel).chmod(caller.owner, req.name, others=req.others, grant=req.grant)
    return {"segment": seg.info()}


def _shm_rm(kernel: Kernel, caller: Caller, req: ShmNameRequest) -> dict[str, Any]:
    _shm(kernel).remove(caller.owner, req.name)
    return {"removed": req.name}


# --- usage and logs ------------------------------------------------------------------------------


class UsageRequest(Request):
    since: str | None = None  # first day, 'YYYY-MM-DD' (UTC)
    until: str | None = None  # last day, inclusive
    user: str | None = None  # an admin's choice of one user


class LogsListRequest(Request):
    limit: int = Field(default=params.LOG_LIST_DEFAULT, ge=1, le=params.LOGS_API_MAX)
    program: str | None = None
    status: str | None = Field(default=None, pattern=r"^(running|ok|failed|cancelled)$")


class LogsSearchRequest(Request):
    query: str = Field(min_length=1)
    limit: int = Field(default=params.LOG_LIST_DEFAULT, ge=1, le=params.LOGS_API_MAX)


class LogsGetRequest(Request):
    run_id: str = Field(min_length=1, max_length=64)


def _day(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError:
        raise InputError(f"'{name}' must be a day as YYYY-MM-DD, got {value!r}") from None


def _usage(kernel: Kernel, caller: Caller, req: UsageRequest) -> dict[str, Any]:
    """Usage per owner and day (ledger plus live processes), priced at the configured prices;
    `cpus`: per owner, day and pool CPU, priced at the pool's prices."""
    if req.user is not None and req.user != caller.owner and not caller.admin:
        raise AccessError("only an admin may see another user's usage")
    owner = req.user if req.user is not None else (None if caller.admin else caller.owner)
    since, until = _day(req.since, "since"), _day(req.until, "until")
    if since is None:  # the last params.USAGE_DAYS_MAX days
        since = day_of(time.time() - (params.USAGE_DAYS_MAX - 1) * 86400.0)
    cfg = kernel.system.config
    rows = kernel.meter.usage(owner, since, until)
    totals: dict[str, Usage] = {}
    out = []
    for who, day, used in rows:
        totals.setdefault(who, Usage()).add(used)
        cost = cfg.cost(used.prompt_tokens, used.generated_tokens, used.cpu_s)
        out.append({"user": who, "day": day, **used.to_json(), "cost": round(cost, 6)})
    cpus = [
        {"user": who, "day": day, "cpu": cpu, **used.to_json()}
        for who, day, cpu, used in kernel.meter.cpu_usage(owner, since, until)
    ]
    return {
        "usage": out,
        "cpus": cpus,
        "totals": {
            who: {
                **t.to_json(),
                "cost": round(cfg.cost(t.prompt_tokens, t.generated_tokens, t.cpu_s), 6),
            }
            for who, t in totals.items()
        },
        "prices": dict(cfg.prices),
        "since": since,
        "until": until,
    }


def run_json(r: RunRecord) -> dict[str, Any]:
    """One logged run as the API shows it (without the server's file path)."""
    return r.to_json(with_path=False)


def _scope(caller: Caller) -> str | None:
    return None if caller.admin else caller.owner


def _logs_list(kernel: Kernel, caller: Caller, req: LogsListRequest) -> dict[str, Any]:
    rows = kernel.system.log.list_runs(
        limit=req.limit, program=req.program, status=req.status, owner=_scope(caller)
    )
    return {"runs": [run_json(r) for r in rows]}


def _logs_search(kernel: Kernel, caller: Caller, req: LogsSearchRequest) -> dict[str, Any]:
    rows = kernel.system.log.list_runs(limit=req.limit, query=req.query, owner=_scope(caller))
    return {"runs": [run_json(r) for r in rows]}


def _logs_get(kernel: Kernel, caller: Caller, req: LogsGetRequest) -> dict[str, Any]:
    log, owner = kernel.system.log, _scope(caller)
    try:
        record = log.get_run(req.run_id, owner)
        messages = log.messages(record.id, owner) if record is not None else []
    except LogStoreError as exc:
        if "ambiguous" in str(exc):
            raise InputError(
                f"run id prefix {req.run_id!r} is ambiguous: give more digits"
            ) from None
        raise
    if record is None:
        raise NoSuchRunError(f"no run with id {req.run_id!r}")
    return {"run": run_json(record), "messages": messages}
