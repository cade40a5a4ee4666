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
    kill|stop|cont      pid                                        process
    renice              pid, priority                              process, old_priority
    wait                pid, timeout                               process, text, timed_out
    follow              pid                                        events (see above)
    answer              pid, text                                  process
    approve|deny        pid                                        process
    audit               pid, device, decision, limit, verify       records (the caller's own),
                                                                   verify (the whole chain)
    top                 -                                          the kernel's snapshot
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
- Every operation on a pid (kill, stop, cont, renice, wait, follow, answer) acts only on the
  caller's own processes, or any process for an admin. Another owner's pid answers exactly like
  a pid that does not exist (NoSuchProcessError, the same text), so not even its existence
  leaks. `ps` and `top` show only the caller's processes and account (admins see all).
- Memories, pages and shared segments are per owner in their stores; the caller's owner is the
  one passed.
- `usage` and `logs.*` are owner-scoped like `llmos logs`: a caller sees their own usage and
  runs; an admin sees everyone's (and may name a `user`). Another owner's run id answers
  exactly like one that does not exist.

Not covered: an admin acting on another owner's process is not audited here; the stores'
files belong to the OS user who runs the kernel, so scoping holds between callers of the API,
not against that OS user reading the files directly.

What this module does not do: transport (sockets, stdio, HTTP live in `llmos.front`), or
formatting for people (the command line does that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmos import params
from llmos.errors import (
    AccessError,
    AdmissionError,
    InputError,
    LlmosError,
    LogStoreError,
    NoSuchProcessError,
    NoSuchProgramError,
    NoSuchRunError,
    RequestError,
)
from llmos.hw.cpu.base import CPU
from llmos.kernel import program as program_mod
from llmos.kernel.core import Kernel
from llmos.kernel.inputs import parse_cli_inputs
from llmos.kernel.loop import RunResult
from llmos.kernel.proc import Process
from llmos.kernel.program import Program
from llmos.kernel.security import principals
from llmos.store.log import RunRecord
from llmos.store.shm import SharedMemory
from llmos.store.usage import Usage, day_of, parse_day

_PROGRAM_NAME = re.compile(params.PROGRAM_NAME_PATTERN)


@dataclass(frozen=True)
class Caller:
    """Who is asking (established by the front end), whether they are an admin, and how to
    tell that they left. An owner name that is not valid is refused (AccessError)."""

    owner: str
    admin: bool = False
    gone: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        principals.owner_name(self.owner)

    @classmethod
    def of(cls, who: principals.Principal, gone: Callable[[], bool] | None = None) -> Caller:
        return cls(who.owner, who.admin, gone or (lambda: False))

    def may_act_on(self, owner: str) -> bool:
        return self.admin or owner == self.owner


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SpawnRequest(Request):
    program: str = Field(min_length=1)
    cwd: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    input_pairs: list[str] = Field(default_factory=list)
    stdin: str | None = None
    model: str | None = None
    priority: int | None = None
    budget: int | None = Field(default=None, ge=0)


class ExecRequest(Request):
    program: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX)
    inputs: dict[str, Any] = Field(default_factory=dict)
    stdin: str | None = None
    model: str | None = None
    priority: int | None = None
    budget: int | None = Field(default=None, ge=0)


class ChatMessage(Request):
    role: str = Field(pattern=r"^(system|developer|user|assistant|tool)$")
    content: str = Field(max_length=params.PROGRAM_MAX_BYTES)


class ChatRequest(Request):
    model: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX + 16)
    messages: list[ChatMessage] = Field(min_length=1, max_length=params.CHAT_MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    json_object: bool = False
    json_schema: dict[str, Any] | None = None
    priority: int | None = None


class EmbedRequest(Request):
    texts: list[str] = Field(min_length=1, max_length=params.EMBED_MAX_TEXTS)


class ProgramNameRequest(Request):
    name: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX)


class InstallRequest(Request):
    name: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX)
    source: str = Field(min_length=1, max_length=params.PROGRAM_MAX_BYTES)
    format: str = Field(default="prompt", pattern=r"^(prompt|md)$")
    system: bool = False


class RemoveRequest(Request):
    name: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX)
    system: bool = False


class PidRequest(Request):
    pid: int


class PsRequest(Request):
    all: bool = False


class ReniceRequest(Request):
    pid: int
    priority: int


class WaitRequest(Request):
    pid: int
    timeout: float | None = Field(default=None, ge=0)


class AnswerRequest(Request):
    pid: int
    text: str


