"""The kernel's API on its own: the operation table validates every request into one clear
line, and the same operations serve processes, memories and shared segments in-process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import AccessError, NoSuchProcessError, NotFoundError, RequestError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import api
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from tests import approvals


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    k = Kernel(boot())
    yield k
    k.shutdown()
    k.system.close()


ALICE = api.Caller("alice")
BOB = api.Caller("bob")


@pytest.mark.parametrize(
    ("op", "payload", "message"),
    [
        ("reboot", {}, "unknown op 'reboot': use one of spawn, ps, kill"),
        ("kill", {}, "kill needs 'pid'"),
        ("kill", {"pid": "1"}, "'pid' must be an integer, got '1'"),
        ("kill", {"pid": True}, "'pid' must be an integer, got True"),
        ("kill", {"pid": 1, "sig": 9}, "kill takes no 'sig'"),
        ("wait", {"pid": 1, "timeout": -1}, "'timeout' must not be negative, got -1"),
        ("spawn", {"program": ""}, "'program' must not be empty"),
        ("spawn", {"program": "x", "inputs": []}, "'inputs' must be a JSON object, got []"),
        ("spawn", {"program": "x", "budget": -1}, "'budget' must not be negative, got -1"),
        ("memory.recall", {"query": "q", "k": 0}, "'k' must not be negative"),
    ],
)
def test_malformed_requests_are_one_line(
    kernel: Kernel, op: str, payload: dict[str, object], message: str
) -> None:
    with pytest.raises(RequestError) as info:
        api.call(kernel, ALICE, op, payload)
    assert str(info.value).startswith(message.split(", got")[0])
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_every_op_has_a_strict_request_model() -> None:
    for name, op in api.OPS.items():
        assert op.name == name
        assert op.request.model_config.get("extra") == "forbid"
        assert op.request.model_config.get("strict") is True


def test_spawn_follow_and_wait_through_the_table(kernel: Kernel, tmp_path: Path) -> None:
    cpu = ScriptedCPU(["one two three"])
    kernel.add_cpu(cpu)
    prog = tmp_path / "p.prompt"
    prog.write_text("---\nname: p\n---\n{{input}}\n")
    reply = api.call(
        kernel, ALICE, "spawn", {"program": str(prog), "stdin": "hi", "model": "scripted"}
    )
    pid = reply["pid"]
    assert reply["process"]["owner"] == "alice"
    events = list(api.call(kernel, ALICE, "follow", {"pid": pid}))
    assert "".join(e.get("text", "") for e in events) == "one two three"
    assert events[-1]["done"] is True and events[-1]["exit_status"] == "ok"
    waited = api.call(kernel, ALICE, "wait", {"pid": pid})
    assert waited["text"] == "one two three" and waited["timed_out"] is False
    assert [p["pid"] for p in api.call(kernel, ALICE, "ps", {"all": True})["processes"]] == [pid]


def test_a_program_that_cannot_load_is_journalled(kernel: Kernel, tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"missing\.prompt"):
        api.call(kernel, ALICE, "spawn", {"program": str(tmp_path / "missing.prompt")})
    (row,) = kernel.system.log.list_runs()
    assert row.status == "failed" and row.error_kind == "program"


def test_memory_ops_are_scoped_to_the_caller(kernel: Kernel) -> None:
    mid = api.call(kernel, ALICE, "memory.remember", {"text": "the lock code is 4719"})["id"]
    hits = api.call(kernel, ALICE, "memory.recall", {"query": "lock code"})["hits"]
    assert hits[0]["id"] == f"m{mid}"
    assert api.call(kernel, BOB, "memory.recall", {"query": "lock code"})["hits"] == []
    with pytest.raises(NotFoundError, match=f"no memory m{mid} of bob"):
        api.call(kernel, BOB, "memory.forget", {"id": mid})
    assert api.call(kernel, ALICE, "memory.forget", {"id": mid}) == {"forgotten": mid}
    assert api.call(kernel, ALICE, "memory.list", {})["hits"] == []


def test_shm_ops_keep_their_rights(kernel: Kernel) -> None:
    api.call(kernel, ALICE, "shm.create", {"name": "plan", "text": "step 1", "acl": {"bob": "r"}})
    assert api.call(kernel, BOB, "shm.read", {"name": "plan"})["text"] == "step 1"
    with pytest.raises(AccessError):
        api.call(kernel, BOB, "shm.write", {"name": "plan", "text": "mine now"})
    seg = api.call(
        kernel, ALICE, "shm.write", {"name": "plan", "text": "\nstep 2", "append": True}
    )["segment"]
    assert seg["version"] == 2
    assert [s["name"] for s in api.call(kernel, BOB, "shm.ls", {})["segments"]] == ["plan"]
    api.call(kernel, ALICE, "shm.rm", {"name": "plan"})
    assert api.call(kernel, ALICE, "shm.ls", {})["segments"] == []


def _until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_context_and_steps_show_paging_and_approvals(kernel: Kernel, tmp_path: Path) -> None:
    kernel.user_policy = lambda owner: approvals.APPROVE_CALC
    cpu = ScriptedCPU(approvals.replies())
    kernel.add_cpu(cpu)
    prog = tmp_path / "grow.prompt"
    prog.write_text(approvals.GROW)
    spawn = {"program": str(prog), "stdin": approvals.INPUT, "model": "scripted"}
    pid = api.call(kernel, ALICE, "spawn", spawn)["pid"]
    seen = []

    def waiting() -> dict[str, Any] | None:
        steps: dict[str, Any] = api.call(kernel, ALICE, "steps", {"pid": pid})
        return steps if steps["approval"] else None

    for expression in ("1 + 1", approvals.LONG, "2 + 2"):
        steps = _until(waiting)
        call = steps["approval"]["call"]
        assert call.startswith('calc {"expression": "' + expression[:40]), call
        assert steps["state"] == "waiting_approval"
        ctx = api.call(kernel, ALICE, "context", {"pid": pid})
        seen.append((ctx["pages_out"], len(steps["steps"])))
        assert ctx["limit"] == 400 and 0 < ctx["used"] <= 400
        assert ctx["segments"][0]["kind"] == "input" and ctx["segments"][0]["label"] == "trusted"
        api.call(kernel, ALICE, "approve", {"pid": pid})
    # nothing paged before the long call, pages out after it; one step more per approval
    assert seen[0] == (0, 0) and seen[1] == (0, 1)
    assert seen[2][0] > 0 and seen[2][1] == 2
    api.call(kernel, ALICE, "wait", {"pid": pid})
    ctx = api.call(kernel, ALICE, "context", {"pid": pid})
    paged = [s for s in ctx["segments"] if not s["resident"]]
    assert paged and all(s["page"].startswith("p") for s in paged)
    assert sum(row["paged"] for row in ctx["by_kind"].values()) == len(paged)
    resident = [s for s in ctx["segments"] if s["resident"]]
    assert any(s["kind"] == "syscall" and "4" in s["preview"] for s in resident)
    steps = api.call(kernel, ALICE, "steps", {"pid": pid})
    assert [s["kind"] for s in steps["steps"]] == ["syscall", "syscall", "syscall", "text"]
    assert [s["result"] for s in steps["steps"][:3:2]] == [
        "{'result': '2', 'exact': True}",
        "{'result': '4', 'exact': True}",
    ]
    assert all(s["ok"] and s["at"] > 0 for s in steps["steps"][:3])
    assert [(s["decision"], s["by"]) for s in steps["steps"][:3]] == [("approved", "alice")] * 3
    assert steps["approval"] is None and steps["state"] == "exited"
    # another owner's pid is as if it did not exist
    for op in ("context", "steps"):
        with pytest.raises(NoSuchProcessError):
            api.call(kernel, BOB, op, {"pid": pid})


def test_context_names_the_untrusted_text_that_tainted_it(kernel: Kernel, tmp_path: Path) -> None:
    root = kernel.user_root("alice")
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("buy milk\n")
    read = [ToolCall("r1", "fs", json.dumps({"op": "read", "path": "notes.txt"}))]
    kernel.add_cpu(ScriptedCPU([read, "You need milk."]))
    prog = tmp_path / "notes.prompt"
    prog.write_text('---\nname: notes\ntools: [fs]\n---\n{{role "user"}}\nRead my notes.\n')
    pid = api.call(kernel, ALICE, "spawn", {"program": str(prog), "model": "scripted"})["pid"]
    api.call(kernel, ALICE, "wait", {"pid": pid})
    ctx = api.call(kernel, ALICE, "context", {"pid": pid})
    assert ctx["tainted"] is True and ctx["sources"] == ["fs:notes.txt"]
    labels = {s["kind"]: s["label"] for s in ctx["segments"] if s["kind"] in ("input", "syscall")}
    assert labels == {"input": "trusted", "syscall": "untrusted"}
    steps = api.call(kernel, ALICE, "steps", {"pid": pid})["steps"]
    assert [s["kind"] for s in steps] == ["syscall", "text"]
    step = steps[0]
    assert step["device"] == "fs" and "buy milk" in step["result"]
    assert step["decision"] == "allowed"
