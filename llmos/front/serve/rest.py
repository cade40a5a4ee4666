"""The REST API: the kernel's operation table over HTTP, as the caller a token names.

Every route validates its body with the operation's own pydantic model (so the OpenAPI spec at
`/openapi.json` shows it), then calls `llmos.kernel.api.call` as the authenticated caller.
Handlers are plain functions: FastAPI runs them in worker threads, so a blocking `wait` holds
only its own thread.

    POST   /api/processes                    exec an installed program (201: pid, process)
    GET    /api/processes[?all=true]          the caller's processes (an admin's: everyone's)
    GET    /api/processes/{pid}               one process (and the question it waits on)
    DELETE /api/processes/{pid}               kill it
    POST   /api/processes/{pid}/{signal}      kill | stop | cont | approve | deny
    POST   /api/processes/{pid}/renice        {"priority": N}
    POST   /api/processes/{pid}/migrate       {"cpu": "NAME"}: another CPU of its pool
    POST   /api/processes/{pid}/answer        {"text": "..."} answers its `ask`
    GET    /api/processes/{pid}/wait          ?timeout=S (at most params.SERVE_WAIT_MAX_S)
    GET    /api/processes/{pid}/events        its output as resumable SSE (`llmos...sse`)
    GET    /api/processes/{pid}/context       its context window: segments, used of limit, taint
    GET    /api/processes/{pid}/steps         its syscall timeline (and the call awaiting approval)
    POST   /api/chat                          one conversation turn as a process (201: pid,
                                              process): the kernel API's `chat` ({"model",
                                              "messages"}); follow it like any process
    GET    /api/programs                      installed programs (the caller's and the system's)
    GET    /api/programs/{name}               one, with its source
    PUT    /api/programs/{name}               install {"source", "format", "system"}
    DELETE /api/programs/{name}[?system=true] remove
    GET    /api/memories[?limit=N]            POST {"text", "tags"}; DELETE /api/memories/{id}
    GET    /api/memories/search?q=&k=         recall
    GET    /api/shm, POST /api/shm, GET|PUT|DELETE /api/shm/{name}, POST /api/shm/{name}/chmod
    GET    /api/audit                         the caller's audit records (?verify=true)
    GET    /api/top                           the kernel's snapshot (the caller's share)

Another owner's pid answers 404 exactly like a pid that does not exist.

What this does not do: the OpenAI-compatible endpoint (`openai_api`), health and metrics.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.requests import Request

from llmos import params
from llmos.errors import RequestError
from llmos.front.serve import sse
from llmos.front.serve.auth import caller as auth_caller
from llmos.front.serve.errors import HTTPError
from llmos.kernel import api

router = APIRouter(prefix="/api")
CallerDep = Annotated[api.Caller, Depends(auth_caller)]


def _call(request: Request, caller: api.Caller, op: str, payload: dict[str, Any]) -> Any:
    service = request.app.state.service
    if op in ("exec", "spawn", "chat") and service.draining:
        raise HTTPError(503, "the service is shutting down; try again shortly", "draining")
    return api.call(service.kernel, caller, op, payload)


# --- processes ---------------------------------------------------------------------------------


@router.post("/processes", status_code=201)
def exec_program(request: Request, caller: CallerDep, body: api.ExecRequest) -> Any:
    return _call(request, caller, "exec", body.model_dump(exclude_unset=True))


@router.get("/processes")
def list_processes(request: Request, caller: CallerDep, all: bool = False) -> Any:
    return _call(request, caller, "ps", {"all": all})


@router.get("/processes/{pid}")
def get_process(request: Request, caller: CallerDep, pid: int) -> Any:
    return _call(request, caller, "get", {"pid": pid})


@router.get("/processes/{pid}/context")
def process_context(request: Request, caller: CallerDep, pid: int) -> Any:
    return _call(request, caller, "context", {"pid": pid})


@router.get("/processes/{pid}/steps")
def process_steps(request: Request, caller: CallerDep, pid: int) -> Any:
    return _call(request, caller, "steps", {"pid": pid})


@router.post("/chat", status_code=201)
def chat(request: Request, caller: CallerDep, body: api.ChatRequest) -> Any:
    return _call(request, caller, "chat", body.model_dump(exclude_unset=True))


@router.delete("/processes/{pid}")
def kill_process(request: Request, caller: CallerDep, pid: int) -> Any:
    return _call(request, caller, "kill", {"pid": pid})


class Renice(api.Request):
    priority: int


class Answer(api.Request):
    text: str


class Migrate(api.Request):
    cpu: str


@router.post("/processes/{pid}/renice")
def renice_process(request: Request, caller: CallerDep, pid: int, body: Renice) -> Any:
    return _call(request, caller, "renice", {"pid": pid, "priority": body.priority})


@router.post("/processes/{pid}/migrate")
def migrate_process(request: Request, caller: CallerDep, pid: int, body: Migrate) -> Any:
    return _call(request, caller, "migrate", {"pid": pid, "cpu": body.cpu})


@router.post("/processes/{pid}/answer")
def answer_process(request: Request, caller: CallerDep, pid: int, body: Answer) -> Any:
    return _call(request, caller, "answer", {"pid": pid, "text": body.text})


# after the fixed paths above: /{signal} would match /renice, /migrate and /answer too
@router.post("/processes/{pid}/{signal}")
def signal_process(request: Request, caller: CallerDep, pid: int, signal: str) -> Any:
    if signal not in ("kill", "stop", "cont", "approve", "deny"):
        raise RequestError(f"unknown action {signal!r}: use kill, stop, cont, approve or deny")
    return _call(request, caller, signal, {"pid": pid})


@router.get("/processes/{pid}/wait")
def wait_process(
    request: Request,
    caller: CallerDep,
    pid: int,
    timeout: Annotated[float, Query(ge=0, le=params.SERVE_WAIT_MAX_S)] = params.SERVE_WAIT_MAX_S,
) -> Any:
    return _call(request, caller, "wait", {"pid": pid, "timeout": timeout})


@router.get("/processes/{pid}/events", response_class=StreamingResponse)
def process_events(
    request: Request,
    caller: CallerDep,
    pid: int,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    service = request.app.state.service
    start = sse.resume_point(last_event_id, after)
    frames = sse.stream(service.kernel, caller, pid, start)
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- programs ----------------------------------------------------------------------------------


class Install(api.Request):
    source: str
    format: str = "prompt"
    system: bool = False


@router.get("/programs")
def list_programs(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "programs.list", {})


@router.get("/programs/{name}")
def show_program(request: Request, caller: CallerDep, name: str) -> Any:
    return _call(request, caller, "programs.show", {"name": name})


@router.put("/programs/{name}")
def install_program(request: Request, caller: CallerDep, name: str, body: Install) -> Any:
    return _call(request, caller, "programs.install", {"name": name, **body.model_dump()})


@router.delete("/programs/{name}")
def remove_program(request: Request, caller: CallerDep, name: str, system: bool = False) -> Any:
    return _call(request, caller, "programs.remove", {"name": name, "system": system})


# --- memory, shared segments, audit, top -----------------------------------------------------


@router.get("/memories")
def list_memories(
    request: Request, caller: CallerDep, limit: int = params.MEMORY_LIST_DEFAULT
) -> Any:
    return _call(request, caller, "memory.list", {"limit": limit})


@router.post("/memories", status_code=201)
def remember(request: Request, caller: CallerDep, body: api.RememberRequest) -> Any:
    return _call(request, caller, "memory.remember", body.model_dump())


@router.get("/memories/search")
def recall(request: Request, caller: CallerDep, q: str, k: int = params.RECALL_DEFAULT_K) -> Any:
    return _call(request, caller, "memory.recall", {"query": q, "k": k})


@router.delete("/memories/{mid}")
def forget(request: Request, caller: CallerDep, mid: int) -> Any:
    return _call(request, caller, "memory.forget", {"id": mid})


@router.get("/shm")
def list_segments(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "shm.ls", {})


@router.post("/shm", status_code=201)
def create_segment(request: Request, caller: CallerDep, body: api.ShmCreateRequest) -> Any:
    return _call(request, caller, "shm.create", body.model_dump())


@router.get("/shm/{name}")
def read_segment(request: Request, caller: CallerDep, name: str) -> Any:
    return _call(request, caller, "shm.read", {"name": name})


class ShmWrite(api.Request):
    text: str
    append: bool = False
    if_version: int | None = None


class ShmChmod(api.Request):
    others: str | None = None
    grant: dict[str, str] = Field(default_factory=dict)


@router.put("/shm/{name}")
def write_segment(request: Request, caller: CallerDep, name: str, body: ShmWrite) -> Any:
    return _call(request, caller, "shm.write", {"name": name, **body.model_dump()})


@router.post("/shm/{name}/chmod")
def chmod_segment(request: Request, caller: CallerDep, name: str, body: ShmChmod) -> Any:
    return _call(request, caller, "shm.chmod", {"name": name, **body.model_dump()})


@router.delete("/shm/{name}")
def remove_segment(request: Request, caller: CallerDep, name: str) -> Any:
    return _call(request, caller, "shm.rm", {"name": name})


@router.get("/audit")
def audit(
    request: Request,
    caller: CallerDep,
    pid: int | None = None,
    device: str | None = None,
    decision: str | None = None,
    limit: int = params.AUDIT_LIST_DEFAULT,
    verify: bool = False,
) -> Any:
    payload = {"pid": pid, "device": device, "decision": decision, "limit": limit}
    payload["verify"] = verify and caller.admin  # the whole chain is an admin's to check
    return _call(request, caller, "audit", payload)


@router.get("/top")
def top(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "top", {})
