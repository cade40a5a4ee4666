"""`llmos.route: {sentiment: FIELD}`: the kernel calls the sentiment device on the input before
the CPU runs, and a confident label narrows FIELD's enum in the schema the CPU is held to;
bad route settings are refused at load with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.errors import ProgramError
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import dependable
from llmos.kernel.program import load
from tests.kernel import scripted

LABELS = "[positive, negative, neutral]"
BODY = "Classify: {{input}}"
CLASSIFY = (
    f"tools: [sentiment]\nllmos.route: {{sentiment: label}}\nllmos.max_steps: 1\n"
    f"output:\n  format: json\n  schema:\n    label(enum): {LABELS}\n    why?: string"
)


def test_a_confident_label_narrows_the_enum_the_cpu_is_held_to(tmp_path: Path) -> None:
    program = scripted.program(tmp_path, CLASSIFY, BODY)
    cpu = ScriptedCPU(['{"label": "negative", "why": "rude"}'])
    result, _ = scripted.run(tmp_path, program, cpu, "The food was cold and the waiter was rude.")
    [request] = cpu.requests
    assert request.tools is None  # the device is the kernel's: the model is not offered it
    props = request.json_schema["properties"]
    assert props["label"]["enum"] == ["negative"]
    assert props["why"] == program.output_schema["properties"]["why"]  # the CPU's own field
    assert result.output == {"label": "negative", "why": "rude"}
    [call] = result.extra["steps"]
    assert call["from"] == "kernel" and call["routed"] and call["device"] == "sentiment"
    assert call["step"] == 1 and call["ok"] and call["narrowed"] == {"label": "negative"}
    assert json.loads(call["arguments"]) == {"text": "The food was cold and the waiter was rude."}


def test_the_narrowed_schema_is_enforced_on_the_answer(tmp_path: Path) -> None:
    program = scripted.program(tmp_path, CLASSIFY, BODY)
    cpu = ScriptedCPU(['{"label": "positive"}', '{"label": "negative"}'])
    result, _ = scripted.run(tmp_path, program, cpu, "The hotel room was dirty and smelled bad.")
    assert result.output == {"label": "negative"} and len(cpu.requests) == 2


def test_a_mixed_text_leaves_the_choice_to_the_cpu(tmp_path: Path) -> None:
    program = scripted.program(tmp_path, CLASSIFY, BODY)
    cpu = ScriptedCPU(['{"label": "neutral"}'])
    result, _ = scripted.run(
        tmp_path, program, cpu, "Awful customer support, nobody answered my emails."
    )
    [request] = cpu.requests
    assert request.json_schema["properties"]["label"]["enum"] == [
        "positive",
        "negative",
        "neutral",
    ]
    assert result.output == {"label": "neutral"}  # the CPU's choice stands
    [call] = result.extra["steps"]
    assert call["from"] == "kernel" and call["result"]["confident"] is False
    assert "narrowed" not in call


def test_a_label_outside_the_enum_narrows_nothing(tmp_path: Path) -> None:
    front = CLASSIFY.replace(LABELS, "[positive, negative]")
    cpu = ScriptedCPU(['{"label": "positive"}'])
    scripted.run(
        tmp_path, scripted.program(tmp_path, front, BODY), cpu, "The museum is closed on Mondays."
    )
    assert cpu.requests[0].json_schema["properties"]["label"]["enum"] == ["positive", "negative"]


def test_the_route_counts_no_step_of_the_cpus(tmp_path: Path) -> None:
    front = CLASSIFY.replace("tools: [sentiment]", "tools: [sentiment, calc]")
    cpu = ScriptedCPU(['{"label": "positive"}'])
    result, _ = scripted.run(
        tmp_path, scripted.program(tmp_path, front, BODY), cpu, "What a great dinner."
    )
    [request] = cpu.requests
    assert [t.name for t in request.tools or []] == ["calc"]  # one step left for the CPU
    assert result.output == {"label": "positive"}


@pytest.mark.parametrize(
    ("front", "problem"),
    [
        (CLASSIFY.replace("{sentiment: label}", "{sentiment: mood}"), "has no field 'mood'"),
        (CLASSIFY.replace("{sentiment: label}", "{sentiment: why}"), "must be a string enum"),
        (CLASSIFY.replace(LABELS, "[good, bad]"), "values ['good', 'bad']"),
        (CLASSIFY.replace("tools: [sentiment]\n", ""), "add 'tools: [sentiment]'"),
        (CLASSIFY.replace("{sentiment: label}", "{sentiment: 3}"), "name of an output field"),
        (CLASSIFY.replace("{sentiment: label}", "{sentiments: label}"), "unknown keys"),
        ("llmos.route: {sentiment: label}\ntools: [sentiment]", "needs a JSON output schema"),
    ],
)
def test_bad_route_settings_are_refused_at_load(tmp_path: Path, front: str, problem: str) -> None:
    with pytest.raises(ProgramError) as info:
        scripted.program(tmp_path, front, BODY)
    message = str(info.value)
    assert problem in message and "\n" not in message and "llmos.route" in message


def test_the_shipped_classify_example_uses_the_route() -> None:
    program = load(Path(__file__).resolve().parents[2] / "examples" / "classify.prompt")
    assert dependable.kernel_devices(program.llmos) == ("sentiment",)
    assert "sentiment" in program.tools
