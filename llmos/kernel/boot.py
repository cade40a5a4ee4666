"""Boot: bring up llmos in the order its parts depend on, one step a line.

    1. home directory ($LLMOS_HOME or the per-user data directory)
    2. configuration (config.json: default model, aliases, OpenAI settings)
    3. the log (checks FTS5, applies migrations, fails runs left 'running' by a dead llmos)
       (the memory store, <home>/memory.db, opens on first use: paging, memory, shm)
    4. program search path (<home>/programs, ./.agents/skills)
    5. CPUs, loaded lazily on first use (a model is loaded once per process)

`System` is what boot returns: the handles the kernel and the front ends use (home, config,
log, memory store, the device table, CPUs, the program search path). It holds no policy of its
own: processes, their memory and their devices are the kernel's (`llmos.kernel.core`).

The stores, the program loader, the syscall table and the CPUs are imported on first use,
inside the functions that open them, so a command that needs none of them (`llmos --help`,
`ps`) never loads numpy, llama.cpp, jsonschema or the MCP SDK (tests/front/test_footprint.py).

What this module does not do: run programs, the kernel daemon, or schedule anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos import config as config_mod
from llmos import params
from llmos.config import Config
from llmos.errors import LlmosError, ProgramError

if TYPE_CHECKING:
    from llmos.hw.cpu.base import CPU
    from llmos.kernel.program import Program
    from llmos.kernel.syscall import SyscallTable
    from llmos.store.log import Log
    from llmos.store.memory import MemoryStore


@dataclass
class System:
    home: Path
    config: Config
    search_dirs: list[Path]
    _log: Log | None = None
    _syscalls: SyscallTable | None = None
    _mcp: Any = None  # MCPDevices, when config.json names MCP servers
    _memory: MemoryStore | None = None
    _opened_at: float = field(default_factory=time.time)

    @property
    def log(self) -> Log:
        if self._log is None:
            from llmos.store.log import Log

            self._log = Log.open(self.home / params.LOG_DB_NAME)
            self._log.journal = self.config.logging  # `llmos logs off`: runs not journalled
            self._log.fail_stale_runs("llmos exited before the run finished")
        return self._log

    @property
    def memory(self) -> MemoryStore:
        """The memory store (<home>/memory.db), opened on first use; MemoryStoreError if it
        is corrupt or locked."""
        if self._memory is None:
            from llmos.store.memory import MemoryStore

            self._memory = MemoryStore.open(self.home / params.MEMORY_DB_NAME)
        return self._memory

    def cpu(self, spec: str | None) -> CPU:
        from llmos.kernel import cpus as cpu_mod

        return cpu_mod.resolve(spec, self.config)

    @property
    def syscalls(self) -> SyscallTable:
        """The syscall table: built-in and plugin devices, plus the configured MCP servers as
        mounts, each started only when a program declares one of its tools."""
        if self._syscalls is None:
            from llmos.kernel import plugins as registry
            from llmos.kernel.syscall import SyscallTable

            devices = registry.devices()
            if self.config.mcp_servers:
                from llmos.hw.dev.mcp import MCPDevices

                self._mcp = MCPDevices({"mcpServers": self.config.mcp_servers})
            self._syscalls = SyscallTable(devices, mounts=self._mcp)
        return self._syscalls

    def close(self) -> None:
        """Stop device servers and close the syscall table (CPUs close with the process)."""
        if self._syscalls is not None:
            self._syscalls.close()  # closes the MCP servers it mounted
        elif self._mcp is not None:
            self._mcp.close_all()
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def load_program(self, ref: str) -> Program:
        from llmos.kernel import program as program_mod

        return program_mod.load(ref, self.search_dirs)

    def discover_programs(self, problems: list[LlmosError] | None = None) -> list[Program]:
        from llmos.kernel import program as program_mod

        found: list[ProgramError] = []
        programs = program_mod.discover(self.search_dirs, found)
        if problems is not None:
            problems.extend(found)
        return programs

    def log_failure(
        self,
        program: str,
        exc: LlmosError,
        program_path: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Journal a run of `owner` that failed before it could start (bad program, input or
        model)."""
        run_id = self.log.start_run(
            program, "-", {}, [], program_path=program_path, pid=os.getpid(), owner=owner
        )
        self.log.finish_run(run_id, status="failed", error_kind=exc.kind, error=str(exc))

    def list_models(self) -> list[dict[str, str]]:
        from llmos.hw.cpu.llama import embedded_model_path  # llama.cpp only when asked

        rows = []
        try:
            rows.append(
                {
                    "name": "embedded",
                    "kind": "embedded",
                    "detail": str(embedded_model_path()),
                }
            )
        except LlmosError as exc:
            rows.append({"name": "embedded", "kind": "embedded", "detail": f"unavailable: {exc}"})
        base_url = self.config.openai_base_url()
        rows.append(
            {
                "name": "openai/<model>",
                "kind": "openai",
                "detail": base_url or "https://api.openai.com/v1 (set LLMOS_OPENAI_BASE_URL)",
            }
        )
        for alias, target in sorted(self.config.aliases.items()):
            rows.append({"name": alias, "kind": "alias", "detail": target})
        return rows


def boot(*, open_log: bool = True) -> System:
    from llmos.kernel import program as program_mod

    home = config_mod.home()  # 1
    config = config_mod.load(home)  # 2
    system = System(  # 4
        home=home,
        config=config,
        search_dirs=program_mod.default_search_dirs(home, Path.cwd()),
    )
    if open_log:
        _ = system.log  # 3
    return system  # 5: CPUs load on first use
