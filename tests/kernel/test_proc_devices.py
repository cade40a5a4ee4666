"""The process devices, `call` and `ask`, on the kernel with the scripted CPU (no model)."""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import NoSuchProcessError
from llmos.front import kclient, kerneld
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev.base import CallContext
from llmos.hw.dev.proc import NO_KERNEL, AskDevice, CallDevice
from llmos.kernel import cpus as cpu_mod
from llmos.kernel.boot import System, boot
from llmos.kernel.core import Kernel


def call(name: str, args: dict[str, Any], cid: str = "c1") -> ToolCall:
    return ToolCall(id=cid, name=name, arguments=json.dumps(args))


def prog(name: str, tools: list[str], extra: str = "", steps: int = 4) -> str:
    return (
        f"---\nname: {name}\ndescription: test {name}\ntools: [{', '.join(tools)}]\n"
        f'llmos.max_steps: {steps}\n{extra}---\n{{{{role "user"}}}}\nGo.\n'
    )


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    programs = tmp_path / params.PROGRAMS_DIR_NAME
    programs.mkdir()
    (programs / "parent.prompt").write_text(prog("parent", ["call", "ask", "clock"]))
    (programs / "child.prompt").write_text(prog("child", ["clock"], "llmos.priority: 35\n"))
    (programs / "loop.prompt").write_text(prog("loop", ["call"], steps=2))
    (programs / "asker.prompt").write_text(prog("asker", ["ask"]))
    (programs / "quick.prompt").write_text(
        prog("quick", ["ask"], "llmos.devices:\n  ask: {timeout_s: 0.3}\n")
    )
    sys_ = boot()
    yield sys_
    sys_.close()


def kernel_with(system: System, replies: list[Any]) -> tuple[Kernel, ScriptedCPU]:
    kernel = Kernel(system)
    cpu = ScriptedCPU(replies)
    kernel.add_cpu(cpu)
    return kernel, cpu


def tool_results(cpu: ScriptedCPU, request: int) -> list[dict[str, Any]]:
    return [
        json.loads(str(m["content"]))
        for m in cpu.requests[request].messages
        if m.get("role") == "tool"
    ]


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- call ----------------------------------------------------------------------------------------


def test_call_runs_a_child_and_returns_its_output(system: System) -> None:
    kernel, cpu = kernel_with(
        system, [[call("call", {"program": "child", "inputs": {}})], "child says hi", "done"]
    )
    try:
        parent = kernel.spawn("parent", {}, model="scripted", priority=10, budget=1000)
        kernel.wait(parent.pid, timeout=10)
        assert (parent.exit_status, parent.text) == ("ok", "done"), parent.error
        [child] = kernel.table.children(parent.pid)
        assert child.program == "child" and child.exit_status == "ok"
        assert child.priority == 10  # the program asks 35: capped by the parent
        assert child.entity.budget is not None and child.entity.budget <= 1000
        assert child.owner == parent.owner and child.depth == 1
        [result] = tool_results(cpu, 2)
        assert result == {
            "ok": True,
            "result": {"pid": child.pid, "exit_status": "ok", "output": "child says hi"},
        }
    finally:
        kernel.shutdown()


def test_call_of_a_missing_program_or_a_failing_child_is_a_failure(system: System) -> None:
    kernel, cpu = kernel_with(
        system,
        [
            [call("call", {"program": "nope"})],
            [call("call", {"program": "child"}, "c2")],
            RuntimeError("backend exploded"),  # the child's CPU fails
            "recovered",
        ],
    )
    try:
        parent = kernel.spawn("parent", {}, model="scripted")
        kernel.wait(parent.pid, timeout=10)
        assert (parent.exit_status, parent.text) == ("ok", "recovered"), parent.error
        missing, failed = tool_results(cpu, 3)
        assert missing["ok"] is False and missing["error"].startswith("cannot start nope:")
        assert failed["ok"] is False and "ended failed" in failed["error"]
        assert "backend exploded" in failed["error"]
    finally:
        kernel.shutdown()


def test_recursion_through_call_stops_at_the_depth_limit(system: System) -> None:
    levels = params.MAX_SPAWN_DEPTH + 1  # pids at depth 0..MAX_SPAWN_DEPTH
    kernel, cpu = kernel_with(
        system, [[call("call", {"program": "loop"})]] * levels + ["bottom"] * levels
    )
    try:
        top = kernel.spawn("loop", {}, model="scripted")
        kernel.wait(top.pid, timeout=30)
        procs = kernel.table.all()
        assert len(procs) == levels
        assert all(p.exit_status == "ok" for p in procs), [(p.pid, p.error) for p in procs]
        assert not kernel.table.all(include_exited=False)
        [refused] = tool_results(cpu, levels)  # the deepest one's call was refused
        assert refused["ok"] is False
        assert f"spawn depth {levels} exceeds the limit" in refused["error"]
        assert top.text == "bottom"
    finally:
        kernel.shutdown()


def test_call_without_a_kernel_says_how_to_get_one() -> None:
    result = CallDevice().call({"program": "x"}, CallContext())
    assert (result.ok, result.error) == (False, NO_KERNEL)


def test_call_and_ask_get_a_longer_syscall_limit() -> None:
    assert CallDevice().timeout_s is not None and CallDevice().timeout_s > params.CALL_TIMEOUT_S
    assert AskDevice().timeout_s is not None and AskDevice().timeout_s > params.ASK_TIMEOUT_S
    # other devices keep the default limit
    from llmos.hw.dev.calc import CalcDevice

    assert CalcDevice().timeout_s is None


