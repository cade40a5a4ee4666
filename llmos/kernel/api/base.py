"""The kernel API's common parts: who is asking (`Caller`), the strict request model every
operation's request derives from, an operation (`Op`), and `owned`, the ownership check every
operation on a pid goes through.

Invariants: a request model refuses unknown fields and coerces nothing (strict); a caller's
owner name is valid or the caller is not made; another owner's pid answers exactly like a pid
that does not exist.

What this does not do: define operations (`procs`, `programs`, `stores`) or the table
(`llmos.kernel.api`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from llmos.errors import (
    NoSuchProcessError,
)
from llmos.kernel.core import Kernel
from llmos.kernel.proc import Process
from llmos.kernel.security import principals


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


class PidRequest(Request):
    pid: int


class Empty(Request):
    pass


Handler = Callable[[Kernel, Caller, Any], Any]


@dataclass(frozen=True)
class Op:
    name: str
    request: type[Request]
    handler: Handler
    streams: bool = False  # the handler returns an iterator of events


def owned(kernel: Kernel, caller: Caller, pid: int) -> Process:
    """Process `pid` if the caller may act on it; otherwise NoSuchProcessError worded exactly
    as for a pid that does not exist."""
    proc = kernel.table.get(pid)
    if not caller.may_act_on(proc.owner):
        raise NoSuchProcessError(f"no process with pid {pid}")
    return proc
