"""Recovery from the process journal (`llmos.kernel.recovery`), on the embedded CPU: what a
kernel that was killed left live is resumed or reported lost, and no output is contradicted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmos.hw.cpu.llama import embedded_model_path
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


def _row(journal: ProcJournal, pid: int, path: Path, output: list[str]) -> None:
    journal.started(
        pid=pid,
        ppid=0,
        owner="alice",
        program=path.stem,
        spec={"path": str(path), "inputs": {}, "model": None},
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


def test_a_replay_that_differs_from_what_was_sent_is_lost_and_keeps_the_output(
    home: Path,
    tmp_path: Path,
    kernel_on,  # type: ignore[no-untyped-def]
) -> None:
    program = tmp_path / "count.prompt"
    program.write_text(GREEDY)
    journal = ProcJournal.open(home / "procs.db")
    _row(journal, 7, program, ["Zebra", " crossing"])  # the model would never say this
    kernel = kernel_on(journal)
    report = kernel.recover()
    assert report[0]["pid"] == 7 and report[0]["outcome"] == "resumed"
    proc = kernel.wait(7, timeout=120)
    assert proc.exit_status == "lost" and "did not reproduce" in (proc.error or "")
    assert proc.text == "Zebra crossing"  # nothing sent is contradicted or repeated
    assert journal.live() == []
    assert kernel.spawn(str(program), owner="alice").pid == 8  # pids go on above the journal's


def test_a_replay_that_matches_continues_after_what_was_sent(
    home: Path,
    tmp_path: Path,
    kernel_on,  # type: ignore[no-untyped-def]
) -> None:
    program = tmp_path / "count.prompt"
    program.write_text(GREEDY)
    first = Kernel(boot())
    try:
        full = first.wait(first.spawn(str(program), owner="alice").pid, timeout=120)
        pieces = list(full.output)
    finally:
        first.shutdown()
        first.system.close()
    assert len(pieces) > 4
    journal = ProcJournal.open(home / "procs.db")
    _row(journal, 3, program, pieces[:3])  # the crash came after three pieces
    kernel = kernel_on(journal)
    kernel.recover()
    proc = kernel.wait(3, timeout=120)
    assert proc.exit_status == "ok", proc.error
    assert proc.text == "".join(pieces)
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
