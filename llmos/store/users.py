"""The service's users and their bearer tokens: `users.db` in the home directory.

`llmos user add NAME [--admin]` creates a user and prints a token once; the store keeps only
the token's SHA-256 (a token is 32 random bytes, so a fast hash is as good as a slow one: there
is nothing to guess). `rotate` issues a new token and revokes the old ones; `revoke` revokes
every token of a user (who keeps their processes, memories and files but cannot log in until a
`rotate`); `remove` deletes the user and their tokens. `authenticate(token)` answers the user a
live token belongs to, or None.

Tables: `users` (name, admin, created_at) and `tokens` (hash, name, created_at, revoked_at,
last_used_at). The name is the owner name the kernel runs the user's processes under, so it
follows the same rule (params.OWNER_NAME_PATTERN, at most params.OWNER_NAME_MAX characters).

Invariants:
- No token is stored or logged in clear; a token is shown once, by the command that made it.
- A revoked token never authenticates again, also after a restart (revocation is a row, not
  a cache entry).
- The file is owner-only (0600) from creation, like every store (`llmos.store.db`).

What this does not do: decide what a user may do (the kernel's principals and policy do), or
carry the HTTP side of authentication (`llmos.front.serve.auth`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from llmos import params
from llmos.errors import AuthError
from llmos.store.db import Database, Migration

_NAME = re.compile(params.OWNER_NAME_PATTERN)


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            admin INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE tokens (
            hash TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            revoked_at REAL,
            last_used_at REAL
        )"""
    )
    conn.execute("CREATE INDEX tokens_name ON tokens(name)")


MIGRATIONS: list[Migration] = [("001_users", _create)]


@dataclass(frozen=True)
class User:
    name: str
    admin: bool
    created_at: float


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    raw = secrets.token_bytes(params.TOKEN_BYTES)
    return params.TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def check_name(name: str) -> str:
    """`name` if it can be a user (and so an owner) name; AuthError otherwise."""
    if len(name) > params.OWNER_NAME_MAX or not _NAME.fullmatch(name):
        raise AuthError(
            f"invalid user name {name!r}: use lower-case letters, digits, '_', '.', '-' "
            f"(starting with a letter or '_', at most {params.OWNER_NAME_MAX} characters)"
        )
    return name


class UserStore:
    """The users of one home. Thread-safe (one connection behind the db lock)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, path: Path) -> UserStore:
        db = Database.open(
            path,
            label="user store",
            error=AuthError,
            migrations=MIGRATIONS,
            busy_timeout_s=params.USERS_BUSY_TIMEOUT_S,
            pragmas=("PRAGMA foreign_keys = ON",),
        )
        return cls(db)

    def add(self, name: str, *, admin: bool = False) -> str:
        """Create user `name` and return their first token (the only time it is shown)."""
        check_name(name)
        token = new_token()
        now = time.time()
        with self.db.transaction("add a user") as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AuthError(f"user {name} already exists (use `llmos user rotate {name}`)")
            conn.execute(
                "INSERT INTO users(name, admin, created_at) VALUES (?, ?, ?)",
                (name, int(admin), now),
            )
            conn.execute(
                "INSERT INTO tokens(hash, name, created_at) VALUES (?, ?, ?)",
                (token_hash(token), name, now),
            )
        return token

    def rotate(self, name: str) -> str:
        """A new token for `name`; every older one is revoked in the same transaction."""
        token = new_token()
        now = time.time()
        with self.db.transaction("rotate a token") as conn:
            self._must_exist(conn, name)
            conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now, name),
            )
            conn.execute(
                "INSERT INTO tokens(hash, name, created_at) VALUES (?, ?, ?)",
                (token_hash(token), name, now),
            )
        return token

    def revoke(self, name: str) -> int:
        """Revoke every live token of `name`; how many were live."""
        with self.db.transaction("revoke tokens") as conn:
            self._must_exist(conn, name)
            cur = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            return int(cur.rowcount)

    def remove(self, name: str) -> None:
        with self.db.transaction("remove a user") as conn:
            self._must_exist(conn, name)
            conn.execute("DELETE FROM tokens WHERE name = ?", (name,))
            conn.execute("DELETE FROM users WHERE name = ?", (name,))

    def set_admin(self, name: str, admin: bool) -> None:
        with self.db.transaction("change a user") as conn:
            self._must_exist(conn, name)
            conn.execute("UPDATE users SET admin = ? WHERE name = ?", (int(admin), name))

    def get(self, name: str) -> User | None:
        rows = self.db.read("SELECT name, admin, created_at FROM users WHERE name = ?", (name,))
        return User(rows[0][0], bool(rows[0][1]), rows[0][2]) if rows else None

    def list(self) -> list[dict[str, object]]:
        """Every user with their count of live tokens and when one was last used."""
        rows = self.db.read(
            """SELECT u.name, u.admin, u.created_at,
                      SUM(CASE WHEN t.revoked_at IS NULL AND t.hash IS NOT NULL THEN 1 ELSE 0 END),
                      MAX(t.last_used_at)
               FROM users u LEFT JOIN tokens t ON t.name = u.name
               GROUP BY u.name ORDER BY u.name"""
        )
        return [
            {
                "name": r[0],
                "admin": bool(r[1]),
                "created_at": r[2],
                "live_tokens": int(r[3] or 0),
                "last_used_at": r[4],
            }
            for r in rows
        ]

    def authenticate(self, token: str) -> User | None:
        """The user a live `token` belongs to; None for an unknown or revoked one."""
        if not token.startswith(params.TOKEN_PREFIX) or len(token) > 256:
            return None
        rows = self.db.read(
            """SELECT u.name, u.admin, u.created_at FROM tokens t JOIN users u ON u.name = t.name
               WHERE t.hash = ? AND t.revoked_at IS NULL""",
            (token_hash(token),),
        )
        if not rows:
            return None
        return User(rows[0][0], bool(rows[0][1]), rows[0][2])

    def touch(self, token: str) -> None:
        """Note that `token` was used now (for `llmos user list`); best effort."""
        with contextlib.suppress(AuthError):
            self.db.execute(
                "UPDATE tokens SET last_used_at = ? WHERE hash = ?",
                (time.time(), token_hash(token)),
            )

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _must_exist(conn: sqlite3.Connection, name: str) -> None:
        if not conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise AuthError(f"no user named {name!r}")
