"""Boot: bring up llmos in the order its parts depend on, one step a line.

    1. home directory ($LLMOS_HOME or the per-user data directory)
    2. configuration (config.json: default model, aliases, OpenAI settings)
    3. the log (checks FTS5, applies migrations, fails runs left 'running' by a dead llmos)
       (the memory store, <home>/memory.db, opens on first use: paging, memory, shm)
    4. program search path (<home>/programs, ./.agents/skills)
    5. CPUs, loaded lazily on first use (a model is loaded once per process)

`System` is what boot returns: the handles the command line and the kernel use. It holds no
policy of its own.

What this module does not do: run the kernel daemon or schedule anything.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos import config as config_mod
from llmos import params
from llmos.config import Config
from llmos.errors import InputError, LlmosError, ProgramError
from llmos.hw.cpu.base import CPU
from llmos.hw.dev.base import CallContext
from llmos.kernel import cpus as cpu_mod
from llmos.kernel import program as program_mod
from llmos.kernel.agent import Trace, agent_body
from llmos.kernel.handles import Handles
from llmos.kernel.mm.context import Context
from llmos.kernel.mm.paging import Pager, cpu_summarizer, make_policy, recall_into
from llmos.kernel.program import Program
from llmos.kernel.run import Body, RunResult
from llmos.kernel.syscall import SyscallTable, grants_for
from llmos.store.log import Log
from llmos.store.memory import MemoryStore
from llmos.store.shm import SharedMemory

if TYPE_CHECKING:
    from llmos.kernel.core import Kernel


@dataclass
class System:
    home: Path
    config: Config
    search_dirs: list[Path]
    _log: Log | None = None
    _syscalls: SyscallTable | None = None
    _mcp: Any = None  # MCPDevices, when config.json names MCP servers
    _kernel: Kernel | None = None
    _memory: MemoryStore | None = None
    _opened_at: float = field(default_factory=time.time)

    @property
    def log(self) -> Log:
        if self._log is None:
            self._log = Log.open(self.home / "logs.db")
            self._log.fail_stale_runs("llmos exited before the run finished")
        return self._log

    @property
    def memory(self) -> MemoryStore:
        """The memory store (<home>/memory.db), opened on first use; MemoryStoreError if it
        is corrupt or locked."""
        if self._memory is None:
            self._memory = MemoryStore.open(self.home / params.MEMORY_DB_NAME)
        return self._memory

    def cpu(self, spec: str | None) -> CPU:
        return cpu_mod.resolve(spec, self.config)

    def pager_for(
        self, program: Program, *, owner: str, process: str, cpu: CPU, entity: Any = None
    ) -> Pager:
        """The memory manager of one process: its paging policy and swap key."""
        name = str(program.llmos.get("paging") or params.PAGING_POLICY)
        try:
            policy = make_policy(name, cpu_summarizer(cpu, entity))
        except InputError as exc:
            raise ProgramError(f"{program.path}: llmos.paging: {exc}") from exc
        reserve = int(program.gen_settings().get("max_tokens") or params.DEFAULT_MAX_OUTPUT_TOKENS)
        return Pager(
            store=lambda: self.memory,
            owner=owner,
            process=process,
            policy=policy,
            reserve=reserve,
            label=str(program.path),
        )

    def prepare_context(
        self, context: Context, program: Program, inputs: dict[str, Any], pager: Pager
    ) -> None:
        """At spawn: attach the pager; page in the owner's memories most relevant to the
        input (`llmos.store.memory.auto_recall` tokens) and the shared segments the program names
        (`llmos.shm`)."""
        pager.attach(context)
        owner = pager.owner
        for name in program.llmos.get("shm") or []:
            seg = SharedMemory(self.memory).read(owner, name)
            context.insert_after_program(
                "system",
                f"Shared segment {seg.name} (version {seg.version}, owner {seg.owner}):\n"
                f"{seg.text}",
                "shm",
                {"shm": seg.name, "version": seg.version},
            )
        budget = int((program.llmos.get("memory") or {}).get("auto_recall") or 0)
        if budget > 0:
            query = " ".join(str(v) for v in inputs.values() if isinstance(v, str))
            if query.strip():
                hits = self.memory.recall(owner, query, params.RECALL_MAX_K)
                recall_into(
                    context, hits, budget, header="Memories from earlier runs that may help:"
                )

    @property
    def syscalls(self) -> SyscallTable:
        """The syscall table: built-in and plugin devices, plus the configured MCP servers."""
        if self._syscalls is None:
            from llmos.kernel import plugins as registry

            devices = registry.devices()
            if self.config.mcp_servers:
                from llmos.hw.dev.mcp import MCPDevices

                self._mcp = MCPDevices({"mcpServers": self.config.mcp_servers})
                problems: list[str] = []
                for name, device in self._mcp.devices(problems).items():
                    devices.setdefault(name, device)
                for problem in problems:
                    print(f"llmos: warning: {problem}", file=sys.stderr)
            self._syscalls = SyscallTable(devices)
        return self._syscalls

    def close(self) -> None:
        """Stop device servers and close the syscall table (CPUs close with the process)."""
        if self._syscalls is not None:
            self._syscalls.close()
        if self._mcp is not None:
            self._mcp.close_all()
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def user_root(self, owner: str) -> Path:
        """The owner's private file namespace (what `fs` and `python` may touch)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in owner) or "_"
        root = self.home / params.USERS_DIR_NAME / safe / "files"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def body_for(
        self,
        program: Program,
        *,
        owner: str,
        pid: int,
        on_trace: Trace | None = None,
        on_syscall: Callable[[bool], None] | None = None,
        handles: Handles | None = None,
    ) -> Body | None:
        """The agent loop for a program that declares devices (None for one that does not);
        ProgramError if it declares devices that do not exist or are not granted."""
        declared = list(program.tools)
        raw = program.llmos.get("devices") or {}
        options: dict[str, Any] = {name: {} for name in raw} if isinstance(raw, list) else dict(raw)
        if not declared and not options:
            return None
        table = self.syscalls
        grants = grants_for(declared, options, table.devices, str(program.path))
        h = handles or Handles()
        ctx = CallContext(
            pid=pid,
            owner=owner,
            root=self.user_root(owner),
            proc=h.proc,
            memory=h.memory,
            shm=h.shm,
        )
        return agent_body(
            table, grants, ctx, on_trace=on_trace, on_syscall=on_syscall, device_options=options
        )

    def load_program(self, ref: str) -> Program:
        return program_mod.load(ref, self.search_dirs)

    def discover_programs(self, problems: list[LlmosError] | None = None) -> list[Program]:
        found: list[ProgramError] = []
        programs = program_mod.discover(self.search_dirs, found)
        if problems is not None:
            problems.extend(found)
        return programs

    def kernel(self) -> Kernel:
        """The in-process kernel (booted on first use) that `llmos run` runs programs on when
        no daemon is involved."""
        if self._kernel is None:
            from llmos.kernel.core import Kernel

            self._kernel = Kernel(self)
        return self._kernel

    def run(
        self,
        program: Program,
        inputs: dict[str, Any],
        cpu: CPU,
        on_text: Callable[[str], None] | None = None,
        on_trace: Trace | None = None,
    ) -> RunResult:
        """Run a program as a process of the in-process kernel and wait for it, streaming its
        output to `on_text`; raise the error it failed with. If the caller is interrupted (or
        its output pipe closes), the process is killed and logged as such first."""
        kernel = self.kernel()
        proc = kernel.spawn(program, inputs, owner=getpass.getuser(), cpu=cpu, on_trace=on_trace)
        seen = 0

        def news() -> bool:
            return len(proc.output) > seen or not proc.alive

        try:
            while True:
                with proc.cond:
                    proc.cond.wait_for(news)
                    fresh, alive = proc.output[seen:], proc.alive
                seen += len(fresh)
                for text in fresh:
                    if on_text is not None:
                        on_text(text)
                if not alive:
                    break
        except BaseException:
            if proc.alive:
                kernel.kill(proc.pid)
                proc.wait(timeout=10)
            raise
        if proc.exception is not None:
            raise proc.exception
        if proc.result is None:
            raise LlmosError(
                f"{program.path}: process {proc.pid} ended {proc.exit_status}: {proc.error}"
            )
        result: RunResult = proc.result
        return result

    def log_failure(self, program: str, exc: LlmosError, program_path: str | None = None) -> None:
        """Journal a run that failed before it could start (bad program, input or model)."""
        run_id = self.log.start_run(
            program, "-", {}, [], program_path=program_path, pid=os.getpid()
        )
        self.log.finish_run(run_id, status="failed", error_kind=exc.kind, error=str(exc))

    def list_models(self) -> list[dict[str, str]]:
        rows = []
        try:
            rows.append(
                {
                    "name": "embedded",
                    "kind": "embedded",
                    "detail": str(cpu_mod.embedded_model_path()),
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
