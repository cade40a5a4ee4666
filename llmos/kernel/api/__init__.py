"""The kernel's front door: one typed table of operations that every front end uses.

The command line (in-process), the daemon's socket protocol (`llmos.front.kerneld`), `llmos mcp`
and any later front end reach the kernel only through this table. Each operation has a pydantic
request model (strict types, unknown fields refused) and a handler; `call(kernel, caller, op,
payload)` validates a payload and runs the handler, so a malformed request is one clear line
(RequestError, exit 2) whatever the front end. Replies are plain JSON-ready dicts. Two
operations stream: `follow` yields events (`{"text": ...}` pieces of the process's output from
its start, then live, ending with `{"done": true, ...}`), and `wait` blocks; both stop early
when the caller's `gone()` says the client went away.

    op                  request                                    reply
    spawn               program, cwd, inputs, input_pairs, stdin,  pid, process
                        model, priority, budget
    exec                program (an installed name), inputs,       pid, process
                        stdin, model, priority, budget
    programs.list       -                                          programs (the caller's own
                                                                   and the system's)
    programs.show       name                                       program (with its source)
    programs.install    name, source, format, system               program
    programs.remove     name, system                               removed
    chat                model (program/NAME or a CPU), messages,   pid, process
                        max_tokens, temperature, json_object, json_schema
    embed               texts                                      vectors, tokens
    ps                  all                                        processes
    get                 pid                                        process, question
    kill|stop|cont      pid                                        process, already_exited
                                                                   (kill only: no error)
    renice              pid, priority                              process, old_priority
    migrate             pid, cpu (a CPU of the pool it runs on)    process, cpu
    wait                pid, timeout                               process, text, timed_out
    follow              pid, progress                              events (see above; with
                                                                   progress, notice and
                                                                   progress events too)
    answer              pid, text                                  process
    approve|deny        pid                                        process
    audit               pid, device, decision, limit, verify       records (the caller's own),
                                                                   verify (the whole chain)
    top                 -                                          the kernel's snapshot
    context             pid                                        segments (kind, label,
                                                                   tokens, resident or page,
                                                                   preview), used, limit,
                                                                   tainted, sources, by_kind
    steps               pid                                        steps (the syscall
                                                                   timeline, with the guard's
                                                                   decisions), approval,
                                                                   question
    memory.remember     text, tags                                 id
    memory.recall       query, k                                   hits
    memory.forget       id                                         forgotten
    memory.list         limit                                      hits
    memory.page         id                                         page
    shm.ls              -                                          segments
    shm.create          name, text, others, acl                    segment
    shm.read            name                                       segment, text
    shm.write           name, text, append, if_version             segment
    shm.chmod           name, others, grant                        segment
    shm.rm              name                                       removed
    usage               since (default: params.USAGE_DAYS_MAX      usage (per owner and day,
                        days ago), until, user (an admin's)        with cost), totals, prices
    logs.list           limit, program, status                     runs (the caller's; an
                                                                   admin's: everyone's)
    logs.search         query, limit                               runs, best match first
    logs.get            run_id (or a unique prefix)                run, messages

`spawn_request` is the one function that turns a program reference, inputs and stdin into a
loaded program and its inputs, for every front end (the reference is resolved against the
caller's working directory; a program that cannot load is journalled as a failed run).
`exec` is the network's spawn: the program is a bare name looked up among the caller's own
installed programs (`<home>/users/<owner>/programs`), then the system's (`<home>/programs`);
never a path, a working directory or a model file, since the caller is not on this machine.
`run` is the in-process foreground run: spawn, stream the output, and kill the process if the
caller is interrupted.

Invariants:
- A handler never trusts a field the model did not validate; the caller's identity
  (`Caller.owner`, `Caller.admin`) is established by the front end
  (`llmos.kernel.security.principals`: the OS user, or the daemon's socket peer), never taken
  from the payload: no request model has an `owner` field, so a payload that names one is
  refused.
- Every operation on a pid (kill, stop, cont, renice, wait, follow, answer, context, steps)
  acts only on the caller's own processes, or any process for an admin. Another owner's pid
  answers exactly like a pid that does not exist (NoSuchProcessError, the same text), so not
  even its existence leaks. `ps` and `top` show only the caller's processes and account
  (admins see all).
- Memories, pages and shared segments are per owner in their stores; the caller's owner is the
  one passed.
- `usage` and `logs.*` are owner-scoped like `llmos logs`: a caller sees their own usage and
  runs; an admin sees everyone's (and may name a `user`). Another owner's run id answers
  exactly like one that does not exist.

Not covered: an admin acting on another owner's process is not audited here; the stores'
files belong to the OS user who runs the kernel, so scoping holds between callers of the API,
not against that OS user reading the files directly.

The package: `base` (Caller, the strict Request, Op, the ownership check), `procs` (process
operations, `run`, `follow_process`), `programs` (installed programs, `exec`, `chat`, `embed`),
`stores` (memory, shared segments, usage, logs); this module holds the table, `parse` and `call`.

What this module does not do: transport (sockets, stdio, HTTP live in `llmos.front`), or
formatting for people (the command line does that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from llmos.errors import RequestError
from llmos.kernel.api.base import Caller, Empty, Handler, Op, PidRequest, Request, owned
from llmos.kernel.api.procs import (
    AnswerRequest,
    AuditRequest,
    FollowRequest,
    MigrateRequest,
    PsRequest,
    ReniceRequest,
    SpawnRequest,
    WaitRequest,
    _answer,
    _audit,
    _context,
    _decide,
    _follow,
    _get,
    _migrate,
    _ps,
    _renice,
    _signal,
    _spawn_op,
    _steps_op,
    _top,
    _wait,
    follow_process,
    run,
    spawn,
    spawn_request,
    with_stdin,
)
from llmos.kernel.api.programs import (
    ChatMessage,
    ChatRequest,
    EmbedRequest,
    ExecRequest,
    InstallRequest,
    ProgramNameRequest,
    RemoveRequest,
    _chat,
    _embed,
    _exec,
    _programs_install,
    _programs_list,
    _programs_remove,
    _programs_show,
    chat_inputs,
    chat_program,
    installed,
    program_dirs,
)
from llmos.kernel.api.stores import (
    IdRequest,
    ListRequest,
    LogsGetRequest,
    LogsListRequest,
    LogsSearchRequest,
    RecallRequest,
    RememberRequest,
    ShmChmodRequest,
    ShmCreateRequest,
    ShmNameRequest,
    ShmWriteRequest,
    UsageRequest,
    _forget,
    _logs_get,
    _logs_list,
    _logs_search,
    _memories,
    _page,
    _recall,
    _remember,
    _shm_chmod,
    _shm_create,
    _shm_ls,
    _shm_read,
    _shm_rm,
    _shm_write,
    _usage,
    run_json,
)
from llmos.kernel.core import Kernel

__all__ = [
    "OPS",
    "AnswerRequest",
    "AuditRequest",
    "Caller",
    "ChatMessage",
    "ChatRequest",
    "EmbedRequest",
    "Empty",
    "ExecRequest",
    "FollowRequest",
    "Handler",
    "IdRequest",
    "InstallRequest",
    "ListRequest",
    "LogsGetRequest",
    "LogsListRequest",
    "LogsSearchRequest",
    "Op",
    "PidRequest",
    "ProgramNameRequest",
    "PsRequest",
    "RecallRequest",
    "RememberRequest",
    "RemoveRequest",
    "ReniceRequest",
    "Request",
    "ShmChmodRequest",
    "ShmCreateRequest",
    "ShmNameRequest",
    "ShmWriteRequest",
    "SpawnRequest",
    "UsageRequest",
    "WaitRequest",
    "call",
    "chat_inputs",
    "chat_program",
    "describe",
    "follow_process",
    "installed",
    "owned",
    "parse",
    "program_dirs",
    "run",
    "run_json",
    "spawn",
    "spawn_request",
    "with_stdin",
]


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("spawn", SpawnRequest, _spawn_op),
        Op("ps", PsRequest, _ps),
        Op("kill", PidRequest, _signal("kill")),
        Op("stop", PidRequest, _signal("stop")),
        Op("cont", PidRequest, _signal("cont")),
        Op("renice", ReniceRequest, _renice),
        Op("migrate", MigrateRequest, _migrate),
        Op("wait", WaitRequest, _wait),
        Op("follow", FollowRequest, _follow, streams=True),
        Op("answer", AnswerRequest, _answer),
        Op("approve", PidRequest, _decide(True)),
        Op("deny", PidRequest, _decide(False)),
        Op("audit", AuditRequest, _audit),
        Op("top", Empty, _top),
        Op("context", PidRequest, _context),
        Op("steps", PidRequest, _steps_op),
        Op("memory.remember", RememberRequest, _remember),
        Op("memory.recall", RecallRequest, _recall),
        Op("memory.forget", IdRequest, _forget),
        Op("memory.list", ListRequest, _memories),
        Op("memory.page", IdRequest, _page),
        Op("shm.ls", Empty, _shm_ls),
        Op("shm.create", ShmCreateRequest, _shm_create),
        Op("shm.read", ShmNameRequest, _shm_read),
        Op("shm.write", ShmWriteRequest, _shm_write),
        Op("shm.chmod", ShmChmodRequest, _shm_chmod),
        Op("shm.rm", ShmNameRequest, _shm_rm),
        Op("usage", UsageRequest, _usage),
        Op("logs.list", LogsListRequest, _logs_list),
        Op("logs.search", LogsSearchRequest, _logs_search),
        Op("logs.get", LogsGetRequest, _logs_get),
        Op("exec", ExecRequest, _exec),
        Op("programs.list", Empty, _programs_list),
        Op("programs.show", ProgramNameRequest, _programs_show),
        Op("programs.install", InstallRequest, _programs_install),
        Op("programs.remove", RemoveRequest, _programs_remove),
        Op("get", PidRequest, _get),
        Op("chat", ChatRequest, _chat),
        Op("embed", EmbedRequest, _embed),
    )
}


def parse(op: str, payload: Mapping[str, Any], ops: Mapping[str, Op] = OPS) -> Request:
    """`payload` validated as op's request; RequestError (one line) if it is not."""
    spec = ops.get(op)
    if spec is None:
        raise RequestError(f"unknown op {op!r}: use one of {', '.join(ops)}")
    try:
        return spec.request.model_validate(dict(payload))
    except ValidationError as exc:
        raise RequestError(describe(op, exc)) from None


def call(kernel: Kernel, caller: Caller, op: str, payload: Mapping[str, Any]) -> Any:
    """Run operation `op` for `caller`: a reply dict, an iterator of events (streaming ops), or
    None (`wait` whose caller left)."""
    request = parse(op, payload)
    return OPS[op].handler(kernel, caller, request)


_EXPECTED = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be a JSON object",
    "list_type": "must be a list",
    "greater_than_equal": "must not be negative",
    "less_than_equal": "is too large",
    "too_short": "must not be empty",
    "string_too_long": "is too long",
    "string_pattern_mismatch": "is not one of the allowed values",
    "string_too_short": "must not be empty",
}


def describe(op: str, exc: ValidationError) -> str:
    """The first problem of a request, as one line naming the field and the value."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(request)"
    kind = err["type"]
    if kind == "missing":
        return f"{op} needs '{where}'"
    if kind == "extra_forbidden":
        return f"{op} takes no '{where}'"
    expected = _EXPECTED.get(kind, err["msg"])
    return f"'{where}' {expected}, got {err.get('input')!r}"
