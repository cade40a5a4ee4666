"""The built-in devices other than python: calc, fs, clock, random, shell; and the devices that
reach the kernel (call, ask, memory, shm) against fake handles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmos import params
from llmos.errors import LlmosError
from llmos.hw.dev.base import (
    CallContext,
    Child,
    ChildEnd,
    Device,
    DeviceResult,
    ProcHandle,
)
from llmos.hw.dev.calc import CalcDevice
from llmos.hw.dev.clock import ClockDevice, RandomDevice
from llmos.hw.dev.fs import FsDevice
from llmos.hw.dev.memory import DEVICES as MEMORY_DEVICES
from llmos.hw.dev.memory import NO_MEMORY
from llmos.hw.dev.proc import NO_KERNEL, AskDevice, CallDevice
from llmos.hw.dev.shell import ShellDevice


def calc(expr: str) -> DeviceResult:
    return CalcDevice().call({"expression": expr}, CallContext())


# --- calc --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "result"),
    [
        ("0.1 + 0.2", "0.3"),
        ("0.1 + 0.2 == 0.3", "true"),
        ("2**100", "1267650600228229401496703205376"),
        ("factorial(25)", "15511210043330985984000000"),
        ("12345678901234567890 * 98765432109876543210", "1219326311370217952237463801111263526900"),
        ("7/8", "0.875"),
        ("1/3", "1/3"),
        ("-7 // 2", "-4"),
        ("-7 % 3", "2"),
        ("2**-2", "0.25"),
        ("1.5e3 + 1", "1501"),
        ("sqrt(16)", "4"),
        ("sqrt(0.25)", "0.5"),
        ("gcd(12, 18)", "6"),
        ("max(1, 2.5, -3)", "2.5"),
        ("floor(-2.5) + ceil(2.1)", "0"),
        ("round(2.675, 2)", "2.68"),
        ("abs(-0.05)", "0.05"),
        ("1 < 2 <= 2", "true"),
    ],
)
def test_calc_exact(expr: str, result: str) -> None:
    r = calc(expr)
    assert r.ok, r.error
    assert r.output["result"] == result
    assert r.output["exact"] is True


def test_calc_floats_and_fraction_decimal() -> None:
    r = calc("sqrt(2)")
    assert r.output == {"result": "1.4142135623730951", "exact": False}
    assert calc("pi").output["result"] == "3.141592653589793"
    assert calc("log(8, 2)").output["result"] == "3.0"
    third = calc("1/3").output
    assert third["decimal"] == "0." + "3" * params.CALC_DECIMAL_DIGITS


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("1/0", "calc: division by zero"),
        ("5 % 0", "calc: modulo by zero"),
        ("10**10**10", "calc: exponent too large"),
        ("factorial(100000)", "calc: factorial() argument too large (limit 1000)"),
        ("2^3", "calc: '^' is not supported; use ** for powers"),
        ("foo + 1", "calc: unknown name 'foo'"),
        ("__import__('os')", "calc: unknown function '__import__'"),
        ("(1 +", "calc: syntax error at column 1"),
        ("1 +* 2", "calc: syntax error at column 4"),
        ("'a' * 3", "calc: not a number"),
        ("[1, 2]", "calc: not allowed in an expression: List"),
        ("(2).real", "calc: not allowed in an expression: Attribute"),
        ("sqrt(-1)", "calc: sqrt() of a negative number"),
        ("(-8) ** 0.5", "calc: a negative number to a fractional power"),
        ("1e999999", "calc: number out of range"),
        ("exp(1000)", "calc: exp() is out of range"),
    ],
)
def test_calc_refusals(expr: str, error: str) -> None:
    r = calc(expr)
    assert not r.ok
    assert r.error is not None and r.error.startswith(error), r.error


def test_calc_limits() -> None:
    assert not calc("1" * (params.CALC_MAX_EXPR_CHARS + 1)).ok
    assert len(calc("9**4000").output["result"]) == 3817  # fine ...
    assert calc("2**13000").ok  # ... 3914 digits
    assert not calc("2**13400").ok  # 4034 digits > CALC_MAX_DIGITS
    assert not calc("2**13000 * 2**13000").ok  # checked after every operation


# --- schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device", [CalcDevice(), FsDevice(), ClockDevice(), RandomDevice(), ShellDevice()]
)
def test_schemas_are_strict(device: Device) -> None:
    jsonschema.Draft202012Validator.check_schema(device.schema)
    assert device.schema["additionalProperties"] is False
    assert device.description
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"surprise": 1}, device.schema)


# --- fs ----------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "notes").mkdir(parents=True)
    (r / "notes" / "a.md").write_text("alpha\nTODO: beta\n")
    (r / "top.txt").write_text("top TODO\n")
    return r


def fs(root: Path, options: dict[str, Any] | None = None, **args: Any) -> DeviceResult:
    return FsDevice().call(args, CallContext(root=root, options=options or {}))


def test_fs_read_write_list_search(root: Path) -> None:
    assert fs(root, op="read", path="notes/a.md").output == {
        "path": "notes/a.md",
        "content": "alpha\nTODO: beta\n",
        "bytes": 17,
    }
    assert fs(root, op="write", path="new/deep/b.txt", content="héllo").output == {
        "path": "new/deep/b.txt",
        "bytes": 6,
    }
    assert (root / "new/deep/b.txt").read_text() == "héllo"
    fs(root, op="write", path="new/deep/b.txt", content="!", append=True)
    assert (root / "new/deep/b.txt").read_text() == "héllo!"
    assert [p.name for p in (root / "new/deep").iterdir()] == ["b.txt"]  # no temp left
    listing = fs(root, op="list", path=".").output["entries"]
    assert listing == [
        {"name": "new", "type": "dir"},
        {"name": "notes", "type": "dir"},
        {"name": "top.txt", "type": "file", "size": 9},
    ]
    rec = fs(root, op="list", recursive=True).output["entries"]
    assert [e["name"] for e in rec] == [
        "new",
        "new/deep",
        "new/deep/b.txt",
        "notes",
        "notes/a.md",
        "top.txt",
    ]
    found = fs(root, op="search", query="TODO").output
    assert found["matches"] == [
        {"path": "notes/a.md", "line": 2, "text": "TODO: beta"},
        {"path": "top.txt", "line": 1, "text": "top TODO"},
    ]
    names = fs(root, op="search", name="*.md").output["matches"]
    assert names == [{"path": "notes/a.md", "size": 17}]


def test_fs_read_truncates(root: Path) -> None:
    (root / "big.txt").write_text("x" * 5000)
    r = FsDevice().call(
        {"op": "read", "path": "big.txt"}, CallContext(root=root, max_output_bytes=100)
    )
    assert r.ok and r.truncated and r.output["content"] == "x" * 100


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("../outside.txt", "fs: '..' is not allowed in a path"),
        ("notes/../../x", "fs: '..' is not allowed in a path"),
        ("/etc/passwd", "fs: absolute paths are not allowed"),
        ("~/x", "fs: '~' paths are not allowed"),
        ("missing.txt", "fs: no such file or directory: 'missing.txt'"),
        ("notes", "fs: refused: 'notes' is a dir, not a regular file"),
    ],
)
def test_fs_refuses_paths(root: Path, path: str, error: str) -> None:
    r = fs(root, op="read", path=path)
    assert not r.ok and r.error is not None and r.error.startswith(error), r.error


def test_fs_refuses_symlinks_and_special_files(root: Path) -> None:
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "inner").symlink_to("top.txt")
    (root / "linkdir").symlink_to("/etc")
    os.mkfifo(root / "fifo")
    assert (
        fs(root, op="read", path="passwd").error
        == "fs: refused: 'passwd' is a symlink, not a regular file"
    )
    assert (
        fs(root, op="read", path="inner").error
        == "fs: refused: 'inner' is a symlink, not a regular file"
    )
    r = fs(root, op="read", path="linkdir/passwd")
    assert r.error == "fs: refused: 'linkdir' is or passes through a symbolic link"
    assert (
        fs(root, op="read", path="fifo").error
        == "fs: refused: 'fifo' is a fifo, not a regular file"
    )
    r = fs(root, op="write", path="passwd", content="x")
    assert r.error == "fs: refused: 'passwd' is a symlink, not a regular file"
    assert fs(root, op="write", path="linkdir/x", content="x").ok is False
    assert not (Path("/etc/x")).exists()
    # list and search see the links but never follow them
    entries = {e["name"]: e["type"] for e in fs(root, op="list").output["entries"]}
    assert entries["passwd"] == "symlink" and entries["fifo"] == "fifo"
    found = fs(root, op="search", query="root:").output["matches"]
    assert found == []


def test_fs_size_cap(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "FS_MAX_FILE_BYTES", 10)
    (root / "big.txt").write_text("y" * 11)
    assert (
        fs(root, op="read", path="big.txt").error == "fs: refused: 'big.txt' is 11 bytes (limit 10)"
    )
    r = fs(root, op="write", path="c.txt", content="z" * 11)
    assert r.error == "fs: refused: content is 11 bytes (limit 10)"


def test_fs_options_restrict(root: Path) -> None:
    opts = {"paths": ["notes/"], "write": False}
    assert fs(root, opts, op="read", path="notes/a.md").ok
    r = fs(root, opts, op="read", path="top.txt")
    assert r.error == "fs: 'top.txt' is outside the allowed paths: notes/"
    assert fs(root, opts, op="write", path="notes/x", content="x").error == (
        "fs: writing is not allowed for this program"
    )
    assert fs(root, {"paths": ["notes"]}, op="write", path="notes/x", content="1").ok


def test_fs_needs_root() -> None:
    r = FsDevice().call({"op": "list"}, CallContext())
    assert r.error == "fs: this process has no file namespace"


# --- clock and random ----------------------------------------------------------------------------


def test_clock() -> None:
    dev = ClockDevice(now=lambda: 1_700_000_000.5)
    r = dev.call({"timezone": "Europe/Paris"}, CallContext())
    assert r.output == {
        "utc": "2023-11-14T22:13:20.500000+00:00",
        "unix": 1_700_000_000.5,
        "timezone": "Europe/Paris",
        "local": "2023-11-14T23:13:20.500000+01:00",
    }
    assert dev.call({}, CallContext()).output == {
        "utc": "2023-11-14T22:13:20.500000+00:00",
        "unix": 1_700_000_000.5,
    }
    assert dev.call({"timezone": "Mars/Olympus"}, CallContext()).error == (
        "clock: unknown time zone 'Mars/Olympus'"
    )


def test_random_seeded_and_ranges() -> None:
    dev = RandomDevice()
    a = dev.call({"op": "integer", "min": 1, "max": 6, "count": 20, "seed": 42}, CallContext())
    b = dev.call({"op": "integer", "min": 1, "max": 6, "count": 20, "seed": 42}, CallContext())
    assert a.output == b.output
    assert all(1 <= v <= 6 for v in a.output["values"]) and len(a.output["values"]) == 20
    ctx = CallContext(pid=7, options={"seed": 3})
    first = [RandomDevice().call({"op": "uniform", "min": 0, "max": 1}, ctx).output for _ in "x"]
    dev2 = RandomDevice()
    seq = [dev2.call({"op": "uniform", "min": 0, "max": 1}, ctx).output["values"][0] for _ in "xy"]
    assert first[0]["values"][0] == seq[0] and seq[0] != seq[1]  # a stream, reproducible
    c = dev.call({"op": "choice", "choices": ["a", "b"], "count": 50}, CallContext())
    assert set(c.output["values"]) <= {"a", "b"}
    assert dev.call({"op": "integer", "min": 5, "max": 1}, CallContext()).error == (
        "random: min (5) is greater than max (1)"
    )
    assert not dev.call({"op": "choice", "choices": []}, CallContext()).ok


# --- shell -------------------------------------------------------------------------------------


def shell(command: str, root: Path | None = None, **options: Any) -> DeviceResult:
    return ShellDevice().call({"command": command}, CallContext(root=root, options=options))


def test_shell_is_off_by_default() -> None:
    assert ShellDevice.default_on is False


def test_shell_runs_allowlisted(root: Path) -> None:
    r = shell("echo hello   world")
    assert r.ok and r.output == {
        "stdout": "hello world\n",
        "stderr": "",
        "exit_status": 0,
        "timed_out": False,
        "killed_reason": None,
    }
    r = shell("grep -n TODO notes/a.md", root, files=["notes/a.md"])
    assert r.output["stdout"] == "2:TODO: beta\n"
    r = shell("ls", root, files=["notes/a.md", "top.txt"])
    assert r.output["stdout"] == "notes\ntop.txt\n"
    assert shell("cat nothing").output["exit_status"] == 1


def test_shell_refusals() -> None:
    assert shell("rm -rf /").error == (
        "shell: command 'rm' is not allowed (allowed: " + ", ".join(params.SHELL_ALLOW) + ")"
    )
    r = shell("ls; rm -rf /")
    assert r.error is not None and r.error.startswith("shell: command 'ls;' is not allowed")
    assert "not interpreted" in r.error
    r = shell("echo hi > out.txt")
    assert r.ok and r.output["stdout"] == "hi > out.txt\n"  # literal, not a redirect
    assert shell("cat /etc/passwd").error == (
        "shell: argument '/etc/passwd' points outside the working directory"
    )
    assert shell("cat ../../etc/passwd").error is not None
    assert shell("grep --file=/etc/passwd x").error is not None
    assert shell("/bin/ls").error is not None
    assert shell("echo 'unclosed").error is not None
    assert shell("date", allow=["echo"]).error == (
        "shell: command 'date' is not allowed (allowed: echo)"
    )


def test_shell_arguments_follow_each_commands_grammar() -> None:
    outside = "argument '/etc/passwd' points outside the working directory"
    for command in ("date -f/etc/passwd", "date --file=/etc/passwd", "grep -rf/etc/passwd x"):
        assert shell(command).error == f"shell: {outside}"
    assert shell("head -n 2 -- /etc/passwd").error == f"shell: {outside}"
    assert shell("ls --dired").error == "shell: ls: option --dired is not allowed here"
    assert shell("pwd x").error == "shell: pwd takes no operands"
    assert shell("date +%Y -u").ok and shell("grep -e /etc/passwd").ok  # a pattern, not a file
    wide = [*params.SHELL_ALLOW, "env", "find", "rev"]
    assert shell("env", allow=wide).error == (
        "shell: command 'env' can run other programs and is never allowed"
    )
    assert shell("rev x", allow=wide).error == (
        "shell: command 'rev' has no argument grammar here, so it cannot run"
    )
    assert shell("find . -exec id {} +", allow=wide).error == (
        "shell: find -exec is refused (it runs programs, deletes or writes files)"
    )
    assert shell("find . -type f -name '*.md'", allow=wide).ok


# --- Devices against fake handles: any object with the protocol's methods will do ---------------


class FakeProc:
    def __init__(self, end: ChildEnd, *, json_mode: bool = False) -> None:
        self.end, self.json_mode = end, json_mode
        self.spawned: list[tuple[str, dict[str, Any]]] = []
        self.limits: list[float] = []

    def spawn(self, ref: str, inputs: dict[str, Any]) -> Child:
        if ref == "missing":
            raise LlmosError("no program named 'missing'")
        self.spawned.append((ref, inputs))
        return Child(pid=7, program="child", json_mode=self.json_mode)

    def wait(self, child: Child, limit: float) -> ChildEnd:
        self.limits.append(limit)
        return self.end

    def ask(self, question: str, timeout: float) -> str:
        if question == "nobody?":
            raise LlmosError(f"no answer within {timeout:g} s")
        return f"answer to {question}"


def run_call(proc: ProcHandle, args: dict[str, Any], **options: Any) -> DeviceResult:
    ctx = CallContext(pid=3, proc=proc, timeout_s=CallDevice.timeout_s or 0, options=options)
    return CallDevice().call(args, ctx)


def test_call_device_with_a_fake_proc_handle() -> None:
    proc = FakeProc(ChildEnd("exited", "ok", None, '{"n": 1}'), json_mode=True)
    r = run_call(proc, {"program": "child", "inputs": {"x": 1}}, timeout_s=2)
    assert r.output == {"pid": 7, "exit_status": "ok", "output": {"n": 1}}
    assert proc.spawned == [("child", {"x": 1})] and proc.limits == [2.0]
    r = run_call(FakeProc(ChildEnd("exited", "ok", None, "not json")), {"program": "c"})
    assert r.output["output"] == "not json"
    r = run_call(FakeProc(ChildEnd("exited", "failed", "boom")), {"program": "c"})
    assert r.error == "child (pid 7) ended failed: boom"
    r = run_call(FakeProc(ChildEnd("timeout")), {"program": "c"}, timeout_s=2)
    assert r.error == "child (pid 7) did not finish within 2 s; it was killed"
    r = run_call(FakeProc(ChildEnd("killed")), {"program": "c"})
    assert r.error == "killed while waiting for child (pid 7)"
    r = run_call(FakeProc(ChildEnd("exited", "ok")), {"program": "missing"})
    assert r.error == "cannot start missing: no program named 'missing'"
    assert CallDevice().call({"program": "c"}, CallContext()).error == NO_KERNEL


def test_ask_device_with_a_fake_proc_handle() -> None:
    ctx = CallContext(proc=FakeProc(ChildEnd("exited")), timeout_s=AskDevice.timeout_s or 0)
    assert AskDevice().call({"question": "why?"}, ctx).output == {"answer": "answer to why?"}
    limit = params.ASK_TIMEOUT_S
    assert AskDevice().call({"question": "nobody?"}, ctx).error == f"no answer within {limit:g} s"


class FakeMemory:
    def __init__(self) -> None:
        self.memories: dict[int, str] = {}
        self.asked: list[tuple[str, int, str]] = []

    def remember(self, text: str, tags: list[str]) -> int:
        if not text.strip():
            raise LlmosError("memory text is empty")
        self.memories[len(self.memories) + 1] = text
        return len(self.memories)

    def recall(self, query: str, k: int, source: str) -> list[dict[str, Any]]:
        self.asked.append((query, k, source))
        return [{"id": f"m{i}", "text": t, "score": 1.0} for i, t in self.memories.items()][:k]

    def forget(self, memory_id: int) -> bool:
        return self.memories.pop(memory_id, None) is not None

    def page_in(self, page_id: int) -> dict[str, Any] | None:
        return (
            {"kind": "input", "text": "x" * (params.PAGE_IN_MAX_BYTES + 1)}
            if page_id == 4
            else None
        )


def memory_device(name: str) -> Device:
    return next(cls() for cls in MEMORY_DEVICES if cls.name == name)


def test_memory_devices_with_a_fake_memory_handle() -> None:
    memory = FakeMemory()
    ctx = CallContext(owner="ann", memory=memory)
    assert memory_device("remember").call({"text": "tea at 5"}, ctx).output == {"id": "m1"}
    assert memory_device("remember").call({"text": " "}, ctx).error == "memory text is empty"
    r = memory_device("recall").call({"query": "tea"}, ctx)
    assert r.output == [{"id": "m1", "text": "tea at 5", "score": 1.0}]
    memory_device("recall").call({"query": "tea", "k": 2, "source": "pages"}, ctx)
    assert memory.asked == [("tea", params.RECALL_DEFAULT_K, "all"), ("tea", 2, "pages")]
    assert memory_device("forget").call({"id": "x1"}, ctx).error == (
        "bad memory id 'x1' (expected m<number>)"
    )
    assert memory_device("forget").call({"id": "m1"}, ctx).output == {"forgotten": "m1"}
    assert memory_device("forget").call({"id": 1}, ctx).error == "no memory m1 of ann"
    page = memory_device("page_in").call({"page": "p4"}, ctx).output
    assert page["page"] == "p4" and page["truncated"] is True
    assert len(page["text"]) == params.PAGE_IN_MAX_BYTES
    assert memory_device("page_in").call({"page": 5}, ctx).error == "no page 5 of this process"
    for cls in MEMORY_DEVICES:
        assert cls().call({}, CallContext()).error == NO_MEMORY


class FakeShm:
    def __init__(self) -> None:
        self.segments: dict[str, tuple[int, str]] = {}

    def read(self, name: str) -> dict[str, Any]:
        if name not in self.segments:
            raise LlmosError(f"no shared segment named {name!r}")
        version, text = self.segments[name]
        return {"name": name, "version": version, "text": text}

    def write(
        self, name: str, text: str, *, append: bool, if_version: int | None
    ) -> dict[str, Any]:
        version, old = self.segments.get(name, (0, ""))
        if if_version is not None and if_version != version:
            raise LlmosError(f"segment {name!r} is at version {version}, not {if_version}")
        self.segments[name] = (version + 1, old + text if append else text)
        return {"name": name, "version": version + 1}

    def list(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "owner": "ann", "version": v, "bytes": len(t)}
            for n, (v, t) in self.segments.items()
        ]


def test_shm_devices_with_a_fake_shm_handle() -> None:
    shm = FakeShm()
    ctx = CallContext(owner="ann", shm=shm, max_output_bytes=params.SHM_READ_ENVELOPE_BYTES + 4)
    write = memory_device("shm_write")
    assert write.call({"name": "n", "text": "abc"}, ctx).output == {"name": "n", "version": 1}
    assert write.call({"name": "n", "text": "def", "append": True, "if_version": 1}, ctx).ok
    assert write.call({"name": "n", "text": "x", "if_version": 1}, ctx).error == (
        "segment 'n' is at version 2, not 1"
    )
    r = memory_device("shm_read").call({"name": "n"}, ctx)
    assert r.output == {"name": "n", "version": 2, "text": "abcd", "truncated": True}
    assert memory_device("shm_read").call({"name": "z"}, ctx).error == (
        "no shared segment named 'z'"
    )
    assert memory_device("shm_list").call({}, ctx).output == [
        {"name": "n", "owner": "ann", "version": 2, "bytes": 6}
    ]
