"""The per-user policy file: what one user's programs may be granted, spend and keep.

`$LLMOS_HOME/users/<owner>/policy.toml` (TOML, read with the standard library's `tomllib`):

    devices = ["calc", "fs", "call", "github.*"]   # device patterns (fnmatch); `*` covers every
                                                   # device except those off by default (shell),
                                                   # which must be named
    call_paths = ["/srv/team-programs"]            # directories `call` may load programs from,
                                                   # beyond installed programs and project skills
    priority_max = 25
    approve = ["shell", "fs.write"]                # syscall patterns that need approval
    secret = ["fs:secrets/*"]                      # sources whose data is secret

    [budget]
    process_tokens = 50000    # most tokens one process, with all its descendants, may use
    user_tokens = 2000000     # most tokens the user may use in one kernel's life

    [quota]
    fs_bytes = 1048576        # bytes one process may write through fs
    fs_files = 100            # files one process may create through fs
    memories = 1000           # memories the user may hold
    shm_segments = 16         # shared segments the user may own
    syscalls = 500            # syscalls one process may make
    wall_s = 600              # wall time of one process
    descendants = 32          # processes one run may spawn below its top process
    tokens_per_day = 500000   # tokens the user's processes may use per UTC day (a spawn past
                              # it is refused until midnight UTC; absent: unlimited)
    max_processes = 8         # live processes the user may have, children included (absent:
                              # only the kernel's table limits them)

Every key is optional; an absent key (or an absent file) takes the default in `llmos.params`
(`POLICY_*`, `QUOTA_*`). `approve` and `secret` are only parsed and exposed here: the approval
and taint machinery reads them.

Invariants: a file that is not valid TOML, has an unknown key, a value of the wrong type or
range, or contradicts itself (a per-process token budget above the user's, a relative or `..`
call path) is a `PolicyError` naming the file and the line, never a silent allow-all; a policy
is re-read only when the file's mtime or size changes (`policy_for` caches it).

What this module does not do: enforce anything (the kernel's spawn with `llmos.kernel.spawn`,
the process handle and the quota guard do), decide who the owner is (the principals do), or
check who may edit the file (it lives in the user's directory under the 0700 home; a user who
can write it can raise their own limits, within what `llmos.params` caps and the kernel
enforces).
"""

from __future__ import annotations

import fnmatch
import re
import threading
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmos import params
from llmos.errors import PolicyError
from llmos.kernel.security import principals


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    process_tokens: int = Field(default=params.POLICY_PROCESS_TOKENS, ge=1)
    user_tokens: int = Field(default=params.POLICY_USER_TOKENS, ge=1)


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    fs_bytes: int = Field(default=params.QUOTA_FS_BYTES, ge=0)
    fs_files: int = Field(default=params.QUOTA_FS_FILES, ge=0)
    memories: int = Field(default=params.QUOTA_MEMORIES, ge=0)
    shm_segments: int = Field(default=params.QUOTA_SHM_SEGMENTS, ge=0)
    syscalls: int = Field(default=params.QUOTA_SYSCALLS, ge=0)
    wall_s: float = Field(default=params.QUOTA_WALL_S, gt=0)
    descendants: int = Field(default=params.QUOTA_DESCENDANTS, ge=0)
    tokens_per_day: int | None = Field(default=params.QUOTA_TOKENS_PER_DAY, ge=0)
    max_processes: int | None = Field(default=params.QUOTA_MAX_PROCESSES, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _int_seconds(cls, data: Any) -> Any:
        """`wall_s = 600` (an integer) is as good as `600.0`."""
        if isinstance(data, dict) and isinstance(data.get("wall_s"), int):
            data = {**data, "wall_s": float(data["wall_s"])}
        return data


class UserPolicy(BaseModel):
    """One user's policy (defaults when the file is absent)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    devices: list[str] = Field(default_factory=lambda: list(params.POLICY_DEVICES))
    call_paths: list[str] = Field(default_factory=list)
    priority_max: int = Field(
        default=params.POLICY_PRIORITY_MAX, ge=params.MIN_PRIORITY, le=params.MAX_PRIORITY
    )
    approve: list[str] = Field(default_factory=list)  # syscall patterns that need approval
    secret: list[str] = Field(default_factory=list)  # sources whose data is secret
    # effectful calls while untrusted text is in the context: denied, or wait for approval
    on_taint: Literal["deny", "approve"] = params.TAINT_ON_UNTRUSTED  # type: ignore[assignment]
    approval_timeout_s: float = Field(default=params.APPROVAL_TIMEOUT_S, gt=0)
    budget: Budget = Field(default_factory=Budget)
    quota: Quota = Field(default_factory=Quota)

    @model_validator(mode="after")
    def _consistent(self) -> UserPolicy:
        if self.budget.process_tokens > self.budget.user_tokens:
            raise _Contradiction(
                ("budget", "process_tokens"),
                f"budget.process_tokens ({self.budget.process_tokens}) is above "
                f"budget.user_tokens ({self.budget.user_tokens})",
            )
        for i, path in enumerate(self.call_paths):
            pure = PurePosixPath(path)
            if not pure.is_absolute() or ".." in pure.parts:
                raise _Contradiction(
                    ("call_paths", i), f"call_paths: {path!r} must be an absolute path without '..'"
                )
        for i, pattern in enumerate(self.devices):
            if not pattern.strip():
                raise _Contradiction(("devices", i), "devices: an empty pattern")
        return self

    def allows_device(self, name: str, *, default_on: bool) -> bool:
        """Whether a device may be granted: a pattern names it (only an exact name covers a
        device that is off by default)."""
        if not default_on:
            return name in self.devices
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.devices)

    def call_dirs(self) -> list[Path]:
        return [Path(p) for p in self.call_paths]


class _Contradiction(ValueError):
    """A rule that contradicts another, with the key to blame."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def policy_path(home: Path, owner: str) -> Path:
    """Where `owner`'s policy file lives (beside their file namespace); AccessError for a name
    that is not a valid owner name (`principals.owner_name`: never mapped onto another's)."""
    return home / params.USERS_DIR_NAME / principals.owner_name(owner) / params.POLICY_FILE_NAME


_cache: dict[Path, tuple[tuple[int, int] | None, UserPolicy]] = {}
_cache_lock = threading.Lock()


def policy_for(home: Path, owner: str) -> UserPolicy:
    """`owner`'s policy (the defaults when there is no file); PolicyError if it is unusable.
    Cached until the file's mtime or size changes."""
    path = policy_path(home, owner)
    try:
        st = path.stat()
        stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        stamp = None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc.strerror})") from exc
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    policy = UserPolicy() if stamp is None else load_policy(path)
    with _cache_lock:
        _cache[path] = (stamp, policy)
    return policy


