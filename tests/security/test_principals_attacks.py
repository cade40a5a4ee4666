"""Principals: one owner cannot act on, see or reach another owner's processes, runs, memories,
pages, shared segments or files, whatever it claims to be. Judged on effects (the process
table, the stores' rows, files), never on a refusal message alone.

Three ways in are tried: the kernel's API with two established callers (alice and bob, as a
front end would make them); the daemon's socket, with raw requests that claim an owner, from
root and from a real second OS user (`tuser`, a client with nothing but the standard library);
and the adversarial CPU, which obeys every instruction, driving the `fs` device at a planted
hard link.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import (
    AccessError,
    InputError,
    NoSuchProcessError,
    NotFoundError,
    RequestError,
)
from llmos.front import kclient, kerneld
from llmos.kernel import api
from llmos.kernel import cpus as cpu_mod
from llmos.kernel.boot import System, boot
from llmos.kernel.core import Kernel
from llmos.kernel.proc import Process
from llmos.kernel.security import principals
from llmos.store.log import Log

try:
    from tests.security.adversary import AdversarialCPU, inject
    from tests.security.conftest import Effects
except ImportError:  # tests/ is not a package: pytest put the test's folder on sys.path
    from adversary import AdversarialCPU, inject  # type: ignore[no-redef,import-not-found,unused-ignore]
    from conftest import Effects  # type: ignore[no-redef,import-not-found,unused-ignore]

ALICE = api.Caller("alice")
BOB = api.Caller("bob")
SECRET = "alice-secret-7f3a9c"
TUSER = "tuser"


def prog(name: str, tools: list[str]) -> str:
    return (
        f"---\nname: {name}\ndescription: test {name}\ntools: [{', '.join(tools)}]\n"
        f'llmos.max_steps: 6\n---\n{{{{role "user"}}}}\nGo.\n'
    )


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def asker(kernel: Kernel, caller: api.Caller, tmp: Path) -> Process:
    """A live process of `caller`, waiting on a question (the `ask` device) until answered."""
    path = tmp / "asker.prompt"
    path.write_text(prog("asker", ["ask"]))
    cpu = AdversarialCPU([("ask", {"question": "Who are you?"})])
    kernel.add_cpu(cpu)
    proc = api.spawn(kernel, caller, api.SpawnRequest(program=str(path), model="adversary"))
    wait_for(lambda: kernel.question(proc.pid) is not None)
    return proc


def snapshot(proc: Process) -> tuple[Any, ...]:
    e = proc.entity
    return (proc.alive, proc.state.value, e.killed, e.stopped, e.priority, proc.exit_status)


# --- the kernel's API: two established callers ---------------------------------------------------

PID_OPS: list[tuple[str, dict[str, Any]]] = [
    ("kill", {}),
    ("stop", {}),
    ("cont", {}),
    ("renice", {"priority": 39}),
    ("answer", {"text": inject("fs", op="write", path="x", content="pwned")}),
    ("wait", {"timeout": 0}),
    ("follow", {}),
]


@pytest.mark.parametrize(("op", "extra"), PID_OPS, ids=[o for o, _ in PID_OPS])
def test_attack_act_on_another_owners_process_through_the_api(
    kernel: Kernel, tmp_path: Path, op: str, extra: dict[str, Any]
) -> None:
    proc = asker(kernel, ALICE, tmp_path)
    before = snapshot(proc)
    missing = 999_999
    with pytest.raises(NoSuchProcessError) as theirs:
        api.call(kernel, BOB, op, {"pid": proc.pid, **extra})
    with pytest.raises(NoSuchProcessError) as nobody:
        api.call(kernel, BOB, op, {"pid": missing, **extra})
    # exactly the words of a pid that does not exist: not even existence leaks
    assert str(theirs.value).replace(str(proc.pid), "N") == str(nobody.value).replace(
        str(missing), "N"
    )
    time.sleep(0.1)
    assert snapshot(proc) == before  # still alive, waiting, same priority, not killed
    assert kernel.question(proc.pid) == "Who are you?"  # bob's answer never reached it
    kernel.kill(proc.pid)


def test_attack_list_another_owners_processes_with_ps_and_top(
    kernel: Kernel, tmp_path: Path
) -> None:
    proc = asker(kernel, ALICE, tmp_path)
    assert api.call(kernel, BOB, "ps", {"all": True})["processes"] == []
    top = api.call(kernel, BOB, "top", {})
    assert top["processes"] == [] and "alice" not in top["users"]
    mine = api.call(kernel, ALICE, "ps", {})["processes"]
    assert [p["pid"] for p in mine] == [proc.pid]
    root = api.Caller("root", admin=True)  # an admin sees everyone's
    assert [p["pid"] for p in api.call(kernel, root, "ps", {})["processes"]] == [proc.pid]
    kernel.kill(proc.pid)


def test_attack_read_and_change_another_owners_memories_pages_and_segments(
    kernel: Kernel, home: Path
) -> None:
    memory = kernel.system.memory
    mid = api.call(kernel, ALICE, "memory.remember", {"text": f"The vault code is {SECRET}."})["id"]
    (page_id,) = memory.page_out(
        "alice",
        "1.1.ab",
        [
            {
                "kind": "run",
                "role": "user",
                "text": f"paged {SECRET}",
                "summary": "s",
                "tokens": 3,
                "provenance": {},
            }
        ],
    )
    api.call(kernel, ALICE, "shm.create", {"name": "vault", "text": SECRET})
    effects = Effects(roots=[], stores=[home / params.MEMORY_DB_NAME])
    effects.snapshot()
    assert SECRET not in json.dumps(api.call(kernel, BOB, "memory.recall", {"query": "vault"}))
    assert api.call(kernel, BOB, "memory.list", {})["hits"] == []
    assert api.call(kernel, BOB, "shm.ls", {})["segments"] == []
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("memory.page", {"id": page_id}),
        ("memory.forget", {"id": mid}),
        ("shm.read", {"name": "vault"}),
        ("shm.write", {"name": "vault", "text": "overwritten"}),
        ("shm.chmod", {"name": "vault", "others": "rw"}),
        ("shm.rm", {"name": "vault"}),
    ]
    for op, payload in attempts:
        with pytest.raises((AccessError, InputError, NotFoundError)):
            api.call(kernel, BOB, op, payload)
    assert effects.row_changes() == {}
    assert api.call(kernel, ALICE, "shm.read", {"name": "vault"})["text"] == SECRET
    assert api.call(kernel, ALICE, "memory.page", {"id": page_id})["page"]["text"].endswith(SECRET)


def test_attack_a_process_reaches_another_owners_memories_through_its_devices(
    kernel: Kernel, home: Path, tmp_path: Path
) -> None:
    memory = kernel.system.memory
    mid = memory.remember("alice", f"The vault code is {SECRET}.", [], source="cli")
    page = {"kind": "run", "role": "user", "text": f"paged {SECRET}", "summary": "s"}
    (page_id,) = memory.page_out("alice", "1.1.ab", [page])
    api.call(kernel, ALICE, "shm.create", {"name": "vault", "text": SECRET})
    effects = Effects(roots=[], stores=[home / params.MEMORY_DB_NAME])
    effects.snapshot()
    path = tmp_path / "thief.prompt"
    path.write_text(prog("thief", ["recall", "forget", "page_in", "shm_read", "shm_write"]))
    plan: list[tuple[str, dict[str, Any]]] = [
        ("recall", {"query": "vault code", "source": "all"}),
        ("page_in", {"page": page_id}),
        ("shm_read", {"name": "vault"}),
        ("shm_write", {"name": "vault", "text": "pwned"}),
        ("forget", {"id": mid}),
    ]
    cpu = AdversarialCPU(plan)
    kernel.add_cpu(cpu)
    proc = api.spawn(kernel, BOB, api.SpawnRequest(program=str(path), model="adversary"))
    proc.wait(30)
    assert proc.exit_status == "ok" and [n for n, _ in cpu.tried] == [n for n, _ in plan]
    assert SECRET not in json.dumps([m for r in cpu.requests for m in r.messages])
    assert effects.row_changes() == {}
    assert api.call(kernel, ALICE, "shm.read", {"name": "vault"})["text"] == SECRET


@pytest.mark.parametrize("name", ["bob@corp", "Bob", "../x", "", "a/b", "x" * 33, ".hidden"])
def test_attack_owner_names_that_would_collide_or_escape(
    kernel: Kernel, home: Path, tmp_path: Path, name: str
) -> None:
    kernel.user_root("bob")  # the namespace an attacker would like to share: bob_corp, bob...
    users = home / params.USERS_DIR_NAME
    effects = Effects(roots=[home], stores=[])
    effects.snapshot()
    before_dirs = sorted(p.name for p in users.iterdir())
    with pytest.raises(AccessError):
        api.Caller(name)
    with pytest.raises(AccessError):
        kernel.user_root(name)
    path = tmp_path / "w.prompt"
    path.write_text(prog("w", ["fs"]))
    cpu = AdversarialCPU([("fs", {"op": "write", "path": "planted.txt", "content": "x"})])
    with pytest.raises(AccessError):  # a kernel caller that skips the API: still no namespace
        kernel.spawn(str(path), owner=name, cpu=cpu)
    assert sorted(p.name for p in users.iterdir()) == before_dirs
    assert effects.file_changes() == [] and cpu.tried == []
    assert kernel.ps(owner=name) == []  # refused before it became a process


def test_owner_names_are_their_own_normal_form() -> None:
    for good in ("alice", "bob_corp", "bob.corp", "_svc", "a-1"):
        assert principals.owner_name(good) == good
    assert principals.current().owner == pwd.getpwuid(os.geteuid()).pw_name


# --- files: a planted hard link in a namespace -------------------------------------------------


def _fs_program(tmp: Path, plan: list[tuple[str, dict[str, Any]]]) -> tuple[Path, AdversarialCPU]:
    path = tmp / "files.prompt"
    path.write_text(prog("files", ["fs"]))
    return path, AdversarialCPU(plan)


def test_attack_read_through_a_planted_hard_link(
    kernel: Kernel, home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "secret.txt"
    target.write_text(SECRET)
    root = kernel.user_root("bob")
    os.link(target, root / "leak.txt")
    path, cpu = _fs_program(
        tmp_path,
        [
            ("fs", {"op": "read", "path": "leak.txt"}),
            ("fs", {"op": "search", "query": "secret"}),
        ],
    )
    proc = kernel.spawn(str(path), owner="bob", cpu=cpu)
    proc.wait(30)
    assert proc.exit_status == "ok" and len(cpu.tried) == 2
    seen = json.dumps([m for r in cpu.requests for m in r.messages])
    assert SECRET not in seen and "hard links" in seen
    log = kernel.system.log
    assert SECRET not in json.dumps(log.messages(proc.run_id))


def test_attack_write_through_a_planted_hard_link(
    kernel: Kernel, home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim.txt"
    target.write_text("original")
    root = kernel.user_root("bob")
    os.link(target, root / "leak.txt")
    effects = Effects(roots=[outside], stores=[])
    effects.snapshot()
    path, cpu = _fs_program(
        tmp_path,
        [
            ("fs", {"op": "write", "path": "leak.txt", "content": "pwned"}),
            ("fs", {"op": "write", "path": "leak.txt", "content": "pwned", "append": True}),
        ],
    )
    proc = kernel.spawn(str(path), owner="bob", cpu=cpu)
    proc.wait(30)
    assert proc.exit_status == "ok" and len(cpu.tried) == 2
    assert effects.file_changes() == []
    assert target.read_text() == "original" and os.stat(target).st_nlink == 2


# --- logs ----------------------------------------------------------------------------------------


def test_attack_read_another_owners_logs(tmp_path: Path) -> None:
    with Log.open(tmp_path / "logs.db") as log:
        theirs = log.start_run("p", "cpu", {"q": SECRET}, [], owner="alice")
        mine = log.start_run("p", "cpu", {"q": "hello"}, [], owner="bob")
        log.start_run("p", "cpu", {"q": SECRET}, [], owner=None)  # nobody's: admins only
        assert [r.id for r in log.list_runs(owner="bob", limit=0)] == [mine]
        assert log.list_runs(owner="bob", query=SECRET) == []
        assert log.get_run(theirs, owner="bob") is None
        # a prefix of theirs finds nothing of theirs (at most bob's own run, when run ids made
        # in the same instant share that prefix)
        found = log.get_run(theirs[:-1], owner="bob")
        assert found is None or found.id == mine
        n = next(i for i, (a, b) in enumerate(zip(theirs, mine, strict=True)) if a != b)
        shared = theirs[:n]  # a prefix of both: neither ambiguous nor theirs, but mine
        assert getattr(log.get_run(shared, owner="bob"), "id", mine) == mine
        with pytest.raises(Exception, match="no run"):
            log.messages(theirs, owner="bob")
        assert len(log.list_runs(limit=0)) == 3  # an admin (no filter) sees all


def _chown_tree(path: Path, user: str) -> None:
    for dirpath, _dirs, files in os.walk(path):
        shutil.chown(dirpath, user, user)
        for f in files:
            shutil.chown(Path(dirpath, f), user, user)


def _as_tuser(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={TUSER}", f"--regid={TUSER}", "--init-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)


@needs_root
def test_attack_world_readable_store_spool_and_namespace_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every file llmos creates is private from creation: even with the home made
    world-traversable, another OS user reads none of them."""
    base = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # loosened below: not pytest's
    home = base / "home"
    monkeypatch.setenv("LLMOS_HOME", str(home))
    kernel = Kernel(boot())
    try:
        _world_readable(kernel, home, base)
    finally:
        kernel.shutdown()
        kernel.system.close()
        shutil.rmtree(base, ignore_errors=True)


