"""Shared memory segments: rights (owner, acl, others), compare-and-swap writes, processes of
different owners sharing a segment through the devices, attaching at spawn, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import AccessError, InputError, NotFoundError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import boot
from llmos.kernel.core import Kernel
from llmos.store.memory import MemoryStore
from llmos.store.shm import SharedMemory
from tests.conftest import RunCli


@pytest.fixture
def shm(tmp_path: Path) -> SharedMemory:
    store = MemoryStore.open(tmp_path / "memory.db")
    yield SharedMemory(store)
    store.close()


def test_rights_are_checked_on_every_access(shm: SharedMemory) -> None:
    shm.create("alice", "plan", "step 1", acl={"bob": "r"})
    assert shm.read("bob", "plan").text == "step 1"
    with pytest.raises(AccessError, match="bob may not write"):
        shm.write("bob", "plan", "hijacked")
    with pytest.raises(AccessError, match="carol may not read"):
        shm.read("carol", "plan")
    assert [s.name for s in shm.list("carol")] == []
    shm.chmod("alice", "plan", grant={"bob": "rw"}, others="r")
    assert shm.write("bob", "plan", "\nstep 2", append=True).text == "step 1\nstep 2"
    assert shm.write("bob", "plan", "step 3", append=True).text == "step 1\nstep 2\nstep 3"
    assert shm.read("carol", "plan").version == 3
    with pytest.raises(AccessError, match="only alice may change"):
        shm.chmod("bob", "plan", others="rw")
    with pytest.raises(AccessError, match="only alice may remove"):
        shm.remove("bob", "plan")
    shm.chmod("alice", "plan", grant={"bob": ""})  # revoke
    with pytest.raises(AccessError):
        shm.write("bob", "plan", "x")
    shm.remove("alice", "plan")
    with pytest.raises(NotFoundError, match="no shared segment"):
        shm.read("alice", "plan")


def test_compare_and_swap_and_limits(shm: SharedMemory) -> None:
    seg = shm.write("alice", "counter", "1")  # created on first write, private
    assert (seg.owner, seg.others, seg.version) == ("alice", "", 1)
    shm.write("alice", "counter", "2", if_version=1)
    with pytest.raises(InputError, match="at version 2, not 1"):
        shm.write("alice", "counter", "3", if_version=1)
    assert shm.read("alice", "counter").text == "2"
    with pytest.raises(InputError, match="bad segment name"):
        shm.write("alice", "Bad Name!", "x")
    with pytest.raises(InputError, match="limit"):
        shm.write("alice", "big", "x" * (params.SHM_MAX_BYTES + 1))
    with pytest.raises(InputError, match="already exists"):
        shm.create("bob", "counter")


WRITER = """---
name: writer
tools: [shm_write, shm_read]
input:
  schema:
    input: string
---
{{role "system"}}
Share your findings.
{{role "user"}}
{{input}}
"""

READER = """---
name: reader
tools: [shm_read]
llmos.shm: [findings]
input:
  schema:
    input: string
---
{{role "system"}}
Use the shared findings.
{{role "user"}}
{{input}}
"""


def test_processes_of_two_owners_share_a_segment(home: Path, tmp_path: Path) -> None:
    (tmp_path / "writer.prompt").write_text(WRITER)
    (tmp_path / "reader.prompt").write_text(READER)
    system = boot.boot()
    SharedMemory(system.memory).create("alice", "findings", "", acl={"bob": "r"})
    kernel = Kernel(system)
    write = json.dumps({"name": "findings", "text": "The bug is in the parser."})
    cpu = ScriptedCPU([[ToolCall(id="w", name="shm_write", arguments=write)], "Shared."])
    proc = kernel.spawn(str(tmp_path / "writer.prompt"), {"input": "go"}, owner="alice", cpu=cpu)
    proc.wait(30)
    assert proc.exit_status == "ok", proc.error
    # bob's process gets the segment attached at spawn, and may read it...
    cpu2 = ScriptedCPU(["The parser."])
    proc = kernel.spawn(str(tmp_path / "reader.prompt"), {"input": "go"}, owner="bob", cpu=cpu2)
    proc.wait(30)
    assert proc.exit_status == "ok", proc.error
    shared = [m for m in cpu2.requests[0].messages if "The bug is in the parser." in m["content"]]
    assert shared and shared[0]["role"] == "user"  # untrusted: fenced data, never system
    assert proc.context.accounting()["by_kind"]["shm"]["segments"] == 1
    # ...but not write it: the device says so, and the segment is unchanged.
    bad = json.dumps({"name": "findings", "text": "nothing to see"})
    cpu3 = ScriptedCPU([[ToolCall(id="b", name="shm_write", arguments=bad)], "Failed."])
    proc = kernel.spawn(str(tmp_path / "writer.prompt"), {"input": "go"}, owner="bob", cpu=cpu3)
    proc.wait(30)
    tool = next(m for m in cpu3.requests[1].messages if m["role"] == "tool")
    assert "bob may not write shared segment 'findings'" in str(tool["content"])
    assert SharedMemory(system.memory).read("alice", "findings").version == 2
    # carol may not even attach it: the process fails at spawn with a clear access error.
    cpu4 = ScriptedCPU(["never"])
    proc = kernel.spawn(str(tmp_path / "reader.prompt"), {"input": "go"}, owner="carol", cpu=cpu4)
    proc.wait(30)
    assert proc.exit_status == "failed" and "carol may not read" in str(proc.error)
    assert cpu4.requests == []
    kernel.shutdown()
    system.close()


def test_cli_shm_commands(run_cli: RunCli) -> None:
    assert run_cli("shm", "create", "notes", "hello", "--others", "r").returncode == 0
    assert run_cli("shm", "read", "notes").stdout == "hello\n"  # a line ends in a newline
    assert run_cli("shm", "read", "notes", "--raw").stdout == "hello"
    result = run_cli("shm", "write", "notes", "world", "--append", "--if-version", "1")
    assert result.returncode == 0 and result.stdout.strip() == "notes v2"
    assert run_cli("shm", "read", "notes").stdout == "hello\nworld\n"  # an append is a line
    result = run_cli("shm", "write", "notes", "x", "--if-version", "1")
    assert result.returncode == 4 and "version 2" in result.stderr
    listing = json.loads(run_cli("shm", "ls", "--json").stdout)
    assert listing[0]["name"] == "notes" and listing[0]["others"] == "r"
    result = run_cli("shm", "chmod", "notes", "--grant", "bad")
    assert result.returncode == 4 and "USER=r" in result.stderr
    result = run_cli("shm", "read", "missing")  # not found: its own code, not bad input's 4
    assert result.returncode == 21 and result.stderr == (
        "llmos: error: no shared segment named 'missing'\n"
    )
    assert run_cli("shm", "rm", "notes").returncode == 0
