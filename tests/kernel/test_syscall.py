"""Syscalls: dispatch faults, grants, and syscalls through the process loop."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import BackendError, OutputError, ProgramError, StepLimitError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.kernel import api
from llmos.kernel.boot import boot
from llmos.kernel.calls import Devices
from llmos.kernel.core import Kernel
from llmos.kernel.loop import run_process
from llmos.kernel.plugins import devices as builtin_devices
from llmos.kernel.program import load
from llmos.kernel.syscall import SyscallTable, grants_for
from llmos.store.log import Log

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# --- test devices ------------------------------------------------------------------------------


class Echo(Device):
    name = "echo"
    description = "Echo a word."
    schema = {  # noqa: RUF012
        "type": "object",
        "properties": {"word": {"type": "string"}},
        "required": ["word"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        return DeviceResult.success({"echo": args["word"]})


class Boom(Echo):
    name = "boom"

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        raise RuntimeError("kaboom")


class Hang(Echo):
    name = "hang"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        self.entered.set()
        self.release.wait(30)
        return DeviceResult.success("late")


class Flood(Echo):
    name = "flood"

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        return DeviceResult.success("x" * (100 * 1024 * 1024))


def call(name: str, args: Any) -> ToolCall:
    return ToolCall(
        id="c1", name=name, arguments=args if isinstance(args, str) else json.dumps(args)
    )


@pytest.fixture
def table() -> Any:
    t = SyscallTable({d.name: d for d in (Echo(), Boom(), Hang(), Flood())})
    yield t
    for d in t.devices.values():
        if isinstance(d, Hang):
            d.release.set()
    t.close()


# --- dispatch ------------------------------------------------------------------------------------


def test_dispatch_ok_and_every_fault(table: SyscallTable) -> None:
    grants = dict(table.devices)
    ctx = CallContext(timeout_s=0.5)
    ok = table.dispatch(call("echo", {"word": "hi"}), grants, ctx)
    assert (ok.ok, ok.output) == (True, {"echo": "hi"})
    assert json.loads(ok.segment()) == {"ok": True, "result": {"echo": "hi"}}
    cases = {
        "unknown device 'nope'": call("nope", {}),
        "arguments are not valid JSON": call("echo", "{bad"),
        "arguments must be a JSON object": call("echo", "[1]"),
        "invalid arguments at (arguments): 'word' is a required property": call("echo", {}),
        "invalid arguments at word: 3 is not of type 'string'": call("echo", {"word": 3}),
        "device 'boom' failed: RuntimeError: kaboom": call("boom", {"word": "x"}),
        "device 'hang' did not answer within 0.5 s": call("hang", {"word": "x"}),
    }
    for expected, c in cases.items():
        result = table.dispatch(c, grants, ctx)
        assert not result.ok
        assert result.error is not None and result.error.startswith(expected), result.error
        assert json.loads(result.segment())["ok"] is False
    flood = table.dispatch(call("flood", {"word": "x"}), grants, ctx)
    assert flood.ok and flood.truncated
    assert len(flood.output.encode()) <= ctx.max_output_bytes


def test_dispatch_denies_devices_not_granted(table: SyscallTable) -> None:
    grants = {"echo": table.devices["echo"]}
    denied = table.dispatch(call("boom", {"word": "x"}), grants, CallContext())
    assert denied.error == "device 'boom' is not granted to this program"


def test_grants_follow_declarations() -> None:
    devices = builtin_devices()
    assert set(grants_for(["calc"], {}, devices, "p")) == {"calc"}
    with pytest.raises(ProgramError, match="declares unknown device 'teleport'"):
        grants_for(["teleport"], {}, devices, "p")
    with pytest.raises(ProgramError, match="device 'shell' is off by default"):
        grants_for(["shell"], {}, devices, "p")
    assert "shell" in grants_for([], {"shell": {"grant": True}}, devices, "p")


# --- the agent loop ------------------------------------------------------------------------------


PROGRAM = """---
name: agent
description: test agent
tools: [calc]
llmos.max_steps: 3
---
{{role "user"}}
{{input}}
"""


@pytest.fixture
def agent_program(tmp_path: Path) -> Any:
    path = tmp_path / "agent.prompt"
    path.write_text(PROGRAM)
    return load(path)


def _run(tmp_path: Path, program: Any, cpu: ScriptedCPU) -> Any:
    table = SyscallTable(builtin_devices())
    grants = grants_for(program.tools, {}, table.devices, "agent")
    trace: list[dict[str, Any]] = []
    devices = Devices(table, grants, CallContext(root=tmp_path))
    with Log.open(tmp_path / "logs.db") as log:
        try:
            result = run_process(
                program, {"input": "q"}, cpu, log, devices=devices, on_trace=trace.append
            )
        finally:
            table.close()
        record = log.get_run(result.run_id)
    return result, trace, record


def test_agent_loop_calls_then_answers(tmp_path: Path, agent_program: Any) -> None:
    cpu = ScriptedCPU([[call("calc", {"expression": "17*23"})], "It is 391."])
    result, trace, record = _run(tmp_path, agent_program, cpu)
    assert result.output == "It is 391."
    assert [t["kind"] for t in trace] == ["syscall", "text"]
    assert trace[0]["result"] == {"result": "391", "exact": True}
    # the second request carried the call and its result back to the model
    second = cpu.requests[1].messages
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calc"
    assert second[-1]["role"] == "tool"
    assert json.loads(second[-1]["content"]) == {
        "ok": True,
        "result": {"result": "391", "exact": True},
    }
    assert cpu.requests[0].tools is not None and cpu.requests[0].tools[0].name == "calc"
    assert record.extra["steps"][0]["device"] == "calc"  # every step is in the log
    by_kind = record.extra["context"]["by_kind"]  # tokens per kind of segment, counted
    assert by_kind["input"]["tokens"] == 1  # "q": one token on the scripted CPU
    assert all(row["tokens"] > 0 for row in by_kind.values())


def test_agent_loop_recovers_from_errors_and_denials(tmp_path: Path, agent_program: Any) -> None:
    cpu = ScriptedCPU(
        [
            [call("fs", {"op": "read", "path": "x"})],  # not declared: denied
            [call("calc", {"expression": "1/0"})],  # the device reports an error
            "I could not compute it.",
        ]
    )
    result, trace, _ = _run(tmp_path, agent_program, cpu)
    assert trace[0]["error"] == "device 'fs' is not granted to this program"
    assert not trace[1]["ok"] and "division by zero" in trace[1]["error"]
    assert result.output == "I could not compute it."


def test_agent_loop_stops_at_max_steps(tmp_path: Path, agent_program: Any) -> None:
    cpu = ScriptedCPU([[call("calc", {"expression": "1+1"})]] * 3)
    with pytest.raises(StepLimitError, match=r"reached llmos.max_steps \(3\)") as caught:
        _run(tmp_path, agent_program, cpu)
    # its own exit code: not 7, which says the reply failed the output schema
    assert caught.value.exit_code == 22 != OutputError.exit_code


def test_a_failed_tool_using_run_is_logged_with_its_tokens_and_steps(
    tmp_path: Path, agent_program: Any
) -> None:
    cpu = ScriptedCPU([[call("calc", {"expression": "1+1"})]] * 3)
    with pytest.raises(StepLimitError):
        _run(tmp_path, agent_program, cpu)
    with Log.open(tmp_path / "logs.db") as log:
        (record,) = log.list_runs()
    assert record.status == "failed" and record.error_kind == "step_limit"
    assert record.prompt_tokens > 0
    assert record.extra is not None
    assert [s["device"] for s in record.extra["steps"]] == ["calc"] * 3
    assert record.to_json()["steps"][0]["result"] == {"result": "2", "exact": True}


def test_required_tool_choice_not_enforced_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "required.prompt"
    path.write_text(PROGRAM.replace("llmos.max_steps: 3", "llmos.tool_choice: required"))
    cpu = ScriptedCPU(["It is 391, I think."])  # a CPU that ignored the required call
    with pytest.raises(BackendError, match="tool_choice: required") as caught:
        _run(tmp_path, load(path), cpu)
    assert caught.value.exit_code == 6
    assert cpu.requests[0].tool_choice == "required"


def test_a_call_cut_off_by_the_output_cap_names_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "capped.prompt"
    path.write_text(
        PROGRAM.replace("llmos.max_steps: 3", "llmos.max_steps: 2\nconfig:\n  maxOutputTokens: 4")
    )
    long_call = (
        '<tool_call> {"name": "calc", "arguments": {"expression": "1 + 2 + 3"}} </tool_call>'
    )
    cpu = ScriptedCPU([long_call, long_call])
    with pytest.raises(StepLimitError, match=r"4-token output cap \(raise maxOutputTokens\)"):
        _run(tmp_path, load(path), cpu)
    # the model was told why, too
    assert "4-token output cap" in cpu.requests[1].messages[-1]["content"]


def test_an_empty_answer_after_tool_calls_is_an_error(tmp_path: Path, agent_program: Any) -> None:
    cpu = ScriptedCPU([[call("calc", {"expression": "2+2"})], "   "])
    with pytest.raises(OutputError, match="answer after the tool calls is empty") as caught:
        _run(tmp_path, agent_program, cpu)
    assert caught.value.exit_code == 7


def test_a_process_is_blocked_during_its_syscall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_program: Any
) -> None:
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    system = boot()
    hang = Hang()
    system._syscalls = SyscallTable({"calc": hang})
    hang.name = "calc"
    kernel = Kernel(system)
    kernel.add_cpu(ScriptedCPU([[call("calc", {"word": "x"})], "done"]))
    proc = kernel.spawn(agent_program, {"input": "q"}, model="scripted")
    assert hang.entered.wait(10)
    assert proc.state.value == "blocked"
    assert proc.syscalls == 1
    hang.release.set()
    kernel.wait(proc.pid, timeout=10)
    assert (proc.exit_status, proc.text) == ("ok", "done")
    kernel.shutdown()
    system.close()


# --- end to end on the embedded model --------------------------------------------------------


@pytest.mark.slow
def test_the_embedded_model_calls_calc_and_uses_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    system = boot()
    program = load(EXAMPLES / "arithmetic.prompt")
    trace: list[dict[str, Any]] = []
    started = time.perf_counter()
    kernel = Kernel(system)
    result = api.run(
        kernel,
        api.Caller("tester"),
        program,
        {"input": "What is 1234 * 5678?"},
        cpu=system.cpu("embedded"),
        on_trace=trace.append,
    )
    kernel.shutdown()
    assert time.perf_counter() - started < 120
    assert trace[0]["kind"] == "syscall" and trace[0]["device"] == "calc"
    assert json.loads(trace[0]["arguments"]) == {"expression": "1234 * 5678"}
    assert trace[0]["result"] == {"result": "7006652", "exact": True}
    assert "7006652" in result.output
    system.close()
