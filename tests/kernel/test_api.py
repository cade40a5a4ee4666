"""The kernel's API on its own: the operation table validates every request into one clear
line, and the same operations serve processes, memories and shared segments in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.errors import AccessError, NotFoundError, RequestError
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import api
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel


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
