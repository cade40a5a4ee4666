"""Shared memory: named text segments that several processes (and users) read and write.

A segment (`SharedSegment`, a row of the memory store's `shm` table) has a name
(`[a-z0-9._-]`, at most params.SHM_NAME_MAX), an owner, its text (at most
params.SHM_MAX_BYTES), a version that every write bumps, and rights:
- the owner may always read, write, change rights and remove it;
- `acl` gives named users "r" (read) or "rw" (read and write);
- `others` gives everyone else "", "r" or "rw" (default "": private).

A process reaches segments through the `shm_read`, `shm_write` and `shm_list` devices (as
its owner), or has them attached to its context at spawn (`llmos.shm: [name, ...]`, read
right needed); people use `llmos shm`. A write may say which version it expects
(`if_version`), so two writers cannot silently overwrite each other (compare-and-swap).

Invariants: a right is checked on every access, inside the transaction that uses it; a
refused access raises AccessError and changes nothing; a missing segment is a NotFoundError
for reads and is created (owned by the writer, private) by a write; an append starts a new
line (a newline goes between the old text and the new unless one of them has it already).

What this module does not do: decide who a caller is (the kernel passes the process's owner,
the command line the OS user), or label what was read as untrusted (a later security layer
builds on these rights).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from llmos import params
from llmos.errors import AccessError, InputError, NotFoundError, QuotaError
from llmos.store.memory import MemoryStore, check_text

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
MODES = ("", "r", "rw")


@dataclass
class SharedSegment:
    name: str
    owner: str
    text: str
    others: str
    acl: dict[str, str]
    version: int
    updated_at: float
    updated_by: str

    def mode_for(self, user: str) -> str:
        if user == self.owner:
            return "rw"
        return self.acl.get(user, self.others)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "others": self.others,
            "acl": self.acl,
            "version": self.version,
            "bytes": len(self.text.encode("utf-8")),
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > params.SHM_NAME_MAX or not _NAME.match(name):
        raise InputError(
            f"bad segment name {name!r}: use a-z, 0-9, '.', '_' and '-', at most "
            f"{params.SHM_NAME_MAX} characters, starting with a letter or digit"
        )
    return name


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"bad access mode {mode!r}: use '', 'r' or 'rw'")
    return mode


class SharedMemory:
    """Shared segments in a MemoryStore."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def _get(self, name: str) -> SharedSegment | None:
        rows = self.store.db.read(
            "SELECT name, owner, text, others, acl, version, updated_at, updated_by FROM shm "
            "WHERE name = ?",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        return SharedSegment(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7])

    def read(self, user: str, name: str) -> SharedSegment:
        seg = self._get(check_name(name))
        if seg is None:
            raise NotFoundError(f"no shared segment named {name!r}")
        if "r" not in seg.mode_for(user):
            raise AccessError(f"{user} may not read shared segment {name!r}")
        return seg

    def list(self, user: str) -> list[SharedSegment]:
        rows = self.store.db.read(
            "SELECT name, owner, text, others, acl, version, updated_at, updated_by FROM shm "
            "ORDER BY name"
        )
        segs = [
            SharedSegment(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows
        ]
        return [s for s in segs if "r" in s.mode_for(user)]

    def create(
        self,
        user: str,
        name: str,
        text: str = "",
        *,
        others: str = "",
        acl: dict[str, str] | None = None,
    ) -> SharedSegment:
        check_name(name)
        check_mode(others)
        acl = {u: check_mode(m) for u, m in (acl or {}).items()}
        _check_size(text)
        with self.store.db.transaction("shm create") as conn:
            if conn.execute("SELECT 1 FROM shm WHERE name = ?", (name,)).fetchone():
                raise InputError(f"shared segment {name!r} already exists")
            conn.execute(
                "INSERT INTO shm VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                (name, user, text, others, json.dumps(acl), time.time(), user),
            )
        return self.read(user, name)

    def write(
        self,
        user: str,
        name: str,
        text: str,
        *,
        append: bool = False,
        if_version: int | None = None,
        quota: int = params.QUOTA_SHM_SEGMENTS,
    ) -> SharedSegment:
        """Replace (or append to) a segment's text; creates a private one if it is missing
        (QuotaError when `user` already owns `quota` segments)."""
        check_name(name)
        if text:
            check_text(text, "segment text", params.SHM_MAX_BYTES)
        with self.store.db.transaction("shm write") as conn:
            row = conn.execute(
                "SELECT owner, text, others, acl, version FROM shm WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                if if_version not in (None, 0):
                    raise NotFoundError(
                        f"no shared segment named {name!r} (expected v{if_version})"
                    )
                _check_size(text)
                (owned,) = conn.execute(
                    "SELECT COUNT(*) FROM shm WHERE owner = ?", (user,)
                ).fetchone()
                if owned >= quota:
                    raise QuotaError(f"{user} owns {owned} shared segments; the quota is {quota}")
                conn.execute(
                    "INSERT INTO shm VALUES (?, ?, ?, '', '{}', 1, ?, ?)",
                    (name, user, text, time.time(), user),
                )
            else:
                owner, old, others, acl, version = row
                mode = "rw" if user == owner else json.loads(acl).get(user, others)
                if "w" not in mode:
                    raise AccessError(f"{user} may not write shared segment {name!r}")
                if if_version is not None and if_version != version:
                    raise InputError(
                        f"shared segment {name!r} is at version {version}, not {if_version}"
                    )
                # An append is a new line: the old text and the new never run together.
                joined = old.endswith("\n") or text.startswith("\n")
                sep = "\n" if append and old and text and not joined else ""
                new = old + sep + text if append else text
                _check_size(new)
                conn.execute(
                    "UPDATE shm SET text = ?, version = version + 1, updated_at = ?, "
                    "updated_by = ? WHERE name = ?",
                    (new, time.time(), user, name),
                )
        return self.read(user, name)

    def chmod(
        self,
        user: str,
        name: str,
        *,
        others: str | None = None,
        grant: dict[str, str] | None = None,
    ) -> SharedSegment:
        """Change rights (owner only). `grant` maps users to modes; mode '' revokes."""
        check_name(name)
        with self.store.db.transaction("shm chmod") as conn:
            row = conn.execute("SELECT owner, acl FROM shm WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no shared segment named {name!r}")
            if row[0] != user:
                raise AccessError(f"only {row[0]} may change the rights of {name!r}")
            acl = json.loads(row[1])
            for who, mode in (grant or {}).items():
                if check_mode(mode):
                    acl[who] = mode
                else:
                    acl.pop(who, None)
            sets, args = ["acl = ?"], [json.dumps(acl)]
            if others is not None:
                sets.append("others = ?")
                args.append(check_mode(others))
            conn.execute(f"UPDATE shm SET {', '.join(sets)} WHERE name = ?", (*args, name))
        return self.read(user, name)

    def remove(self, user: str, name: str) -> None:
        check_name(name)
        with self.store.db.transaction("shm remove") as conn:
            row = conn.execute("SELECT owner FROM shm WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no shared segment named {name!r}")
            if row[0] != user:
                raise AccessError(f"only {row[0]} may remove {name!r}")
            conn.execute("DELETE FROM shm WHERE name = ?", (name,))


def _check_size(text: str) -> None:
    n = len(text.encode("utf-8", "surrogatepass"))
    if n > params.SHM_MAX_BYTES:
        raise InputError(f"segment text is {n} bytes; the limit is {params.SHM_MAX_BYTES}")
