"""Principals: who is asking, as the kernel establishes it (never as a client states it).

An owner is a name the kernel gives a caller. Locally it is the OS user: the uid a front end
runs as (in-process commands) or the uid the kernel daemon reads from its socket peer
(SO_PEERCRED), looked up in the password database. A later network service will establish it
from a token. The owner names every per-owner thing: processes, runs in the log, memories,
pages, shared segments and the file namespace `<home>/users/<owner>/files`.

Invariants:
- A valid owner name is its own normal form: lower-case `params.OWNER_NAME_PATTERN`, at most
  `params.OWNER_NAME_MAX` characters. A name that is not valid (upper case, `@`, `/`, `..`,
  empty, too long) is refused with AccessError; it is never rewritten, so no two names map to
  one namespace (`bob@corp` and `bob_corp`, `Bob` and `bob` cannot meet).
- An admin is uid 0 or an owner listed in `params.ADMIN_OWNERS`; only an admin acts on other
  owners' processes and sees their runs.
- An OS user with no password entry, or whose name is not a valid owner, gets no principal
  (AccessError), never a fallback name such as the uid or "default".

What this module does not do: check ownership of a resource (the kernel's API and the stores
do, with the owner established here), authenticate remote callers, or map several OS users to
one owner. Not covered: two OS users whose names differ only in case; one of them is refused.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass

from llmos import params
from llmos.errors import AccessError

_NAME = re.compile(params.OWNER_NAME_PATTERN)


def owner_name(name: object) -> str:
    """`name` if it is a valid owner name; AccessError (one line) if it is not."""
    if not isinstance(name, str) or not name:
        raise AccessError(f"owner name must be a non-empty string, got {name!r}")
    if len(name) > params.OWNER_NAME_MAX:
        raise AccessError(
            f"owner name {name[:40]!r} is longer than {params.OWNER_NAME_MAX} characters"
        )
    if not _NAME.fullmatch(name):
        raise AccessError(
            f"owner name {name!r} is not valid: use lower-case letters, digits, '_', '.' and "
            "'-', starting with a letter or '_'"
        )
    return name


@dataclass(frozen=True)
class Principal:
    """An established owner, and whether it may act on every owner's processes."""

    owner: str
    admin: bool = False


def is_admin(owner: str, uid: int | None = None) -> bool:
    return uid == 0 or owner in params.ADMIN_OWNERS


def of_uid(uid: int) -> Principal:
    """The principal of OS user `uid` (its password-database name)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise AccessError(f"uid {uid} has no user name; it cannot own processes") from None
    owner = owner_name(name)
    return Principal(owner, is_admin(owner, uid))


def current() -> Principal:
    """The principal of the OS user this process runs as (its effective uid, never $USER)."""
    return of_uid(os.geteuid())


__all__ = ["Principal", "current", "is_admin", "of_uid", "owner_name"]
