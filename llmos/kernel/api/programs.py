"""The kernel API's installed programs and completions: `exec` (the network's spawn: a bare
installed name, never a path), `programs.*` (list, show, install, remove; per user and
system-wide), `chat` (a chat completion as a process: an installed `program/NAME` or a CPU
running the conversation as it is) and `embed` (the embedding model memory ships).

Invariants: a remote caller never names a file of this machine: program names match
params.PROGRAM_NAME_PATTERN and are looked up only in the caller's and the system's program
folders; a model is a CPU, never a `.gguf` or a path; a program is installed only after it
loads, written owner-only and moved into place whole.

What this does not do: transport (the HTTP service and the daemon call these through the table).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field

from llmos import params
from llmos.errors import (
    AccessError,
    InputError,
    NoSuchProgramError,
)
from llmos.hw.cpu.base import ToolSpec
from llmos.hw.cpu.grammar import CALL_CLOSE, CALL_OPEN
from llmos.kernel import program as program_mod
from llmos.kernel.api.base import Caller, Empty, Request
from llmos.kernel.api.procs import with_stdin
from llmos.kernel.core import Kernel
from llmos.kernel.program import Program
from llmos.kernel.security import principals

_PROGRAM_NAME = re.compile(params.PROGRAM_NAME_PATTERN)


class ExecRequest(Request):
    program: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX)
    inputs: dict[str, Any] = Field(default_factory=dict)
    stdin: str | None = None
    model: str | None = None
    priority: int | None = Field(default=None, ge=params.MIN_PRIORITY, le=params.MAX_PRIORITY)
    budget: int | None = Field(default=None, ge=0)


class ChatToolCall(Request):
    """A call an assistant message made to one of the caller's functions (as sent back)."""

    id: str = Field(default="", max_length=params.CHAT_TOOL_ID_MAX)
    name: str = Field(pattern=params.CHAT_TOOL_NAME_PATTERN)
    arguments: str = Field(default="{}", max_length=params.PROGRAM_MAX_BYTES)


class ChatMessage(Request):
    role: str = Field(pattern=r"^(system|developer|user|assistant|tool)$")
    content: str = Field(max_length=params.PROGRAM_MAX_BYTES)
    tool_calls: list[ChatToolCall] = Field(default_factory=list, max_length=params.CHAT_MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=params.CHAT_TOOL_ID_MAX)


class ChatTool(Request):
    """A function the caller declares and runs itself (OpenAI `tools`)."""

    name: str = Field(pattern=params.CHAT_TOOL_NAME_PATTERN)
    description: str = Field(default="", max_length=params.CHAT_TOOL_DESCRIPTION_MAX)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ChatRequest(Request):
    model: str = Field(min_length=1, max_length=params.PROGRAM_NAME_MAX + 16)
    messages: list[ChatMessage] = Field(min_length=1, max_length=params.CHAT_MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    json_object: bool = False
    json_schema: dict[str, Any] | None = None
    tools: list[ChatTool] = Field(default_factory=list, max_length=params.CHAT_MAX_TOOLS)
    tool_choice: str = Field(default="auto", max_length=64)  # auto|none|required|a tool's name
    priority: int | None = Field(default=None, ge=params.MIN_PRIORITY, le=params.MAX_PRIORITY)


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
        program = dataclasses.replace(program, config={**program.config, **config})
    else:
        _check_model(req.model)
        program = program_mod.chat(
            [_cpu_message(m) for m in req.messages],
            model=req.model,
            config=config,
            output_schema=req.json_schema,
            json_output=req.json_object,
        )
    return _with_client_tools(program, req)


def _cpu_message(m: ChatMessage) -> dict[str, Any]:
    """A chat message as a CPU reads it: an assistant's calls to the caller's functions ride
    as `tool_calls` and, for text-only chat templates, as the call written out; a function's
    result is a `tool` message naming its call."""
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
    out["content"] = m.content
    if m.role == "assistant" and m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in m.tool_calls
        ]
        if not m.content:
            first = m.tool_calls[0]
            out["content"] = (
                f'{CALL_OPEN}{{"name": {json.dumps(first.name)}, "arguments": '
                f"{first.arguments or '{}'}}}{CALL_CLOSE}"
            )
    if m.role == "tool" and m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _with_client_tools(program: Program, req: ChatRequest) -> Program:
    """`program` with the caller's functions: a call to one ends the process with the call
    (llmos.kernel.loop). `tool_choice` `required` or a function's name makes the first reply
    a call (by grammar on the embedded CPU); `none` hides them."""
    names = [t.name for t in req.tools]
    if len(set(names)) != len(names):
        raise InputError("tools: two functions have the same name")
    choice = req.tool_choice
    if not req.tools:
        if choice not in ("auto", "none"):
            raise InputError(f"tool_choice {choice!r} needs tools")
        return program
    if choice == "none":
        return program
    if program.tools or program.llmos.get("devices"):
        raise InputError(
            f"program {program.name!r} uses devices of its own; it takes no client tools"
        )
    specs = [ToolSpec(t.name, t.description, dict(t.parameters)) for t in req.tools]
    llmos = dict(program.llmos)
    if choice not in ("auto", "required"):
        specs = [s for s in specs if s.name == choice]
        if not specs:
            raise InputError(f"tool_choice names no declared function: {choice!r}")
    if choice != "auto":
        llmos["tool_choice"] = "required"
    return dataclasses.replace(program, client_tools=specs, llmos=llmos)


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
