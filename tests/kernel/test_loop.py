"""The process loop on its own (a scripted CPU, a real log): one loop for plain programs and
programs with devices; JSON validation and retry; the one budget check; steps and max_steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import BudgetError, OutputError
from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev.base import CallContext
from llmos.kernel.calls import Devices
from llmos.kernel.loop import run_process
from llmos.kernel.plugins import devices as builtin_devices
from llmos.kernel.program import Program, load
from llmos.kernel.reply import RunResult, TextGate
from llmos.kernel.sched.policy import Entity
from llmos.kernel.syscall import SyscallTable, grants_for
from llmos.store.log import Log


def _program(tmp_path: Path, front: str, body: str = "{{input}}") -> Program:
    path = tmp_path / "p.prompt"
    path.write_text(f"---\n{front}\n---\n{body}\n")
    return load(path)


def _run(
    tmp_path: Path,
    program: Program,
    cpu: ScriptedCPU,
    *,
    devices: Devices | None = None,
    entity: Entity | None = None,
) -> tuple[RunResult, list[str], Any]:
    seen: list[str] = []
    with Log.open(tmp_path / "logs.db") as log:
        result = run_process(
            program, {"input": "hello"}, cpu, log, seen.append, devices=devices, entity=entity
        )
        record = log.get_run(result.run_id)
    return result, seen, record


def test_a_plain_program_is_one_step_with_no_tools(tmp_path: Path) -> None:
    cpu = ScriptedCPU(["Hi there."])
    result, seen, record = _run(tmp_path, _program(tmp_path, "name: p"), cpu)
    assert "".join(seen) == "Hi there." and result.output == "Hi there."
    assert len(cpu.requests) == 1 and cpu.requests[0].tools is None
    assert cpu.requests[0].json_schema is None
    assert record.status == "ok" and record.response == "Hi there."
    assert "steps" not in result.extra


def test_json_is_printed_only_once_it_validates_and_is_retried_once(tmp_path: Path) -> None:
    program = _program(tmp_path, "name: j\noutput:\n  format: json\n  schema:\n    n: integer")
    cpu = ScriptedCPU(['{"n": "x"}', '{"n": 3}'])
    result, seen, record = _run(tmp_path, program, cpu)
    assert result.output == {"n": 3} and result.attempts == 2
    assert seen == ['{"n": 3}']  # the invalid first reply never reached stdout
    assert cpu.requests[0].json_schema is not None
    assert "invalid" in cpu.requests[1].messages[-1]["content"]
    assert record.status == "ok"


def test_json_that_never_validates_fails_with_output_error(tmp_path: Path) -> None:
    program = _program(tmp_path, "name: j\noutput:\n  format: json")
    cpu = ScriptedCPU(["nope", "still not"])
    with pytest.raises(OutputError, match="not valid JSON"):
        _run(tmp_path, program, cpu)
    with Log.open(tmp_path / "logs.db") as log:
        (row,) = log.list_runs()
    assert row.status == "failed" and row.error_kind == "output"


def test_a_prompt_over_the_budget_fails_with_one_line_that_says_so(tmp_path: Path) -> None:
    """A budget counts prompt and generated tokens; a prompt alone past it is refused with the
    prompt's size (never an empty answer logged as cancelled)."""
    program = _program(tmp_path, "name: p")
    entity = Entity(budget=2)  # the prompt alone (3 tokens) is over it
    cpu = ScriptedCPU(["never generated"])
    with pytest.raises(BudgetError) as caught:
        _run(tmp_path, program, cpu, entity=entity)
    assert str(caught.value) == (
        f"{program.path}: the prompt is 3 tokens and the process's token budget is 2: nothing "
        "is left to generate with (a budget counts prompt and generated tokens: give one "
        "larger than the prompt plus the reply)"
    )
    assert caught.value.exit_code == 19 and caught.value.kind == "budget"
    assert cpu.requests == []
    assert entity.prompt_tokens == 0 and entity.exhausted  # a prompt past the budget: uncharged
    with Log.open(tmp_path / "logs.db") as log:
        (record,) = log.list_runs()
    assert record.status == "failed" and record.error_kind == "budget"