def load_policy(path: Path) -> UserPolicy:
    """Read and validate one policy file; PolicyError naming the file and line otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc.strerror})") from exc
    if len(data) > params.POLICY_MAX_BYTES:
        raise PolicyError(f"{path}: larger than {params.POLICY_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return UserPolicy.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _Contradiction):
            loc, message = ctx_error.loc, f"contradictory: {ctx_error.message}"
        else:
            loc = tuple(err["loc"])
            message = f"{'.'.join(str(p) for p in loc) or '(file)'}: {err['msg']}"
        line = key_line(text, loc)
        where = f"{path}, line {line}" if line else str(path)
        raise PolicyError(f"{where}: {message}") from exc


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\s]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def key_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line where the key at `loc` (table path, key, list index...) is set; the
    line of its table when the key itself is absent; None when neither is in the text."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    table, key = names[:-1], names[-1]
    current: list[str] = []
    table_line: int | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            current = [part.strip() for part in header.group(1).split(".")]
            if current == [*table, key]:
                return n  # a table named by the key itself (`[quota]`)
            if current == table:
                table_line = n
            continue
        found = _KEY.match(line)
        if found and current == table and found.group(1) == key:
            return n
    return table_line


# Device options whose list values are path prefixes (a child may keep a narrower path).
_PATH_OPTIONS = ("paths", "files")
# Device options whose absent value means a default list, which a parent's list narrows.
_DEFAULT_LISTS: dict[str, tuple[str, ...]] = {"allow": params.SHELL_ALLOW}


def narrow_options(child: Any, parent: Any) -> dict[str, Any]:
    """A child's options for one device, never wider than its parent's: a `false` the parent
    set stays false, a number is at most the parent's, a list keeps only what the parent's
    allows (a path only under one of the parent's paths), and a list the child leaves out is
    the parent's."""
    out: dict[str, Any] = dict(child) if isinstance(child, dict) else {}
    if not isinstance(parent, dict):
        return out
    defaults = {k: list(v) for k, v in _DEFAULT_LISTS.items() if k in out and k not in parent}
    for key, theirs in {**parent, **defaults}.items():
        mine = out.get(key)
        if theirs is False:
            out[key] = False
        elif isinstance(theirs, bool) or theirs is None:
            continue
        elif isinstance(theirs, int | float):
            if isinstance(mine, int | float) and not isinstance(mine, bool):
                out[key] = min(mine, theirs)
            else:
                out[key] = theirs
        elif isinstance(theirs, list):
            if not isinstance(mine, list):
                out[key] = list(theirs)
            elif key in _PATH_OPTIONS:
                out[key] = [m for m in mine if any(_under(str(m), str(t)) for t in theirs)]
            else:
                out[key] = [m for m in mine if m in theirs]
    return out


def _under(path: str, prefix: str) -> bool:
    """Whether relative path `path` lies within `prefix` (component-wise; `..` never does)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    pre = [p for p in prefix.replace("\\", "/").split("/") if p not in ("", ".")]
    return ".." not in parts and parts[: len(pre)] == pre
