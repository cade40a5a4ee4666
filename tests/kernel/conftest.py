"""Fixtures of the in-process kernel tests (`test_kernel_*.py`): the embedded CPU (one per test
module), a booted `System` on a private home holding the test programs, and `make_kernel`,
whose kernels are shut down after the test and the CPU checked left idle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llmos.kernel.cpus as cpu_mod
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.kernel.boot import System, boot
from llmos.kernel.core import Kernel
from tests.kernel.kernel_harness import ECHO, SETTLE_S, SHORT, STORY, cpu_idle, wait_for


@pytest.fixture(scope="module")
def cpu() -> Iterator[EmbeddedCPU]:
    # One thread: on a loaded 2-core machine llama.cpp's spinning worker threads make two
    # threads far slower than one.
    cpu = EmbeddedCPU(embedded_model_path(), name="embedded", n_ctx=4096, n_threads=1)
    try:
        yield cpu
    finally:
        cpu.close()


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu: EmbeddedCPU) -> Iterator[System]:
    home = tmp_path / "home"
    programs = home / "programs"
    programs.mkdir(parents=True)
    (programs / "story.md").write_text(STORY)
    (programs / "short.md").write_text(SHORT)
    (programs / "echo.md").write_text(ECHO)
    monkeypatch.setenv("LLMOS_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(cpu_mod._cache, "embedded", cpu)
    system = boot()
    yield system
    system.log.close()


@pytest.fixture
def make_kernel(system: System, cpu: EmbeddedCPU) -> Iterator[Callable[..., Kernel]]:
    kernels: list[Kernel] = []

    def make(**kwargs: Any) -> Kernel:
        kernel = Kernel(system, **kwargs)
        kernels.append(kernel)
        return kernel

    yield make
    for kernel in kernels:
        kernel.shutdown(timeout=SETTLE_S)
        assert wait_for(lambda k=kernel: not k._threads), "a process thread outlived shutdown"
    assert wait_for(lambda: cpu_idle(cpu)), (
        f"the embedded CPU was left busy: {cpu.stats()} free={cpu.engine.free_slots}"
    )
