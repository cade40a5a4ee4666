"""The bridge to the official `dotpromptz` package: its async API run from any thread,
Picoschema compiled to JSON Schema, templates checked at load and rendered into chat messages.

Invariants: no exception of dotpromptz escapes: a schema or template the package rejects is a
ProgramError naming the file, in one line; `render` and the rest work from any thread, with or
without a running event loop in it; rendered messages are `{"role", "content": str}` dicts with
roles system, user, assistant (dotprompt's `model`), each text stripped, empty ones dropped.

What this module does not do: read program files or their front matter (see
`llmos.kernel.program`), or validate inputs (see `llmos.kernel.inputs`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from llmos.errors import ProgramError
from llmos.hw.cpu.base import Message

_T = TypeVar("_T")
_ROLE_MAP = {"system": "system", "user": "user", "model": "assistant"}


def compile_schema(path: Path, which: str, schema: Any) -> dict[str, Any] | None:
    """Picoschema (or JSON Schema) to JSON Schema, checked against the metaschema."""
    if schema is None:
        return None
    from dotpromptz import picoschema_to_json_schema

    try:
        compiled = run_sync(lambda: picoschema_to_json_schema(schema))
    except Exception as exc:
        raise ProgramError(f"{path}: bad {which} schema: {one_line(exc)}") from exc
    if not isinstance(compiled, dict):
        raise ProgramError(f"{path}: bad {which} schema: it must describe an object")
    try:
        jsonschema.validators.validator_for(compiled).check_schema(compiled)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        at = f" at '{where}'" if where else ""
        raise ProgramError(f"{path}: bad {which} schema{at}: {exc.message}") from exc
    return compiled


def check_template(path: Path, text: str) -> None:
    from dotpromptz import Dotprompt

    async def compile_it() -> None:
        await Dotprompt().compile(text)

    try:
        run_sync(compile_it)
    except Exception as exc:
        raise ProgramError(f"{path}: bad template: {one_line(exc)}") from exc


async def _render_async(source: str, data: dict[str, Any]) -> Any:
    from dotpromptz import DataArgument, Dotprompt

    return await Dotprompt().render(source, DataArgument(input=data))


def render(path: Path, source: str, data: dict[str, Any]) -> list[Message]:
    """The messages `source` renders to with `data` as its input; ProgramError if it cannot."""

    async def go() -> list[Message]:
        from dotpromptz import TextPart

        try:
            rendered = await _render_async(source, data)
        except Exception as exc:
            raise ProgramError(f"{path}: cannot render: {one_line(exc)}") from exc
        out: list[Message] = []
        for index, message in enumerate(rendered.messages or [], start=1):
            role = getattr(message.role, "value", message.role)
            if role not in _ROLE_MAP:
                raise ProgramError(
                    f"{path}: message {index} has role '{role}' (llmos renders"
                    " system, user and model)"
                )
            texts: list[str] = []
            for part in message.content or []:
                if isinstance(part, TextPart):
                    texts.append(part.text or "")
                elif type(part).__name__ == "PendingPart":
                    continue  # a {{section}} placeholder: no text of its own
                else:
                    kind = type(part).__name__.removesuffix("Part").lower()
                    raise ProgramError(
                        f"{path}: message {index} has a {kind} part; llmos sends text only"
                    )
            content = "".join(texts).strip()
            if content:
                out.append({"role": _ROLE_MAP[role], "content": content})
        return out

    return run_sync(go)


def run_sync(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from sync code, in any thread, loop running or not."""

    async def main() -> _T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def one_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return one_line(exc.exceptions[0])
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text
