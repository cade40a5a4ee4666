"""Recovery from the process journal (`llmos.kernel.recovery`), on the embedded CPU: what a
kernel that was killed left live is resumed (continued from its text, or reproduced first on a
CPU that cannot continue) or reported lost, and no output is contradicted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmos.hw.cpu.llama import embedded_model_path
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.store.procs import ProcJournal

# Their own CPU (the model named by its file: a spec of its own, so a CPU of its own): the
# KV and prefix cache of the shared `embedded` CPU stay as other tests expect them.
MODEL = str(embedded_model_path())
GREEDY = f"""---
description: Count.
model: {MODEL}
config:
  temperature: 0
  maxOutputTokens: 24
---
Count from one to ten in words.
"""
WITH_DEVICES = """---
description: Uses calc.
tools: [calc]
---
Compute {{input}}.
"""


def _row(
    journal: ProcJournal, pid: int, path: Path, output: list[str], model: str | None = None
) -> None:
    journal.started(
        pid=pid,
        ppid=0,
        owner="alice",
        program=path.stem,
        spec={"path": str(path), "inputs": {}, "model": model},
        priority=20,
        budget=None,
        created_at=time.time(),
    )
    for i, piece in enumerate(output):
        journal.output(pid, i, piece)


@pytest.fixture
def kernel_on(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Kernel] = []

    def make(journal: ProcJournal) -> Kernel:
        k = Kernel(boot(), journal=journal)
        made.append(k)
        return k

    yield make
    for k in made:
        k.shutdown()
        k.system.close()


def test_a_plain_answer_continues_from_the_text_it_had_sent(
    home: Path,
    tmp_path: Path,
    kernel_on,  # type: ignore[no-untyped-def]
) -> None:
    """On the embedded CPU (which can continue a reply) the recovered text is the reply's
    beginning: generation goes on from it, even from text the model would never have written,
    and nothing already sent is sent again."""
    program = tmp_path / "count.prompt"
    program.write_text(GREEDY)
    journal = ProcJournal.open(home / "procs.db")
    _row(journal, 7, program, ["Zebra", " crossing"])  # the model would never say this
    kernel = kernel_on(journal)
    report = kernel.recover()
    assert report[0]["pid"] == 7 and report[0]["outcome"] == "resumed"
    proc = kernel.wait(7, timeout=120)
    assert proc.exit_status == "ok", proc.error
    assert proc.output[:2] == ["Zebra", " crossing"] and len(proc.text) > len("Zebra crossing")
    assert journal.output_of(7) == proc.output  # every piece journalled once, in order
    assert journal.live() == []
    record = kernel.system.log.get_run(proc.run_id)
    assert record is not None and record.response == proc.text
    assert record.completion_tokens <= 24  # the reply so far counts against its limit
    assert kernel.spawn(str(program), owner="alice").pid == 8  # pids go on above the journal's


SCRIPTED = """---
description: Greet.
model: scripted
---
Say hello.
"""


def _scripted_kernel(kernel_on, journal: ProcJournal, reply: str) -> Kernel:  # type: ignore[no-untyped-def]
    kernel = kernel_on(journal)
    kernel.add_cpu(ScriptedCPU([reply]))  # no continuation: the reply is reproduced first
    return kernel  # type: ignore[no-any-return]


def test_on_a_cpu_without_continuation_a_replay_that_differs_is_lost(
    home: Path,
    tmp_path: Path,
    kernel_on,  # type: ignore[no-untyped-def]
) -> None:
    program = tmp_path / "greet.prompt"
    program.write_text(SCRIPTED)
    journal = ProcJournal.open(home / "procs.db")
    _row(journal, 7, program, ["Zebra"], model="scripted")
    kernel = _scripted_kernel(kernel_on, journal, "Hello there world")
    assert kernel.recover()[0]["outcome"] == "resumed"
    proc = kernel.wait(7, timeout=60)
    assert proc.exit_status == "lost" and "did not reproduce" in (proc.error or "")
    assert proc.text == "Zebra"  # nothing sent is contradicted or repeated
    assert journal.live() == []


def test_on_a_cpu_without_continuation_a_replay_that_matches_goes_on(
    home: Path,
    tmp_path: Path,
    kernel_on,  # type: ignore[no-untyped-def]
) -> None:
    program = tmp_path / "greet.prompt"
    program.write_text(SCRIPTED)
    journal = ProcJournal.open(home / "procs.db")
    _row(journal, 3, program, ["Hello", " there"], model="scripted")
    kernel = _scripted_kernel(kernel_on, journal, "Hello there world")
    kernel.recover()
    proc = kernel.wait(3, timeout=60)
    assert proc.exit_status == "ok", proc.error
    assert proc.text == "Hello there world"
    assert journal.output_of(3) == proc.output  # every piece journalled once, in order


def test_a_process_with_devices_is_never_run_twice(
    home: Path,
    tmp_path: Path,
    kernel_on,  # type: ignore[no-untyped-def]
) -> None:
    program = tmp_path / "calc.prompt"
    program.write_text(WITH_DEVICES)
    journal = ProcJournal.open(home / "procs.db")
    _row(journal, 5, program, [])
    kernel = kernel_on(journal)
    report = kernel.recover()
    assert report == [
        {
            "pid": 5,
            "owner": "alice",
            "program": "calc",
            "outcome": "lost",
            "error": report[0]["error"],
        }
    ]
    proc = kernel.table.get(5)
    assert proc.exit_status == "lost" and proc.owner == "alice" and proc.syscalls == 0
    assert journal.live() == []