def test_a_remote_cpu_stops_generating_at_the_budget(tmp_path: Path) -> None:
    program = _program(tmp_path, "name: p")
    entity = Entity(budget=5)  # the prompt (3 tokens) fits; 2 generated tokens end it
    cpu = ScriptedCPU(["one two three four"])
    result, seen, record = _run(tmp_path, program, cpu, entity=entity)
    assert result.finish_reason == "budget" and "".join(seen) == "one two "
    assert (entity.prompt_tokens, entity.generated) == (3, 2)
    assert record.status == "cancelled" and record.error_kind == "budget"


def _devices(tmp_path: Path, program: Program) -> Devices:
    table = SyscallTable(builtin_devices())
    return Devices(table, grants_for(program.tools, {}, table.devices, "t"), CallContext())


def test_a_program_with_devices_calls_then_answers_and_records_its_steps(tmp_path: Path) -> None:
    program = _program(tmp_path, "name: a\ntools: [calc]")
    call = ToolCall(id="c1", name="calc", arguments=json.dumps({"expression": "6*7"}))
    cpu = ScriptedCPU([[call], "It is 42."])
    devices = _devices(tmp_path, program)
    try:
        result, seen, record = _run(tmp_path, program, cpu, devices=devices)
    finally:
        devices.table.close()
    assert result.output == "It is 42." and "".join(seen) == "It is 42."
    kinds = [s["kind"] for s in result.extra["steps"]]
    assert kinds == ["syscall", "text"]
    assert result.extra["steps"][0]["result"]["result"] == "42"
    assert cpu.requests[0].tools and cpu.requests[0].tools[0].name == "calc"
    assert cpu.requests[1].messages[-1]["role"] == "tool"
    assert record.extra["steps"] == result.extra["steps"]


def test_running_out_of_steps_names_the_limit(tmp_path: Path) -> None:
    program = _program(tmp_path, "name: a\ntools: [calc]\nllmos.max_steps: 2")
    call = ToolCall(id="c1", name="calc", arguments=json.dumps({"expression": "1+1"}))
    cpu = ScriptedCPU([[call], [call]])
    devices = _devices(tmp_path, program)
    try:
        with pytest.raises(OutputError, match=r"llmos.max_steps \(2\)"):
            _run(tmp_path, program, cpu, devices=devices)
    finally:
        devices.table.close()


def test_text_gate_streams_text_but_never_a_call() -> None:
    seen: list[str] = []
    gate = TextGate(seen.append)
    for piece in ["Let me ", "compute. <tool", '_call>{"name"', "}</tool_call>"]:
        gate(piece)
    gate.flush()
    assert "".join(seen).strip() == "Let me compute."
    seen.clear()
    gate = TextGate(seen.append)
    for piece in ["4 < 5", " is true"]:
        gate(piece)
    gate.flush()
    assert "".join(seen) == "4 < 5 is true"


def test_a_call_to_a_client_function_ends_the_run_with_the_call(tmp_path: Path) -> None:
    """The OpenAI endpoint's `tools`: the caller runs the function, so the loop dispatches
    nothing; the run ends with finish reason `tool_calls` and the call; text before the call
    is the answer's content, and the call itself is never streamed as text."""
    import dataclasses

    from llmos.hw.cpu.base import ToolSpec

    spec = ToolSpec("get_weather", "The weather in a city.", {"type": "object"})
    program = dataclasses.replace(_program(tmp_path, "name: p"), client_tools=[spec])
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    cpu = ScriptedCPU([f"Let me look. {call}"])
    result, seen, record = _run(tmp_path, program, cpu)
    assert result.finish_reason == "tool_calls" and result.text == "Let me look."
    (made,) = result.extra["tool_calls"]
    assert made["name"] == "get_weather" and json.loads(made["arguments"]) == {"city": "Oslo"}
    assert "<tool_call>" not in "".join(seen)
    assert len(cpu.requests) == 1 and [t.name for t in cpu.requests[0].tools or []] == [
        "get_weather"
    ]
    assert record.status == "ok" and record.extra["finish_reason"] == "tool_calls"
    # a reply without a call is the answer, as for any program
    plain = ScriptedCPU(["It is sunny."])
    result, seen, _ = _run(tmp_path, program, plain)
    assert result.finish_reason != "tool_calls" and "".join(seen) == "It is sunny."
