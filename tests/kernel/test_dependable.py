"""The dependability services (llmos.kernel.dependable) on a scripted CPU: deterministic."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from llmos import params
from llmos.errors import OutputError, ProgramError
from llmos.hw.cpu.base import ToolCall, ToolSpec
from llmos.hw.cpu.grammar import call_grammar
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev import sandbox, sandboxjail
from llmos.hw.dev.base import CallContext
from llmos.kernel.calls import Devices
from llmos.kernel.dependable import redundancy, route, verify
from llmos.kernel.loop import run_process
from llmos.kernel.plugins import devices as builtin_devices
from llmos.kernel.program import Program, load
from llmos.kernel.syscall import SyscallTable, grants_for
from llmos.store.log import Log
from tests.kernel import scripted


@pytest.mark.parametrize(
    ("question", "expression"),
    [
        ("A shop sells 17 books at 23.45 dollars each. How much in total?", "17 * 23.45"),
        ("Tom had 45 apples and gave away 17. How many are left?", "45 - 17"),
        ("3 friends share a bill of 96.30 dollars equally. How much each?", "96.30 / 3"),
        ("Sara has 1,250 coins and gets 375 more. How many now?", "1250 + 375"),
        ("What is (4 + 5) times 2?", "(4 + 5) * 2"),
        ("A ticket costs 12.50 dollars. Tom buys 4 tickets. What is the total cost?", "12.50 * 4"),
        ("Mei earns 15 dollars an hour and works 8 hours. How much does she earn?", "15 * 8"),
        ("A rope is 50 m long. 18 m are cut off. How long is the rest?", "50 - 18"),
        ("What is the capital of France?", None),
    ],
)
def test_arithmetic_is_parsed_from_the_question(question: str, expression: str | None) -> None:
    assert route.arithmetic_expression(question) == expression


def test_the_calc_grammar_admits_only_the_questions_numbers() -> None:
    spec = ToolSpec("calc", "calc", {"type": "object", "properties": {"expression": {}}})
    [constrained] = route.constrain_specs([spec], "17 books at 23.45 each", arithmetic="calc")
    pattern = constrained.parameters["properties"]["expression"]["pattern"]
    import re

    assert re.match(pattern, "17 * 23.45") and not re.match(pattern, "12 * 3.45")
    call_grammar([constrained], required=True)  # llama.cpp's converter accepts it


def test_grounded_arguments_become_a_choice_of_input_spans() -> None:
    spec = ToolSpec("fs", "fs", {"type": "object", "properties": {"path": {}, "content": {}}})
    text = 'Save the note "buy milk" in the file notes/todo.txt.'
    [c] = route.constrain_specs([spec], text, ground={"fs": ("path", "content")})
    assert c.parameters["properties"]["path"]["enum"] == ["buy milk", "notes/todo.txt"]


def test_verify_grounded_and_cites() -> None:
    source = "Maria Lopez, maria@acme.com. Total due: 813.60"
    assert (
        verify.grounded({"name": "Maria Lopez", "total": 813.6}, ["name", "total"], source) is None
    )
    assert "does not occur" in str(verify.grounded({"email": "<EMAIL>"}, ["email"], source))
    assert "does not occur" in str(verify.grounded({"total": 50}, ["total"], source))
    assert "empty" in str(verify.grounded({"email": ""}, ["email"], source))
    assert verify.cites("The answer is 398.650.", ["398.65"]) is None
    assert verify.cites("The answer is 41.4.", ["398.65"]) is not None


def test_votes() -> None:
    assert redundancy.majority(["a", "B", "b", "a ", "b"]) == (1, 3)
    assert redundancy.majority([]) is None
    outs = [{"n": "A", "e": "x"}, {"n": "A"}, {"n": "B", "e": "x"}]
    assert redundancy.consensus(outs, None) == {"n": "A", "e": "x"}


def test_routed_arithmetic_is_called_and_stated_by_the_kernel(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path,
        "name: a\ntools: [calc]\nllmos.route: {arithmetic: calc}\nllmos.verify: {cites: calc}",
    )
    cpu = ScriptedCPU([])  # the model is not asked: calc's result is the answer
    result, seen = scripted.run(tmp_path, program, cpu, "17 books at 23.45 each: the total?")
    steps = result.extra["steps"]
    assert steps[0]["routed"] and steps[0]["arguments"] == '{"expression": "17 * 23.45"}'
    assert steps[1] == {"step": 1, "kind": "text", "from": "kernel"}
    assert result.output == "17 * 23.45 = 398.65" and seen == result.output
    assert cpu.requests == []


def test_a_fraction_is_stated_with_its_decimal_form() -> None:
    assert route.statement("10 / 3", {"result": "10/3", "decimal": "3.333"}) == (
        "10 / 3 = 10/3 (about 3.333)"
    )


def test_a_misquoted_calc_result_is_retried_with_the_reason(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path,
        "name: a\ntools: [calc]\nllmos.route: {arithmetic: calc, mode: grammar}\n"
        "llmos.verify: {cites: calc}",
    )
    call = ToolCall(id="c1", name="calc", arguments='{"expression": "17 * 23.45"}')
    cpu = ScriptedCPU([[call], "The answer is 41.4.", "The answer is 398.65."])
    result, seen = scripted.run(tmp_path, program, cpu, "17 books at 23.45 each: the total?")
    assert result.output == "The answer is 398.65." and seen == result.output
    assert "failed a check" in cpu.requests[2].messages[-1]["content"]


@pytest.mark.parametrize(
    "answer",
    ["It costs $7,006,652.", "That is 7006652.0 in all.", "7 006 652", "Total: USD 7006652.00"],
)
def test_a_cited_number_is_compared_as_a_number(answer: str) -> None:
    assert verify.cites(answer, ["7006652"]) is None
    assert verify.cites("The answer is 36.", ["7006652"]) is not None


def test_an_answer_that_keeps_failing_its_check_fails_clearly(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path,
        "name: a\ntools: [calc]\nllmos.route: {arithmetic: calc}\nllmos.verify: {cites: calc}",
    )
    call = ToolCall(id="c1", name="calc", arguments='{"expression": "6 * 7"}')
    cpu = ScriptedCPU([[call], "It is 7.", "It is 8."])
    with pytest.raises(OutputError, match="verification failed"):
        scripted.run(tmp_path, program, cpu, "What is six times seven?")


def test_redundancy_votes_over_verified_samples(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path,
        "name: x\noutput:\n  schema:\n    name: string\n    email?: string\n"
        "llmos.redundancy: {k: 3, vote: schema}\nllmos.verify: {grounded: [name, email]}",
    )
    replies = [
        json.dumps({"name": "Maria Lopez", "email": "<EMAIL>"}),  # fails its check
        json.dumps({"name": "Maria Lopez", "email": "maria@acme.com"}),
        json.dumps({"name": "Maria Lopez"}),
    ]
    cpu = ScriptedCPU(replies)
    result, seen = scripted.run(tmp_path, program, cpu, "Maria Lopez, maria@acme.com")
    assert result.extra["redundancy"]["valid"] == 2
    assert result.output["name"] == "Maria Lopez" and json.loads(seen) == result.output
    assert len(cpu.requests) == 3 and {r.seed for r in cpu.requests[1:]} == {1, 2}


def test_a_text_answer_keeps_its_form_under_redundancy(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path, "name: h\nllmos.redundancy: {k: 3}\nllmos.verify: {lines: 3}"
    )
    two, three = "Snow falls\non the hill", "Snow falls\non the quiet hill\nnight comes"
    cpu = ScriptedCPU([two, three, "a\nb\nc\nd"])
    result, seen = scripted.run(tmp_path, program, cpu, "snow")
    assert result.output == three and seen == three
    assert result.extra["redundancy"]["valid"] == 1
    assert verify.lines(two, 3) == "the answer has 2 lines, not 3"


class GrammarCPU(ScriptedCPU):
    capabilities = dataclasses.replace(ScriptedCPU.capabilities, grammar=True)


def test_a_form_of_n_lines_is_kept_by_the_grammar(tmp_path: Path) -> None:
    program = scripted.program(tmp_path, "name: h\nllmos.verify: {lines: 3}")
    cpu = GrammarCPU(['["Snow falls", "on the  quiet hill", "night comes"]'])
    result, seen = scripted.run(tmp_path, program, cpu, "snow")
    assert result.output == "Snow falls\non the quiet hill\nnight comes" == seen
    schema = cpu.requests[0].json_schema
    assert schema is not None and schema["minItems"] == schema["maxItems"] == 3
    line = re.compile(schema["items"]["pattern"])  # a line is a phrase of whole words
    assert line.match("on the quiet hill,") and line.match("Snow falls")
    assert line.match("la neige d'été tombe")  # words of any script
    assert not line.match("Snow")  # fewer than VERIFY_LINE_MIN_WORDS
    assert not line.match(" ".join(["word"] * (params.VERIFY_LINE_MAX_WORDS + 1)))
    assert not line.match("behold.Abele's,theres,a,lady,who,is,a,cat")  # no gluing


def test_a_text_answer_of_the_wrong_form_is_retried(tmp_path: Path) -> None:
    program = scripted.program(tmp_path, "name: h\nllmos.verify: {lines: 3}")
    cpu = ScriptedCPU(["one line only", "a\nb\n\nc"])
    result, _ = scripted.run(tmp_path, program, cpu, "snow")
    assert result.output == "a\nb\n\nc"
    assert "2 lines" not in cpu.requests[1].messages[-1]["content"]
    assert "has 1 line, not 3" in cpu.requests[1].messages[-1]["content"]


def test_redundancy_with_no_sample_passing_fails_clearly(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path,
        "name: x\noutput:\n  schema:\n    name: string\n"
        "llmos.redundancy: {k: 2}\nllmos.verify: {grounded: [name]}",
    )
    cpu = ScriptedCPU([json.dumps({"name": "Bob"}), json.dumps({"name": "Eve"})])
    with pytest.raises(OutputError, match="none of the 2 samples"):
        scripted.run(tmp_path, program, cpu, "Maria Lopez")


@pytest.mark.parametrize(
    ("front", "message"),
    [
        ("llmos.redundancy: {k: 99}", "k' must be an integer"),
        ("llmos.redundancy: {vote: best}", "vote' must be one of"),
        ("llmos.verify: {grounded: name}", "grounded' must be a list"),
        ("llmos.route: {mode: magic}", "mode' must be one of"),
        ("llmos.verify: {lines: 0}", "lines' must be an integer"),
        ("llmos.route: {nope: 1}", "unknown keys"),
    ],
)
def test_bad_settings_are_refused_at_load(tmp_path: Path, front: str, message: str) -> None:
    with pytest.raises(ProgramError, match=message):
        scripted.program(tmp_path, f"name: x\n{front}")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_note_example_on_the_embedded_model_writes_the_note(
    tmp_path: Path, embedded: Any
) -> None:
    program = load(EXAMPLES / "note.prompt")
    table = SyscallTable(builtin_devices())
    root = tmp_path / "files"
    root.mkdir()
    devices = Devices(
        table, grants_for(program.tools, {}, table.devices, "t"), CallContext(root=root)
    )
    try:
        with Log.open(tmp_path / "logs.db") as log:
            run_process(
                program,
                {"input": 'Save the note "water the plants" in the file home.txt.'},
                embedded,
                log,
                devices=devices,
            )
    finally:
        table.close()
    assert (root / "home.txt").read_text() == "water the plants"


def test_the_arithmetic_example_answers_through_calc(tmp_path: Path, embedded: Any) -> None:
    program = load(EXAMPLES / "arithmetic.prompt")
    table = SyscallTable(builtin_devices())
    devices = Devices(table, grants_for(program.tools, {}, table.devices, "t"), CallContext())
    question = "A shop sells 1234 books at 5678 dollars each. How much do they cost in total?"
    try:
        with Log.open(tmp_path / "logs.db") as log:
            result = run_process(program, {"input": question}, embedded, log, devices=devices)
    finally:
        table.close()
    assert result.output == "1234 * 5678 = 7006652"
    assert result.extra["steps"][0]["routed"] and result.extra["steps"][0]["device"] == "calc"


def test_a_grounded_field_may_only_be_a_phrase_of_the_input(tmp_path: Path) -> None:
    from llmos.kernel.dependable import Settings
    from llmos.kernel.dependable.answers import answer_schema

    text = "Reach Dana Whitfield at dana.w@northwind.com, Northwind Logistics."
    found = route.phrases(text)
    assert {"Dana Whitfield", "dana.w@northwind.com", "Northwind Logistics"} <= set(found)
    assert "Whitfield at dana.w@northwind.com, Northwind" not in found  # over 4 words
    program = load(EXAMPLES / "extract.prompt")
    schema = answer_schema(program.output_schema or {}, Settings.of(program.llmos), text)
    email = schema["properties"]["email"]
    # llama.cpp would skip a typed enum; an optional field is asked for, and may be null
    assert email["enum"] == [*found, None] and "type" not in email
    assert set(schema["required"]) == {"name", "email", "company"}
    assert None not in schema["properties"]["name"]["enum"]  # required: it must be given


def test_a_grounded_number_is_one_of_the_inputs_numbers() -> None:
    from llmos.kernel.dependable import Settings
    from llmos.kernel.dependable.answers import answer_schema

    program = load(EXAMPLES / "invoice.prompt")
    text = "From: Acme\n  2 x pen @ 1.50 = 3.00\n  1 x ink @ 4.25 = 4.25\nTotal due: 7.25\n"
    schema = answer_schema(program.output_schema or {}, Settings.of(program.llmos), text)
    assert schema["properties"]["total"]["enum"] == [2, 1.5, 3.0, 1, 4.25, 7.25]


def test_an_optional_grounded_field_left_null_is_left_out(tmp_path: Path) -> None:
    program = scripted.program(
        tmp_path,
        "name: x\noutput:\n  schema:\n    name: string\n    company?: string\n"
        "llmos.verify: {grounded: [name, company]}",
    )
    cpu = GrammarCPU([json.dumps({"name": "Maria Lopez", "company": None})])
    result, seen = scripted.run(tmp_path, program, cpu, "Maria Lopez wrote.")
    assert result.output == {"name": "Maria Lopez"} and json.loads(seen) == result.output
    assert result.text == json.dumps({"name": "Maria Lopez"})
    asked = cpu.requests[0].json_schema
    assert asked is not None and set(asked["required"]) == {"name", "company"}


INVOICE = "From: Acme\n  2 x pen @ 1.50 = 3.00\n  1 x ink @ 4.25 = 4.25\nTotal due: 7.25\n"
SUMS = (
    "llmos.verify:\n  grounded: [total]\n  check: |\n"
    "    import re\n"
    "    from decimal import Decimal\n"
    "    lines = [Decimal(a) for a in re.findall(r'= ([0-9.]+)', input)]\n"
    "    assert Decimal(str(output['total'])) == sum(lines), 'not the sum of the lines'\n"
)


def _sums(tmp_path: Path, extra: str = "") -> Program:
    return scripted.program(
        tmp_path, f"name: inv\noutput:\n  schema:\n    total: number\n{extra}{SUMS}"
    )


@pytest.mark.skipif(sandboxjail.unavailable() is not None, reason="no sandbox on this machine")
def test_a_checker_program_rejects_a_wrong_total_and_the_retry_is_believed(
    tmp_path: Path,
) -> None:
    cpu = ScriptedCPU(['{"total": 4.25}', '{"total": 7.25}'])
    result, _ = scripted.run(tmp_path, _sums(tmp_path), cpu, INVOICE)
    assert result.output == {"total": 7.25}
    assert "failed a check: not the sum of the lines" in cpu.requests[1].messages[-1]["content"]
    cpu = ScriptedCPU(['{"total": 4.25}', '{"total": 3.0}'])
    with pytest.raises(OutputError, match="verification failed: not the sum of the lines"):
        scripted.run(tmp_path, _sums(tmp_path), cpu, INVOICE)


@pytest.mark.skipif(sandboxjail.unavailable() is not None, reason="no sandbox on this machine")
def test_samples_that_fail_the_checker_leave_the_vote(tmp_path: Path) -> None:
    program = _sums(tmp_path, "llmos.redundancy: {k: 4, vote: schema}\n")
    replies = ['{"total": 3.0}', '{"total": 4.25}', '{"total": 7.25}', '{"total": 3.0}']
    result, seen = scripted.run(tmp_path, program, ScriptedCPU(replies), INVOICE)
    assert result.output == {"total": 7.25} and json.loads(seen) == {"total": 7.25}
    assert result.extra["redundancy"]["valid"] == 1
    crash = scripted.program(
        tmp_path,
        "name: c\noutput:\n  schema:\n    total: number\n"
        "llmos.redundancy: {k: 2}\nllmos.verify: {check: 'output[0]'}",
    )
    with pytest.raises(OutputError, match="check raised KeyError"):
        scripted.run(tmp_path, crash, ScriptedCPU(['{"total": 1}', '{"total": 2}']), INVOICE)


@pytest.mark.skipif(sandboxjail.unavailable() is not None, reason="no sandbox on this machine")
def test_a_checker_sees_every_input_and_cannot_reach_the_disk(tmp_path: Path) -> None:
    marker = tmp_path / "written-by-check"
    program = scripted.program(
        tmp_path,
        "name: c\nllmos.verify:\n  check: |\n"
        "    assert inputs == {'input': 'hi'} and input == 'hi' and output == 'hello'\n"
        f"    open({str(marker)!r}, 'w').write('x')\n",
    )
    with pytest.raises(OutputError, match="verification failed"):
        scripted.run(tmp_path, program, ScriptedCPU(["hello", "hello"]), "hi")
    assert not marker.exists()  # the check runs in the sandbox: the host's disk is not there


def test_a_checker_that_cannot_run_believes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "unavailable", lambda: "bwrap is not installed")
    cpu = ScriptedCPU(['{"total": 7.25}'])
    with pytest.raises(verify.CheckError, match=r"could not run: .*bwrap is not installed"):
        scripted.run(tmp_path, _sums(tmp_path), cpu, INVOICE)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("'x = ('", "not valid Python"),
        ("''", "must be Python source"),
        ("[1]", "must be Python source"),
    ],
)
def test_a_bad_checker_is_refused_at_load(tmp_path: Path, check: str, message: str) -> None:
    with pytest.raises(ProgramError, match=message):
        scripted.program(tmp_path, f"name: x\nllmos.verify: {{check: {check}}}")
