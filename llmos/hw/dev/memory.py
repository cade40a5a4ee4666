"""The memory devices: long-term memory, paged-out context, and shared memory segments.

    remember {text, tags?}        store a memory for the process's owner; returns its id (m12)
    recall {query, k?, source?}   the owner's memories and this process's paged-out pages most
                                  relevant to the query (hybrid BM25 + vectors), best first;
                                  long texts come as a snippet around the query's words
    forget {id}                   delete one of the owner's memories
    page_in {page}                the text of a page this process paged out (p7), back in view
    shm_read {name}               a shared segment's text (read right needed)
    shm_write {name, text, append?, if_version?}
                                  replace or extend a shared segment (write right needed)
    shm_list {}                   the segments the owner may read

They act for the process's owner, through the handles the kernel sets at spawn: `ctx.memory`
(a `MemoryHandle`: the owner's memories and this process's swap store) and `ctx.shm` (a
`ShmHandle`). The handle's recall and page_in mark what they return as referenced, for the
LRU paging policy, and recall shows long texts as snippets.

Invariants: never raises for a failure of its own work (bad input, a missing page, a refused
access, a store that fails are error results); each result is bounded (params).

What this module does not do: store, rank or snippet anything (see `llmos.store.memory` and
`llmos.kernel.handles`), or check rights (see `llmos.store.shm`).
"""

from __future__ import annotations

import re
from typing import Any

from llmos import params
from llmos.errors import LlmosError
from llmos.hw.dev.base import (
    CallContext,
    Device,
    DeviceResult,
    MemoryHandle,
    ShmHandle,
    truncate_text,
)

NO_MEMORY = "memory devices need the kernel's memory manager (run the program with llmos run)"
_REF = re.compile(r"^\s*([mp]?)(\d+)\s*$")


def _parse_ref(value: Any, prefix: str) -> int | None:
    match = _REF.match(str(value))
    if match is None or match.group(1) not in ("", prefix):
        return None
    return int(match.group(2))


class _MemoryDevice(Device):
    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        if ctx.memory is None:
            return DeviceResult.failure(NO_MEMORY)
        try:
            return self.run(args, ctx, ctx.memory)
        except LlmosError as exc:
            return DeviceResult.failure(str(exc))

    def run(self, args: dict[str, Any], ctx: CallContext, memory: MemoryHandle) -> DeviceResult:
        raise NotImplementedError


class _ShmDevice(Device):
    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        if ctx.shm is None:
            return DeviceResult.failure(NO_MEMORY)
        try:
            return self.run(args, ctx, ctx.shm)
        except LlmosError as exc:
            return DeviceResult.failure(str(exc))

    def run(self, args: dict[str, Any], ctx: CallContext, shm: ShmHandle) -> DeviceResult:
        raise NotImplementedError


class RememberDevice(_MemoryDevice):
    name = "remember"
    description = "Store a fact in long-term memory, kept across runs and reboots. Returns its id."
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "the fact, in one or two sentences"},
            "tags": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": params.MEMORY_MAX_TAGS,
            },
        },
        "required": ["text"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: CallContext, memory: MemoryHandle) -> DeviceResult:
        mid = memory.remember(args["text"], list(args.get("tags") or []))
        return DeviceResult.success({"id": f"m{mid}"})


class RecallDevice(_MemoryDevice):
    name = "recall"
    description = (
        "Search long-term memory and this process's paged-out context. Returns the most "
        "relevant entries (ids m.. for memories, p.. for pages), best first."
    )
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "k": {"type": "integer", "minimum": 1, "maximum": params.RECALL_MAX_K},
            "source": {"type": "string", "enum": ["all", "memories", "pages"]},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: CallContext, memory: MemoryHandle) -> DeviceResult:
        k = int(args.get("k") or params.RECALL_DEFAULT_K)
        return DeviceResult.success(memory.recall(args["query"], k, args.get("source") or "all"))


class ForgetDevice(_MemoryDevice):
    name = "forget"
    description = "Delete one of your long-term memories by its id (m12)."
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {"id": {"type": ["string", "integer"]}},
        "required": ["id"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: CallContext, memory: MemoryHandle) -> DeviceResult:
        mid = _parse_ref(args["id"], "m")
        if mid is None:
            return DeviceResult.failure(f"bad memory id {args['id']!r} (expected m<number>)")
        if not memory.forget(mid):
            return DeviceResult.failure(f"no memory m{mid} of {ctx.owner}")
        return DeviceResult.success({"forgotten": f"m{mid}"})


class PageInDevice(_MemoryDevice):
    name = "page_in"
    description = "Read back a page of context that was paged out (p7), in full."
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {"page": {"type": ["string", "integer"]}},
        "required": ["page"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: CallContext, memory: MemoryHandle) -> DeviceResult:
        page_id = _parse_ref(args["page"], "p")
        page = None if page_id is None else memory.page_in(page_id)
        if page is None:
            return DeviceResult.failure(f"no page {args['page']!r} of this process")
        text, cut = truncate_text(page["text"], params.PAGE_IN_MAX_BYTES)
        out: dict[str, Any] = {"page": f"p{page_id}", "kind": page["kind"], "text": text}
        if cut:
            out["truncated"] = True
        return DeviceResult.success(out)


class ShmReadDevice(_ShmDevice):
    name = "shm_read"
    description = "Read a shared memory segment by name."
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: CallContext, shm: ShmHandle) -> DeviceResult:
        seg = shm.read(args["name"])
        text, cut = truncate_text(
            seg["text"], ctx.max_output_bytes - params.SHM_READ_ENVELOPE_BYTES
        )
        out: dict[str, Any] = {"name": seg["name"], "version": seg["version"], "text": text}
        if cut:
            out["truncated"] = True
        return DeviceResult.success(out)


class ShmWriteDevice(_ShmDevice):
    name = "shm_write"
    description = (
        "Write a shared memory segment (replace its text, or append). Creates a private "
        "segment if none has that name. if_version makes the write fail if someone else "
        "wrote first."
    )
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "text": {"type": "string"},
            "append": {"type": "boolean"},
            "if_version": {"type": "integer", "minimum": 0},
        },
        "required": ["name", "text"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: CallContext, shm: ShmHandle) -> DeviceResult:
        return DeviceResult.success(
            shm.write(
                args["name"],
                args["text"],
                append=bool(args.get("append")),
                if_version=args.get("if_version"),
            )
        )


class ShmListDevice(_ShmDevice):
    name = "shm_list"
    description = "List the shared memory segments you may read."
    schema = {"type": "object", "properties": {}, "additionalProperties": False}  # noqa: RUF012

    def run(self, args: dict[str, Any], ctx: CallContext, shm: ShmHandle) -> DeviceResult:
        return DeviceResult.success(shm.list())


DEVICES = (
    RememberDevice,
    RecallDevice,
    ForgetDevice,
    PageInDevice,
    ShmReadDevice,
    ShmWriteDevice,
    ShmListDevice,
)