class AuditRequest(Request):
    pid: int | None = None
    device: str | None = None
    decision: str | None = None
    limit: int = Field(default=params.AUDIT_LIST_DEFAULT, ge=1)
    verify: bool = False


class Empty(Request):
    pass


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


Handler = Callable[[Kernel, Caller, Any], Any]


@dataclass(frozen=True)
class Op:
    name: str
    request: type[Request]
    handler: Handler
    streams: bool = False  # the handler returns an iterator of events


# --- processes -----------------------------------------------------------------------------------


def spawn_request(
    kernel: Kernel, caller: Caller, req: SpawnRequest
) -> tuple[Program, dict[str, Any]]:
    """The program `req` names, loaded for the caller's working directory, and its inputs
    (`inputs`, then `key=value` pairs coerced to the input schema, then stdin as `input`).
    A program or input that fails is journalled as a failed run of the caller, then raised."""
    system = kernel.system
    ref = req.program
    cwd = Path(req.cwd) if req.cwd else Path.cwd()
    if not cwd.is_absolute():
        raise RequestError(f"'cwd' must be an absolute path, got {req.cwd!r}")
    candidate = cwd / ref
    if not Path(ref).is_absolute() and (
        "/" in ref
        or ref.endswith(params.PROGRAM_SUFFIXES)
        or candidate.is_file()
        or (candidate / params.SKILL_FILE).is_file()
    ):
        ref = str(candidate)
    try:
        program = program_mod.load(ref, program_mod.default_search_dirs(system.home, cwd))
    except LlmosError as exc:
        system.log_failure(ref, exc, owner=caller.owner)
        raise
    try:
        inputs = dict(req.inputs)
        inputs.update(parse_cli_inputs(list(req.input_pairs), program.input_schema))
    except LlmosError as exc:
        system.log_failure(program.name, exc, program_path=str(program.path))
        raise
    return program, with_stdin(inputs, req.stdin)


def with_stdin(inputs: dict[str, Any], stdin: str | None) -> dict[str, Any]:
    """Piped stdin is the input named `input`, unless that input was given explicitly."""
    if stdin is not None and "input" not in inputs:
        return {**inputs, "input": stdin}
    return inputs


def spawn(kernel: Kernel, caller: Caller, req: SpawnRequest) -> Process:
    """Start the program `req` names as a process owned by the caller."""
    program, inputs = spawn_request(kernel, caller, req)
    try:
        return kernel.spawn(
            program,
            inputs,
            owner=caller.owner,
            model=req.model,
            priority=req.priority,
            budget=req.budget,
        )
    except AdmissionError:
        raise
    except LlmosError as exc:
        kernel.system.log_failure(program.name, exc, str(program.path), caller.owner)
        raise