# --- ask -----------------------------------------------------------------------------------------


def test_ask_waits_until_answered(system: System) -> None:
    kernel, cpu = kernel_with(
        system, [[call("ask", {"question": "What colour?"})], "You said blue."]
    )
    try:
        proc = kernel.spawn("asker", {}, model="scripted")
        wait_for(lambda: proc.state.value == "waiting")
        [info] = [i for i in kernel.ps() if i["pid"] == proc.pid]
        assert info["question"] == "What colour?" and info["state"] == "waiting"
        assert kernel.top()["processes"][0]["question"] == "What colour?"
        kernel.answer(proc.pid, "blue")
        kernel.wait(proc.pid, timeout=10)
        assert (proc.exit_status, proc.text) == ("ok", "You said blue.")
        assert tool_results(cpu, 1) == [{"ok": True, "result": {"answer": "blue"}}]
        assert kernel.ps()[0]["question"] is None
        with pytest.raises(NoSuchProcessError, match="has already exited"):
            kernel.answer(proc.pid, "late")
    finally:
        kernel.shutdown()


def test_answering_a_process_that_is_not_asking_is_an_error(system: System) -> None:
    kernel, cpu = kernel_with(
        system,
        [
            [call("call", {"program": "asker"})],
            [call("ask", {"question": "Sure?"})],
            "child done",
            "parent done",
        ],
    )
    try:
        parent = kernel.spawn("parent", {}, model="scripted")
        wait_for(lambda: any(p.program == "asker" for p in kernel.table.children(parent.pid)))
        [child] = kernel.table.children(parent.pid)
        wait_for(lambda: kernel.question(child.pid) == "Sure?")
        assert parent.state.value == "blocked"  # in its call, not asking
        with pytest.raises(NoSuchProcessError, match="is not waiting for an answer"):
            kernel.answer(parent.pid, "x")
        with pytest.raises(NoSuchProcessError, match="no process with pid 99"):
            kernel.answer(99, "x")
        kernel.answer(child.pid, "yes")
        kernel.wait(parent.pid, timeout=10)
        assert (parent.exit_status, parent.text) == ("ok", "parent done")
        assert tool_results(cpu, 3)[0]["result"]["output"] == "child done"
    finally:
        kernel.shutdown()


def test_ask_times_out_and_a_kill_ends_the_wait(system: System) -> None:
    kernel, cpu = kernel_with(
        system,
        [
            [call("ask", {"question": "anyone?"})],
            "nobody answered",
            [call("ask", {"question": "still there?"})],
        ],
    )
    try:
        quick = kernel.spawn("quick", {}, model="scripted")
        kernel.wait(quick.pid, timeout=10)
        assert (quick.exit_status, quick.text) == ("ok", "nobody answered")
        assert tool_results(cpu, 1) == [{"ok": False, "error": "no answer within 0.3 s"}]
        waiting = kernel.spawn("asker", {}, model="scripted")
        wait_for(lambda: waiting.state.value == "waiting")
        kernel.kill(waiting.pid)
        assert kernel.wait(waiting.pid, timeout=10).exit_status == "killed"
    finally:
        kernel.shutdown()


def test_ask_without_a_kernel_or_a_terminal_has_no_one_to_ask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("llmos.hw.dev.proc.stdin_is_tty", lambda: False)
    result = AskDevice().call({"question": "hello?"}, CallContext())
    assert not result.ok and result.error is not None
    assert result.error.startswith("no one to ask")


# --- the daemon ------------------------------------------------------------------------------


def test_answer_through_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Path(tempfile.mkdtemp(prefix="pd-", dir="/tmp"))  # a short socket path
    home = base / "home"
    (home / params.PROGRAMS_DIR_NAME).mkdir(parents=True)
    (home / params.PROGRAMS_DIR_NAME / "asker.prompt").write_text(prog("asker", ["ask"]))
    monkeypatch.setenv("LLMOS_HOME", str(home))
    cpu = ScriptedCPU([[call("ask", {"question": "Name?"})], "Hello, Ada."])
    system = boot(open_log=False)
    monkeypatch.setattr(system, "cpu", lambda spec: cpu)  # never load a model
    monkeypatch.setattr(cpu_mod, "close_all", lambda: None)  # leave other tests' CPUs alone
    ready = threading.Event()
    server = threading.Thread(
        target=kerneld.serve, args=(system,), kwargs={"on_ready": lambda d: ready.set()}
    )
    server.start()
    client = kclient.KernelClient(home)
    try:
        assert ready.wait(10)
        pid = client.spawn("asker", model="scripted")
        wait_for(lambda: any(p.get("question") for p in client.request("ps")["processes"]), 10)
        [info] = client.request("ps")["processes"]
        assert (info["pid"], info["state"], info["question"]) == (pid, "waiting", "Name?")
        with pytest.raises(NoSuchProcessError):
            client.request("answer", pid=pid + 1, text="x")
        client.request("answer", pid=pid, text="Ada")
        done = client.request("wait", pid=pid, timeout=10)
        assert (done["process"]["exit_status"], done["text"]) == ("ok", "Hello, Ada.")
    finally:
        with contextlib.suppress(Exception):
            client.request("shutdown")
        server.join(30)
        system.close()
    assert not server.is_alive()
