"""The `fs` device: read, write, list and search files inside the process's file namespace.

The namespace is `ctx.root`, a directory per user. Every path the model gives is relative to
it. `ctx.options` may narrow it further: `{"paths": ["notes/"], "write": false}` allows only
those subpaths, read-only.

Invariants:
- Paths are resolved by walking from an fd on the root, one component at a time, with
  `O_NOFOLLOW` (and `O_DIRECTORY` for directories) relative to the parent's fd. So `..`,
  absolute paths and symbolic links are refused, whether they point inside or outside, and a
  symlink swapped in during the walk cannot redirect it (no check-then-use race).
- Only regular files are read or written; devices, FIFOs and sockets are refused (a FIFO is
  opened non-blocking, so refusing it never hangs). Files over `FS_MAX_FILE_BYTES` are refused.
- A file with more than one hard link is refused for reading and for writing: a link planted
  in the namespace to a file outside it (someone else's, or a system file on the same
  filesystem) is neither read nor written through. The count is checked on the opened fd.
- What it creates is private: files 0600, folders 0700 (`params.PRIVATE_*_MODE`).
- Writes are atomic: a temporary file in the same directory, fsync, then `os.replace`; a
  reader sees the old content or the new, never half.
- Results are bounded: read output to `ctx.max_output_bytes`, list to `FS_MAX_LIST_ENTRIES`,
  search to `FS_SEARCH_MAX_RESULTS` matches over at most `FS_SEARCH_MAX_FILES` files.

What this module does not do: quotas on the total size of a namespace, file locking between
concurrent writers (the last atomic replace wins), binary files (content is UTF-8 text; bad
bytes read as U+FFFD), or deleting and renaming. Not covered: hard links to files outside the
namespace are refused where they are found, not prevented from being made (making one needs
rights over the target; the `python` sandbox's own rules decide that). A write never goes
through a link anyway: the atomic replace swaps the name, so the linked file keeps its content.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult, truncate_text

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINKED = "refused: {path!r} has {n} hard links (a file linked from elsewhere is not used)"


class FsError(Exception):
    """A refusal; the message goes to the model."""


def split_path(path: str) -> list[str]:
    """The components of a relative path; refuses absolute paths, `..`, NUL and `~`."""
    if not isinstance(path, str) or "\x00" in path:
        raise FsError("invalid path")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise FsError(f"absolute paths are not allowed: {path!r} (paths are relative)")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FsError(f"'..' is not allowed in a path: {path!r}")
    if parts and parts[0].startswith("~"):
        raise FsError(f"'~' paths are not allowed: {path!r}")
    return parts


def _describe(st_mode: int) -> str:
    if stat.S_ISREG(st_mode):
        return "file"
    if stat.S_ISDIR(st_mode):
        return "dir"
    if stat.S_ISLNK(st_mode):
        return "symlink"
    if stat.S_ISFIFO(st_mode):
        return "fifo"
    if stat.S_ISSOCK(st_mode):
        return "socket"
    if stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode):
        return "device"
    return "other"


def _os_error(exc: OSError, shown: str) -> FsError:
    import errno

    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return FsError(f"refused: {shown!r} is or passes through a symbolic link")
    if exc.errno == errno.ENOENT:
        return FsError(f"no such file or directory: {shown!r}")
    if exc.errno == errno.ENOTDIR:
        return FsError(f"not a directory (or a symbolic link): {shown!r}")
    if exc.errno == errno.EISDIR:
        return FsError(f"is a directory: {shown!r}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FsError(f"permission denied: {shown!r}")
    return FsError(f"{shown!r}: {exc.strerror or exc}")


@contextlib.contextmanager
def open_dir(root: Path, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """An fd on the directory `root/parts...`, walked without following any symlink."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            shown = "/".join(parts[: i + 1])
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise FsError(f"no such directory: {shown!r}") from None
                os.mkdir(part, params.PRIVATE_DIR_MODE, dir_fd=fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                        raise FsError(
                            f"refused: {shown!r} is or passes through a symbolic link"
                        ) from None
                raise _os_error(exc, shown) from None
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def open_regular(root: Path, path: str, *, max_bytes: int | None = None) -> int:
    """A read fd on the regular file `root/path` (no symlinks, no special files, size capped).

    Raises FsError with a one-line reason. The caller closes the fd.
    """
    if max_bytes is None:
        max_bytes = params.FS_MAX_FILE_BYTES
    parts = split_path(path)
    if not parts:
        raise FsError("a file path is required")
    with open_dir(root, parts[:-1]) as dfd:
        try:
            st = os.lstat(parts[-1], dir_fd=dfd)
        except OSError as exc:
            raise _os_error(exc, path) from None
        if not stat.S_ISREG(st.st_mode):
            raise FsError(f"refused: {path!r} is a {_describe(st.st_mode)}, not a regular file")
        try:
            fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError as exc:
            raise _os_error(exc, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped between lstat and open
        os.close(fd)
        raise FsError(f"refused: {path!r} is a {_describe(st.st_mode)}, not a regular file")
    if st.st_nlink > 1:
        os.close(fd)
        raise FsError(_LINKED.format(path=path, n=st.st_nlink))
    if st.st_size > max_bytes:
        os.close(fd)
        raise FsError(f"refused: {path!r} is {st.st_size} bytes (limit {max_bytes})")
    return fd


def read_fd(fd: int, limit: int) -> bytes:
    """At most `limit` bytes from `fd` (closes it)."""
    chunks: list[bytes] = []
    size = 0
    with os.fdopen(fd, "rb") as f:
        while size < limit:
            chunk = f.read(min(params.FS_READ_CHUNK_BYTES, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def atomic_write(root: Path, path: str, data: bytes, *, make_dirs: bool = True) -> None:
    """Write `data` to `root/path` atomically (temp file + fsync + os.replace)."""
    parts = split_path(path)
    if not parts:
        raise FsError("a file path is required")
    name = parts[-1]
    with open_dir(root, parts[:-1], create=make_dirs) as dfd:
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise FsError(f"refused: {path!r} is a {_describe(st.st_mode)}, not a regular file")
        if st is not None and st.st_nlink > 1:
            raise FsError(_LINKED.format(path=path, n=st.st_nlink))
        tmp = f".{name}.tmp-{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, params.PRIVATE_FILE_MODE, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


class FsDevice(Device):
    name = "fs"
    description = (
        "Files in your private workspace (paths are relative; no '..', no absolute paths, no "
        "symbolic links). op='read' {path} returns the text; op='write' {path, content, "
        "append?} replaces the file atomically (parent folders are created); op='list' "
        "{path?, recursive?} lists entries with type and size; op='search' {path?, name?, "
        "query?} finds files whose name matches the glob `name` (e.g. '*.md') and/or lines "
        "containing the text `query`."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "op": {"type": "string", "enum": ["read", "write", "list", "search"]},
            "path": {"type": "string", "description": "Relative path; default '.'"},
            "content": {"type": "string", "description": "write: the text to write"},
            "append": {"type": "boolean", "description": "write: add to the end instead"},
            "recursive": {"type": "boolean", "description": "list: include subfolders"},
            "name": {"type": "string", "description": "search: glob over file names"},
            "query": {"type": "string", "description": "search: text to find in lines"},
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": params.FS_SEARCH_MAX_RESULTS,
            },
        },
        "required": ["op"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        if ctx.root is None:
            return DeviceResult.failure("fs: this process has no file namespace")
        op = args.get("op")
        try:
            path = args.get("path", ".")
            if not isinstance(path, str):
                raise FsError("'path' must be a string")
            parts = split_path(path)
            self._check_allowed(parts, ctx, write=op == "write")
            if op == "read":
                return self._read(ctx, path)
            if op == "write":
                return self._write(ctx, path, args)
            if op == "list":
                return self._list(ctx, parts, bool(args.get("recursive", False)))
            if op == "search":
                return self._search(ctx, parts, args)
            return DeviceResult.failure(f"fs: unknown op {op!r} (read, write, list, search)")
        except FsError as exc:
            return DeviceResult.failure(f"fs: {exc}")
        except OSError as exc:
            return DeviceResult.failure(f"fs: {_os_error(exc, str(args.get('path', '.')))}")

    @staticmethod
    def _check_allowed(parts: list[str], ctx: CallContext, *, write: bool) -> None:
        if write and ctx.options.get("write", True) is False:
            raise FsError("writing is not allowed for this program")
        allowed = ctx.options.get("paths")
        if allowed is None:
            return
        for prefix in allowed:
            pre = split_path(str(prefix))
            if parts[: len(pre)] == pre:
                return
        shown = "/".join(parts) or "."
        raise FsError(f"{shown!r} is outside the allowed paths: {', '.join(map(str, allowed))}")

    def _read(self, ctx: CallContext, path: str) -> DeviceResult:
        assert ctx.root is not None
        data = read_fd(open_regular(ctx.root, path), params.FS_MAX_FILE_BYTES)
        text, cut = truncate_text(data.decode("utf-8", errors="replace"), ctx.max_output_bytes)
        out = {"path": path, "content": text, "bytes": len(data)}
        return DeviceResult.success(out, truncated=cut)

    def _write(self, ctx: CallContext, path: str, args: dict[str, Any]) -> DeviceResult:
        assert ctx.root is not None
        content = args.get("content")
        if not isinstance(content, str):
            raise FsError("write needs 'content' (a string)")
        data = content.encode("utf-8")
        if args.get("append"):
            try:
                old = read_fd(open_regular(ctx.root, path), params.FS_MAX_FILE_BYTES)
            except FsError as exc:
                if "no such" not in str(exc):
                    raise
                old = b""
            data = old + data
        if len(data) > params.FS_MAX_FILE_BYTES:
            limit = params.FS_MAX_FILE_BYTES
            raise FsError(f"refused: content is {len(data)} bytes (limit {limit})")
        atomic_write(ctx.root, path, data)
        return DeviceResult.success({"path": path, "bytes": len(data)})

    def _list(self, ctx: CallContext, parts: list[str], recursive: bool) -> DeviceResult:
        assert ctx.root is not None
        entries: list[dict[str, Any]] = []
        cut = False
        with open_dir(ctx.root, parts) as dfd:
            for rel, st in _walk(dfd, recursive):
                if len(entries) >= params.FS_MAX_LIST_ENTRIES:
                    cut = True
                    break
                entry: dict[str, Any] = {"name": rel, "type": _describe(st.st_mode)}
                if stat.S_ISREG(st.st_mode):
                    entry["size"] = st.st_size
                entries.append(entry)
        return DeviceResult.success(
            {"path": "/".join(parts) or ".", "entries": entries}, truncated=cut
        )

    def _search(self, ctx: CallContext, parts: list[str], args: dict[str, Any]) -> DeviceResult:
        assert ctx.root is not None
        name, query = args.get("name"), args.get("query")
        if not name and not query:
            raise FsError("search needs 'name' (a glob) and/or 'query' (text)")
        cap = params.FS_SEARCH_MAX_RESULTS
        limit = min(int(args.get("max_results", cap)), cap)
        matches: list[dict[str, Any]] = []
        files = 0
        cut = False
        with open_dir(ctx.root, parts) as dfd:
            for rel, st in _walk(dfd, True):
                if not stat.S_ISREG(st.st_mode):
                    continue
                if name and not fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], str(name)):
                    continue
                files += 1
                if files > params.FS_SEARCH_MAX_FILES or len(matches) >= limit:
                    cut = True
                    break
                shown = "/".join([*parts, rel])
                if not query:
                    matches.append({"path": shown, "size": st.st_size})
                    continue
                if st.st_size > params.FS_MAX_FILE_BYTES:
                    continue
                try:
                    data = read_fd(open_regular(ctx.root, shown), params.FS_MAX_FILE_BYTES)
                except FsError:
                    continue
                if b"\x00" in data[: params.FS_BINARY_SNIFF_BYTES]:
                    continue
                for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                    if str(query) in line:
                        matches.append(
                            {
                                "path": shown,
                                "line": lineno,
                                "text": line[: params.FS_SEARCH_LINE_CHARS],
                            }
                        )
                        if len(matches) >= limit:
                            cut = True
                            break
        return DeviceResult.success({"matches": matches, "files_searched": files}, truncated=cut)


def _walk(dfd: int, recursive: bool, prefix: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """(relative name, lstat) of entries under the directory fd, sorted; no symlink followed."""
    for entry in sorted(os.listdir(dfd)):
        try:
            st = os.lstat(entry, dir_fd=dfd)
        except OSError:
            continue
        rel = f"{prefix}{entry}"
        yield rel, st
        if recursive and stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(entry, _DIR_FLAGS, dir_fd=dfd)
            except OSError:
                continue
            try:
                yield from _walk(sub, True, rel + "/")
            finally:
                os.close(sub)