def run(
    kernel: Kernel,
    caller: Caller,
    program: Program,
    inputs: dict[str, Any],
    *,
    cpu: CPU | None = None,
    on_text: Callable[[str], None] | None = None,
    on_trace: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run `program` as a process and wait for it in the foreground, streaming its output to
    `on_text`; raise the error it failed with. If the caller is interrupted (or its output
    pipe closes), the process is killed and logged as such first."""
    proc = kernel.spawn(program, inputs, owner=caller.owner, cpu=cpu, on_trace=on_trace)
    try:
        for event in follow_process(proc, caller):
            if "text" in event and on_text is not None:
                on_text(event["text"])
    except BaseException:
        if proc.alive:
            kernel.kill(proc.pid)
            proc.wait(timeout=params.KERNEL_SHUTDOWN_GRACE_S)
        raise
    if proc.exception is not None:
        raise proc.exception
    if proc.result is None:
        raise LlmosError(
            f"{program.path}: process {proc.pid} ended {proc.exit_status}: {proc.error}"
        )
    result: RunResult = proc.result
    return result


def follow_process(proc: Process, caller: Caller, start: int = 0) -> Iterator[dict[str, Any]]:
    """The process's one output stream, as events: its text from piece `start` on (0: from
    the beginning), then live; each text event carries `next`, the number of pieces read
    through it (where a follower that lost the stream starts again, so nothing is missed or
    repeated). The last event says how it ended. Ends early (without that event) if the
    caller is gone."""
    seen = max(0, start)
    while True:
        fresh, alive = proc.read_output(seen, params.KERNEL_POLL_S)
        seen += len(fresh)
        if fresh:
            yield {"text": "".join(fresh), "next": seen}
        if not alive:
            yield {
                "done": True,
                "exit_status": proc.exit_status,
                "error": proc.error,
                "process": proc.info(),
            }
            return
        if not fresh and caller.gone():
            return


# --- installed programs (the network's programs) -------------------------------------------------


def program_dirs(kernel: Kernel, owner: str) -> list[Path]:
    """Where `owner`'s bare program names are looked up: their own, then the system's."""
    home = kernel.system.home
    own = home / params.USERS_DIR_NAME / principals.owner_name(owner) / params.PROGRAMS_DIR_NAME
    return [own, home / params.PROGRAMS_DIR_NAME]


def _check_program_name(name: str) -> str:
    if not _PROGRAM_NAME.fullmatch(name):
        raise InputError(
            f"invalid program name {name!r}: use letters, digits, '_', '.', '-' "
            f"(starting with a letter or digit), at most {params.PROGRAM_NAME_MAX} characters"
        )
    return name


def installed(kernel: Kernel, caller: Caller, name: str) -> Program:
    """The installed program `name` the caller sees (their own first); ProgramError naming
    no file of the server if there is none."""
    _check_program_name(name)
    for directory in program_dirs(kernel, caller.owner):
        for candidate in program_mod.candidates(directory, name):
            if candidate.is_file() and not candidate.is_symlink():
                return program_mod.load(candidate)
    raise NoSuchProgramError(f"no installed program named {name!r}")


def _check_model(model: str | None) -> None:
    """A model a remote caller names is a CPU, never a file of this machine."""
    if model is not None and (
        model.endswith(".gguf") or model.startswith(("/", ".", "~")) or "\\" in model
    ):
        raise InputError(f"model {model!r} is not one this service offers (see /v1/models)")


def _exec(kernel: Kernel, caller: Caller, req: ExecRequest) -> dict[str, Any]:
    _check_model(req.model)
    program = installed(kernel, caller, req.program)
    _check_model(program.model)
    proc = kernel.spawn(
        program,
        with_stdin(dict(req.inputs), req.stdin),
        owner=caller.owner,
        model=req.model,
        priority=req.priority,
        budget=req.budget,
    )
    return {"pid": proc.pid, "process": proc.info()}


def chat_program(kernel: Kernel, caller: Caller, req: ChatRequest) -> Program:
    """The program a chat completion runs: an installed `program/NAME` with the conversation's
    last user message as its input (a JSON object there fills a program's declared inputs), or
    the conversation itself on a CPU (`embedded`, an alias), with the request's sampling."""
    config: dict[str, Any] = {}
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.model.startswith(params.PROGRAM_MODEL_PREFIX):
        program = installed(kernel, caller, req.model[len(params.PROGRAM_MODEL_PREFIX) :])
        _check_model(program.model)
        return dataclasses.replace(program, config={**program.config, **config})
    _check_model(req.model)
    messages = [
        {"role": m.role if m.role != "developer" else "system", "content": m.content}
        for m in req.messages
    ]
    return program_mod.chat(
        messages,
        model=req.model,
        config=config,
        output_schema=req.json_schema,
        json_output=req.json_object,
    )


def chat_inputs(program: Program, req: ChatRequest) -> dict[str, Any]:
    """What a `program/NAME` completion gives its program: the last user message as `input`,
    or, for a program whose declared inputs are other than `input`, that message parsed as a
    JSON object of them."""
    if program.kind == "chat":
        return {}
    users = [m.content for m in req.messages if m.role == "user"]
    text = users[-1] if users else req.messages[-1].content
    props = (program.input_schema or {}).get("properties", {})
    if props and "input" not in props:
        try:
            value = json.loads(text)
        except ValueError:
            raise InputError(
                f"program {program.name} takes {', '.join(props)}: send them as a JSON object "
                "in the last user message"
            ) from None
        if not isinstance(value, dict):
            raise InputError(f"program {program.name} takes a JSON object of its inputs")
        return value
    return {"input": text}


def _chat(kernel: Kernel, caller: Caller, req: ChatRequest) -> dict[str, Any]:
    program = chat_program(kernel, caller, req)
    proc = kernel.spawn(
        program,
        chat_inputs(program, req),
        owner=caller.owner,
        model=None if program.kind != "chat" else req.model,
        priority=req.priority,
    )
    return {"pid": proc.pid, "process": proc.info()}


def _embed(kernel: Kernel, caller: Caller, req: EmbedRequest) -> dict[str, Any]:
    from llmos.store import embed  # numpy and the embedding model only when asked

    vectors = embed.embed(list(req.texts))
    return {"vectors": vectors.tolist(), "tokens": embed.count_tokens(list(req.texts))}


def _program_info(program: Program, scope: str) -> dict[str, Any]:
    return {
        "name": program.name,
        "description": program.description,
        "kind": program.kind,
        "scope": scope,
        "model": program.model,
        "tools": list(program.tools),
        "input_schema": program.input_schema,
        "output_format": program.output_format,
        "output_schema": program.output_schema,
    }


def _programs_list(kernel: Kernel, caller: Caller, req: Empty) -> dict[str, Any]:
    own, system = program_dirs(kernel, caller.owner)
    seen: set[str] = set()
    rows = []
    for directory, scope in ((own, "user"), (system, "system")):
        for program in program_mod.discover([directory]):
            if program.name in seen:
                continue  # the caller's own one shadows the system's
            seen.add(program.name)
            rows.append(_program_info(program, scope))
    return {"programs": rows}


def _programs_show(kernel: Kernel, caller: Caller, req: ProgramNameRequest) -> dict[str, Any]:
    program = installed(kernel, caller, req.name)
    own = program_dirs(kernel, caller.owner)[0]
    scope = "user" if own in program.path.parents else "system"
    return {"program": {**_program_info(program, scope), "source": program.source}}


def _program_dir(kernel: Kernel, caller: Caller, system: bool, create: bool) -> Path:
    if system and not caller.admin:
        raise AccessError("only an admin may change the system's programs")
    directory = program_dirs(kernel, caller.owner)[1 if system else 0]
    if create:
        for parent in reversed([directory, *directory.parents]):
            if not parent.exists():
                parent.mkdir(mode=params.PRIVATE_DIR_MODE)
    return directory


def _programs_install(kernel: Kernel, caller: Caller, req: InstallRequest) -> dict[str, Any]:
    name = _check_program_name(req.name)
    directory = _program_dir(kernel, caller, req.system, create=True)
    target = directory / f"{name}.{req.format}"
    for other in program_mod.candidates(directory, name):
        if other != target and other.exists():
            raise InputError(f"program {name!r} is installed as another kind; remove it first")
    staging = directory / f".{name}.{secrets.token_hex(4)}.{req.format}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, params.PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(req.source)
        program = program_mod.load(staging)  # it must load before it is installed
        _check_model(program.model)
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        raise
    return {"program": _program_info(program_mod.load(target), "system" if req.system else "user")}


def _programs_remove(kernel: Kernel, caller: Caller, req: RemoveRequest) -> dict[str, Any]:
    name = _check_program_name(req.name)
    directory = _program_dir(kernel, caller, req.system, create=False)
    for candidate in program_mod.candidates(directory, name):
        if candidate.is_file():
            candidate.unlink()
            return {"removed": name}
    raise NoSuchProgramError(f"no installed program named {name!r}")


def _spawn_op(kernel: Kernel, caller: Caller, req: SpawnRequest) -> dict[str, Any]:
    proc = spawn(kernel, caller, req)
    return {"pid": proc.pid, "process": proc.info()}


def owned(kernel: Kernel, caller: Caller, pid: int) -> Process:
    """Process `pid` if the caller may act on it; otherwise NoSuchProcessError worded exactly
    as for a pid that does not exist."""
    proc = kernel.table.get(pid)
    if not caller.may_act_on(proc.owner):
        raise NoSuchProcessError(f"no process with pid {pid}")
    return proc


def _get(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
    proc = owned(kernel, caller, req.pid)
    return {"process": proc.info(), "question": kernel.question(req.pid)}


def _ps(kernel: Kernel, caller: Caller, req: PsRequest) -> dict[str, Any]:
    owner = None if caller.admin else caller.owner
    return {"processes": kernel.ps(include_exited=req.all, owner=owner)}


def _signal(action: str) -> Handler:
    def handler(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
        owned(kernel, caller, req.pid)
        proc = {"kill": kernel.kill, "stop": kernel.stop, "cont": kernel.cont}[action](req.pid)
        return {"process": proc.info()}

    return handler


def _renice(kernel: Kernel, caller: Caller, req: ReniceRequest) -> dict[str, Any]:
    old = owned(kernel, caller, req.pid).priority
    proc = kernel.renice(req.pid, req.priority)
    return {"process": proc.info(), "old_priority": old}


def _wait(kernel: Kernel, caller: Caller, req: WaitRequest) -> dict[str, Any] | None:
    """The process once it exits (or when the timeout passes); None if the caller left."""
    proc = owned(kernel, caller, req.pid)
    deadline = None if req.timeout is None else time.monotonic() + req.timeout
    timed_out = False
    while True:
        step = params.KERNEL_POLL_S
        if deadline is not None:
            step = max(0.0, min(step, deadline - time.monotonic()))
        if proc.wait(step):
            break
        if deadline is not None and time.monotonic() >= deadline:
            timed_out = True
            break
        if caller.gone():
            return None
    return {"process": proc.info(), "text": proc.text, "timed_out": timed_out}


def _follow(kernel: Kernel, caller: Caller, req: PidRequest) -> Iterator[dict[str, Any]]:
    return follow_process(owned(kernel, caller, req.pid), caller)


def _answer(kernel: Kernel, caller: Caller, req: AnswerRequest) -> dict[str, Any]:
    owned(kernel, caller, req.pid)
    return {"process": kernel.answer(req.pid, req.text).info()}


def _decide(approve: bool) -> Handler:
    def handler(kernel: Kernel, caller: Caller, req: PidRequest) -> dict[str, Any]:
        owned(kernel, caller, req.pid)  # another owner's process: as if it did not exist
        decide = kernel.approve if approve else kernel.deny
        return {"process": decide(req.pid, caller.owner).info()}

    return handler


def _audit(kernel: Kernel, caller: Caller, req: AuditRequest) -> dict[str, Any]:
    """The caller's audit records (filtered); with `verify`, the whole chain checked."""
    trail = kernel.audit()
    reply: dict[str, Any] = {
        "records": trail.query(
            caller.owner, pid=req.pid, device=req.device, decision=req.decision, limit=req.limit
        )
    }
    if req.verify:
        v = trail.verify()
        reply["verify"] = {
            "ok": v.ok,
            "records": v.records,
            "broken_at": v.broken_at,
            "reason": v.reason,
        }
    return reply


def _top(kernel: Kernel, caller: Caller, req: Empty) -> dict[str, Any]:
    """The kernel's snapshot; a caller who is not an admin sees only their own processes and
    account (the CPUs' figures are shared)."""
    snap = kernel.top()
    if not caller.admin:
        snap["processes"] = [p for p in snap["processes"] if p["owner"] == caller.owner]
        snap["users"] = {o: u for o, u in snap["users"].items() if o == caller.owner}
    return snap


# --- memory and shared segments ------------------------------------------------------------------


def _remember(kernel: Kernel, caller: Caller, req: RememberRequest) -> dict[str, Any]:
    mid = kernel.system.memory.remember(caller.owner, req.text, req.tags, source="cli")
    return {"id": mid}


def _recall(kernel: Kernel, caller: Caller, req: RecallRequest) -> dict[str, Any]:
    hits = kernel.system.memory.recall(caller.owner, req.query, req.k)
    return {"hits": [h.to_json() for h in hits]}


def _forget(kernel: Kernel, caller: Caller, req: IdRequest) -> dict[str, Any]:
    if not kernel.system.memory.forget(caller.owner, req.id):
        raise InputError(f"no memory m{req.id} of {caller.owner}")
    return {"forgotten": req.id}


def _memories(kernel: Kernel, caller: Caller, req: ListRequest) -> dict[str, Any]:
    return {"hits": [h.to_json() for h in kernel.system.memory.memories(caller.owner, req.limit)]}


def _page(kernel: Kernel, caller: Caller, req: IdRequest) -> dict[str, Any]:
    page = kernel.system.memory.page(caller.owner, req.id)
    if page is None:
        raise InputError(f"no page p{req.id} of {caller.owner}")
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
    """Usage per owner and day (ledger plus live processes), priced at the configured prices."""
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
    return {
        "usage": out,
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
    """One logged run as the API shows it."""
    return {
        "id": r.id,
        "owner": r.owner,
        "program": r.program,
        "cpu": r.cpu,
        "status": r.status,
        "inputs": r.inputs,
        "response": r.response,
        "error_kind": r.error_kind,
        "error": r.error,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "duration_ms": r.duration_ms,
        "ttft_ms": r.ttft_ms,
        "parent_run": r.parent_run,
    }


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


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("spawn", SpawnRequest, _spawn_op),
        Op("ps", PsRequest, _ps),
        Op("kill", PidRequest, _signal("kill")),
        Op("stop", PidRequest, _signal("stop")),
        Op("cont", PidRequest, _signal("cont")),
        Op("renice", ReniceRequest, _renice),
        Op("wait", WaitRequest, _wait),
        Op("follow", PidRequest, _follow, streams=True),
        Op("answer", AnswerRequest, _answer),
        Op("approve", PidRequest, _decide(True)),
        Op("deny", PidRequest, _decide(False)),
        Op("audit", AuditRequest, _audit),
        Op("top", Empty, _top),
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