def _world_readable(kernel: Kernel, home: Path, tmp_path: Path) -> None:
    api.call(kernel, ALICE, "memory.remember", {"text": SECRET})
    kernel.system.log.start_run("p", "cpu", {"q": SECRET}, [], owner="alice")
    spooled = kclient.KernelClient(home)._spool(SECRET)
    path, cpu = _fs_program(
        tmp_path, [("fs", {"op": "write", "path": "notes/a.txt", "content": SECRET})]
    )
    kernel.spawn(str(path), owner="alice", cpu=cpu).wait(30)
    pid_fd = kerneld.lock_pid_file(home / params.KERNEL_PID_NAME)
    os.close(pid_fd)
    files = [
        home / params.LOG_DB_NAME,
        home / params.MEMORY_DB_NAME,
        spooled,
        home / params.KERNEL_PID_NAME,
        home / params.USERS_DIR_NAME / "alice" / "files" / "notes" / "a.txt",
    ]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    for d in (home, home / params.KERNEL_SPOOL_DIR_NAME, home / params.USERS_DIR_NAME / "alice"):
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, d
    # the attack: a loosened home (and a world-traversable path to it); nothing can be read
    for d in [tmp_path, home, *(p for p in home.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o755)
    for f in files:
        out = _as_tuser("/bin/cat", str(f))
        assert out.returncode != 0 and SECRET not in out.stdout, f


# --- the daemon's socket -------------------------------------------------------------------------

RAW_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_error": e.strerror}))
    sys.exit(0)
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile("rb").readline().decode().strip() or "{}")
"""


def raw_request(sock: Path, request: dict[str, Any], *, tuser: bool) -> dict[str, Any]:
    """One request line sent by a client with only the standard library, as root or tuser."""
    cmd = ["/usr/bin/python3", "-c", RAW_CLIENT, str(sock), json.dumps(request)]
    out = _as_tuser(*cmd) if tuser else subprocess.run(cmd, capture_output=True, text=True)
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


@pytest.fixture
def root_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, kerneld.Daemon]]:
    """A daemon run by this (root) process, on a short socket path, with the adversary CPU."""
    base = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    home = base / "home"
    (home / params.PROGRAMS_DIR_NAME).mkdir(parents=True)
    (home / params.PROGRAMS_DIR_NAME / "asker.prompt").write_text(prog("asker", ["ask"]))
    monkeypatch.setenv("LLMOS_HOME", str(home))
    cpu = AdversarialCPU([("ask", {"question": "Who?"})])
    system: System = boot(open_log=False)
    monkeypatch.setattr(system, "cpu", lambda spec: cpu)  # never load a model
    monkeypatch.setattr(cpu_mod, "close_all", lambda: None)  # leave other tests' CPUs alone
    ready: list[kerneld.Daemon] = []
    server = threading.Thread(
        target=kerneld.serve, args=(system,), kwargs={"on_ready": ready.append}
    )
    server.start()
    try:
        wait_for(lambda: bool(ready))
        yield home, ready[0]
    finally:
        with contextlib.suppress(Exception):
            kclient.KernelClient(home).request("shutdown")
        server.join(30)
        system.close()
        shutil.rmtree(base, ignore_errors=True)


def test_attack_claim_another_owner_in_a_daemon_request(
    root_daemon: tuple[Path, kerneld.Daemon],
) -> None:
    home, daemon = root_daemon
    sock = home / params.KERNEL_SOCKET_NAME
    effects = Effects(roots=[home / params.USERS_DIR_NAME], stores=[home / params.LOG_DB_NAME])
    effects.snapshot()
    for request in (
        {"op": "spawn", "program": "asker", "cwd": "/", "owner": "alice"},
        {"op": "ps", "owner": "alice"},
        {"op": "kill", "pid": 1, "owner": "alice"},
    ):
        reply = raw_request(sock, request, tuser=False)
        assert reply["ok"] is False and reply["kind"] == RequestError.kind, reply
        assert "'owner' is not accepted" in reply["error"]
    assert daemon.kernel.table.all() == []
    assert effects.row_changes() == {} and effects.file_changes() == []
    # what the daemon does establish: the peer's own name
    pid = kclient.KernelClient(home).spawn("asker")
    assert daemon.kernel.table.get(pid).owner == pwd.getpwuid(os.geteuid()).pw_name


@needs_root
def test_attack_second_os_user_on_a_root_daemon_socket(
    root_daemon: tuple[Path, kerneld.Daemon],
) -> None:
    home, daemon = root_daemon
    sock = home / params.KERNEL_SOCKET_NAME
    victim = kclient.KernelClient(home).spawn("asker")
    wait_for(lambda: daemon.kernel.question(victim) is not None)
    effects = Effects(roots=[home / params.USERS_DIR_NAME], stores=[home / params.LOG_DB_NAME])
    effects.snapshot()
    attempts: list[dict[str, Any]] = [
        {"op": "spawn", "program": "asker", "cwd": "/"},
        {"op": "kill", "pid": victim},
        {"op": "answer", "pid": victim, "text": "x"},
        {"op": "shutdown"},
    ]
    for request in attempts:  # the socket's mode (and home's) keep tuser out...
        assert "connect_error" in raw_request(sock, request, tuser=True)
    for p in (home.parent, home):
        os.chmod(p, 0o755)
    os.chmod(sock, 0o666)  # ...and with them loosened, SO_PEERCRED still does
    for request in attempts:
        reply = raw_request(sock, request, tuser=True)
        assert reply.get("ok") is False and "not the kernel's owner" in reply["error"], reply
    procs = daemon.kernel.table.all()
    assert [(p.pid, p.alive, p.entity.killed) for p in procs] == [(victim, True, False)]
    assert daemon.kernel.question(victim) == "Who?" and not daemon.stopping
    assert effects.row_changes() == {} and effects.file_changes() == []


@needs_root
def test_attack_daemon_user_acts_on_roots_process(tmp_path: Path) -> None:
    """A daemon run by tuser: root's process in it is out of tuser's reach through the socket
    (tuser is the socket's owner, so only ownership stands between them)."""
    base = Path(tempfile.mkdtemp(prefix="pt-", dir="/tmp"))
    os.chmod(base, 0o755)
    home = base / "home"
    (home / params.PROGRAMS_DIR_NAME).mkdir(parents=True)
    (home / params.PROGRAMS_DIR_NAME / "asker.prompt").write_text(prog("asker", ["ask"]))
    os.chmod(home, 0o700)
    _chown_tree(base, TUSER)
    user = pwd.getpwnam(TUSER)
    child = os.fork()
    if child == 0:  # the daemon, as tuser (its modules are already imported)
        code = 1
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ["LLMOS_HOME"] = str(home)
            system = boot(open_log=False)
            cpu = AdversarialCPU([("ask", {"question": "Who?"})])
            system.cpu = lambda spec: cpu  # type: ignore[method-assign]
            kerneld.serve(system)
            code = 0
        finally:
            os._exit(code)
    sock = home / params.KERNEL_SOCKET_NAME
    client = kclient.KernelClient(home)  # root: an admin, owner "root"
    try:
        wait_for(lambda: kclient.probe_status(sock) is not None, 30)
        victim = client.spawn("asker", cwd="/")
        wait_for(lambda: bool(client.request("ps")["processes"][0].get("question")))
        before = client.request("ps")["processes"]
        assert before[0]["owner"] == "root" and before[0]["state"] == "waiting"
        for op, extra in PID_OPS:
            reply = raw_request(sock, {"op": op, "pid": victim, **extra}, tuser=True)
            assert reply["ok"] is False and reply["error"] == f"no process with pid {victim}"
        assert raw_request(sock, {"op": "ps", "all": True}, tuser=True)["processes"] == []
        after = client.request("ps")["processes"]
        assert [(p["pid"], p["state"], p["priority"], p["question"]) for p in after] == [
            (p["pid"], p["state"], p["priority"], p["question"]) for p in before
        ]
        # tuser's own process, start to end, through the same socket (utility)
        own = raw_request(sock, {"op": "spawn", "program": "asker", "cwd": "/"}, tuser=True)
        assert own["ok"] and own["process"]["owner"] == TUSER
        wait_for(
            lambda: (
                [p["pid"] for p in raw_request(sock, {"op": "ps"}, tuser=True)["processes"]]
                == [own["pid"]]
            )
        )
        killed = raw_request(sock, {"op": "kill", "pid": own["pid"]}, tuser=True)
        assert killed["ok"]
        done = raw_request(sock, {"op": "wait", "pid": own["pid"], "timeout": 10}, tuser=True)
        assert done["process"]["exit_status"] == "killed"
        log = home / params.KERNEL_LOG_NAME
        assert not log.exists() or stat.S_IMODE(log.stat().st_mode) & 0o077 == 0
    finally:
        with contextlib.suppress(Exception):
            client.request("shutdown")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
        shutil.rmtree(base, ignore_errors=True)


# --- what must keep working ----------------------------------------------------------------------


def test_utility_a_user_runs_lists_follows_answers_and_kills_their_own_processes(
    kernel: Kernel, tmp_path: Path
) -> None:
    first = asker(kernel, ALICE, tmp_path)
    assert [p["pid"] for p in api.call(kernel, ALICE, "ps", {})["processes"]] == [first.pid]
    api.call(kernel, ALICE, "renice", {"pid": first.pid, "priority": 10})
    api.call(kernel, ALICE, "stop", {"pid": first.pid})
    api.call(kernel, ALICE, "cont", {"pid": first.pid})
    api.call(kernel, ALICE, "answer", {"pid": first.pid, "text": "Alice."})
    events = list(api.call(kernel, ALICE, "follow", {"pid": first.pid}))
    assert events[-1]["done"] and events[-1]["exit_status"] == "ok"
    assert "DONE" in "".join(e.get("text", "") for e in events)
    second = asker(kernel, ALICE, tmp_path)
    api.call(kernel, ALICE, "kill", {"pid": second.pid})
    waited = api.call(kernel, ALICE, "wait", {"pid": second.pid, "timeout": 10})
    assert waited["process"]["exit_status"] == "killed"
    ps = api.call(kernel, ALICE, "ps", {"all": True})["processes"]
    assert sorted(p["pid"] for p in ps) == [first.pid, second.pid]


def test_utility_a_user_works_with_files_and_reads_their_own_logs(
    kernel: Kernel, tmp_path: Path
) -> None:
    path, cpu = _fs_program(
        tmp_path,
        [
            ("fs", {"op": "write", "path": "notes/todo.txt", "content": "buy milk"}),
            ("fs", {"op": "write", "path": "notes/todo.txt", "content": "\nfix", "append": True}),
            ("fs", {"op": "read", "path": "notes/todo.txt"}),
        ],
    )
    kernel.add_cpu(cpu)
    proc = api.spawn(kernel, ALICE, api.SpawnRequest(program=str(path), model="adversary"))
    proc.wait(30)
    assert proc.exit_status == "ok"
    assert (kernel.user_root("alice") / "notes" / "todo.txt").read_text() == "buy milk\nfix"
    tools = [m for m in cpu.requests[-1].messages if m.get("role") == "tool"]
    assert json.loads(str(tools[-1]["content"]))["result"]["content"] == "buy milk\nfix"
    log = kernel.system.log
    (run,) = log.list_runs(owner="alice")
    assert run.id == proc.run_id and run.owner == "alice"
    assert log.get_run(run.id[:8], owner="alice") is not None
    assert log.messages(run.id, owner="alice")
    api.call(kernel, ALICE, "shm.create", {"name": "plan", "text": "v1", "acl": {"bob": "r"}})
    assert api.call(kernel, BOB, "shm.read", {"name": "plan"})["text"] == "v1"  # shared on purpose


def test_attack_llmos_logs_shows_another_owners_runs(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from llmos.front import cli

    home.mkdir(mode=0o700)
    with Log.open(home / params.LOG_DB_NAME) as log:
        theirs = log.start_run("p", "cpu", {"q": SECRET}, [{"role": "user", "content": SECRET}])
        log.finish_run(theirs, status="ok", response=SECRET)
        mine = log.start_run("p", "cpu", {"q": "hello"}, [], owner="bob")
        log.finish_run(mine, status="ok", response="hi")
        alice = log.start_run("p", "cpu", {"q": SECRET}, [], owner="alice")
    monkeypatch.setattr(principals, "current", lambda: principals.Principal("bob"))
    runner = CliRunner()
    listed = runner.invoke(cli.cli, ["logs", "--json", "-n", "0"])
    assert listed.exit_code == 0 and [r["id"] for r in json.loads(listed.output)] == [mine]
    searched = runner.invoke(cli.cli, ["logs", "--json", "-q", SECRET])
    assert json.loads(searched.output) == []
    for run_id in (theirs, alice, alice[:-2]):
        shown = runner.invoke(cli.cli, ["logs", run_id])
        assert shown.exit_code == 21 and SECRET not in shown.output  # not found
    own = runner.invoke(cli.cli, ["logs", mine[:10]])  # utility: one's own run in full
    assert own.exit_code == 0 and "hi" in own.output
    monkeypatch.setattr(principals, "current", lambda: principals.Principal("root", True))
    every = runner.invoke(cli.cli, ["logs", "--json", "-n", "0"])
    assert {r["id"] for r in json.loads(every.output)} == {theirs, mine, alice}
