"""The device/CPU registry and plugins (pluggy hooks, entry points)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import InputError, LlmosError, ProgramError
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.hw.dev.base import CallContext, Device, DeviceResult
from llmos.kernel import plugins as registry
from llmos.kernel.mm.context import Context, Segment
from llmos.kernel.mm.paging import Pager, Policy
from llmos.kernel.plugins import hookimpl, paging_policy
from llmos.kernel.sched.policy import POLICIES, Entity, FairShare
from llmos.kernel.sched.policy import Policy as SchedPolicy
from llmos.store.memory import MemoryStore

BUILTINS = ["calc", "python", "shell", "fs", "clock", "random", "sentiment", "call", "ask"]
BUILTINS += ["quarantine"]
BUILTINS += ["remember", "recall", "forget", "page_in", "shm_read", "shm_write", "shm_list"]


class Echo(Device):
    name = "echo"
    description = "Echo the text."
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        return DeviceResult.success(args["text"])


class EchoPlugin:
    @hookimpl
    def llmos_register_devices(self, register: Callable[[Device], None]) -> None:
        register(Echo())

    @hookimpl
    def llmos_register_cpus(self, register: Callable[[str, Any], None]) -> None:
        register("echo", lambda spec: spec)


def test_builtins_register_through_the_hook() -> None:
    pm = registry.make_plugin_manager(entry_points=False)
    found = registry.devices(pm=pm)
    assert list(found) == BUILTINS
    assert list(registry.cpu_factories(pm=pm)) == ["embedded", "openai", "gguf", "ray"]
    again = registry.devices(pm=pm)
    assert all(again[n] is not found[n] for n in BUILTINS)  # fresh instances
    assert pm.get_plugin(registry.BUILTIN_NAME) is registry.BUILTIN


def test_global_plugin_manager_has_builtins() -> None:
    assert registry.get_plugin_manager() is registry.get_plugin_manager()
    assert list(registry.devices())[: len(BUILTINS)] == BUILTINS


def test_plugin_object_adds_device_and_cpu() -> None:
    pm = registry.make_plugin_manager(entry_points=False)
    pm.register(EchoPlugin(), name="echo-plugin")
    found = registry.devices(pm=pm)
    assert list(found) == [*BUILTINS, "echo"]
    assert found["echo"].call({"text": "hi"}, CallContext()).output == "hi"
    factories = registry.cpu_factories(pm=pm)
    assert list(factories) == ["embedded", "openai", "gguf", "ray", "echo"]
    assert factories["echo"]("echo/x") == "echo/x"


def test_duplicate_device_names_both_plugins() -> None:
    class Dup:
        @hookimpl
        def llmos_register_devices(self, register: Callable[[Device], None]) -> None:
            calc = Echo()
            calc.name = "calc"
            register(calc)

    pm = registry.make_plugin_manager(entry_points=False)
    pm.register(Dup(), name="dup-plugin")
    with pytest.raises(LlmosError) as info:
        registry.devices(pm=pm)
    assert str(info.value) == (
        "device 'calc' registered twice: by plugin 'llmos.builtin' and by plugin 'dup-plugin'"
    )


def test_duplicate_cpu_prefix() -> None:
    pm = registry.make_plugin_manager(entry_points=False)
    pm.register(EchoPlugin(), name="one")
    pm.register(EchoPlugin(), name="two")
    with pytest.raises(LlmosError, match="CPU prefix 'echo' registered twice: by plugin 'one'"):
        registry.cpu_factories(pm=pm)


def test_broken_plugin_is_named() -> None:
    class Broken:
        @hookimpl
        def llmos_register_devices(self, register: Callable[[Device], None]) -> None:
            raise RuntimeError("boom")

    class NotADevice:
        @hookimpl
        def llmos_register_devices(self, register: Callable[[Any], None]) -> None:
            register("calc")

    pm = registry.make_plugin_manager(entry_points=False)
    pm.register(Broken(), name="broken")
    with pytest.raises(LlmosError) as info:
        registry.devices(pm=pm)
    assert str(info.value) == "plugin 'broken' failed in llmos_register_devices: RuntimeError: boom"
    pm = registry.make_plugin_manager(entry_points=False)
    pm.register(NotADevice(), name="nad")
    with pytest.raises(LlmosError, match="plugin 'nad' registered str, not a Device instance"):
        registry.devices(pm=pm)


@pytest.fixture
def dist_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake installed distribution `llmos-echo` with an entry point in group "llmos"."""
    (tmp_path / "llmos_echo_plugin.py").write_text(
        textwrap.dedent(
            """
            from llmos.kernel.plugins import hookimpl
            from llmos.hw.dev.base import Device, DeviceResult

            class Shout(Device):
                name = "shout"
                description = "Upper-case the text."
                schema = {"type": "object", "properties": {}, "additionalProperties": False}

                def call(self, args, ctx):
                    return DeviceResult.success("HI")

            @hookimpl
            def llmos_register_devices(register):
                register(Shout())
            """
        )
    )
    info = tmp_path / "llmos_echo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llmos-echo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[llmos]\nshout = llmos_echo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("llmos_echo_plugin", None)


def test_entry_point_plugin_loads(dist_on_path: Path) -> None:
    pm = registry.make_plugin_manager()
    found = registry.devices(pm=pm)
    assert "shout" in found
    assert found["shout"].call({}, CallContext()).output == "HI"
    assert pm.get_plugin("shout") is sys.modules["llmos_echo_plugin"]


def test_entry_point_that_fails_to_import(dist_on_path: Path) -> None:
    (dist_on_path / "llmos_echo_plugin.py").write_text("raise ImportError('missing dep')\n")
    with pytest.raises(LlmosError) as info:
        registry.make_plugin_manager()
    assert str(info.value) == (
        "plugin 'shout' (entry point 'llmos_echo_plugin' of llmos-echo) failed to load: "
        "ImportError: missing dep"
    )


def test_a_plugin_cpu_is_resolved_by_its_prefix() -> None:
    from llmos.config import Config
    from llmos.hw.cpu.scripted import ScriptedCPU
    from llmos.kernel import cpus as cpu_mod

    built: list[str] = []

    class ScriptedCPUPlugin:
        @hookimpl
        def llmos_register_cpus(self, register: Callable[[str, Any], None]) -> None:
            def factory(spec: str) -> ScriptedCPU:
                built.append(spec)
                return ScriptedCPU(["hi"])

            register("scriptedplugin", factory)

    pm = registry.get_plugin_manager()
    plugin = ScriptedCPUPlugin()
    pm.register(plugin, name="scripted-cpu-plugin")
    try:
        cpu = cpu_mod.resolve("scriptedplugin/tiny", Config())
        assert isinstance(cpu, ScriptedCPU)
        assert built == ["scriptedplugin/tiny"]
        with pytest.raises(LlmosError, match="scriptedplugin"):
            cpu_mod.resolve("nosuchcpu/x", Config())
    finally:
        pm.unregister(plugin)
        cpu_mod._cache.pop("scriptedplugin/tiny", None)


class NewestFirst(Policy):
    """A plugin's paging policy: page out the newest segments first."""

    name = "newest"

    def order(self, candidates: list[Segment]) -> list[Segment]:
        return sorted(candidates, key=lambda s: -s.id)


class PolicyPlugin:
    @hookimpl
    def llmos_register_paging_policies(self, register: Callable[..., None]) -> None:
        register("newest", lambda summarizer: NewestFirst())


def test_paging_policies_are_pluggable(tmp_path: Path) -> None:
    pm = registry.make_plugin_manager(entry_points=False)
    assert list(registry.paging_policies(pm)) == ["oldest", "lru", "summarize"]
    pm.register(PolicyPlugin(), name="policy-plugin")
    policy = paging_policy("newest", None, pm)
    assert isinstance(policy, NewestFirst)
    with pytest.raises(InputError, match="registered: lru, newest, oldest, summarize"):
        paging_policy("nosuch", None, pm)
    # The plugin's policy drives a real pager: the newest unpinned segments leave first.
    msgs = [{"role": "system", "content": "Notes."}]
    msgs += [{"role": "user", "content": f"note {i} " + "word " * 40} for i in range(30)]
    msgs.append({"role": "user", "content": "Which note?"})
    ctx = Context.from_messages(msgs, 600, ScriptedCPU())
    store = MemoryStore.open(tmp_path / "memory.db")
    Pager(store=lambda: store, owner="a", process="p", policy=policy, reserve=32).attach(ctx)
    ctx.fit()
    paged = [s.id for s in ctx.paged()]
    resident = [s.id for s in ctx.segments if s.resident and not s.pinned and s.kind == "input"]
    assert paged and resident and min(paged) > max(resident)
    store.close()


def test_an_unknown_paging_policy_fails_the_spawn(home: Path, tmp_path: Path) -> None:
    from llmos.kernel import boot
    from llmos.kernel.core import Kernel

    program = tmp_path / "p.prompt"
    program.write_text("---\nname: p\nllmos.paging: nosuch\n---\nHello.\n")
    system = boot.boot()
    with pytest.raises(ProgramError, match=r"llmos\.paging: unknown paging policy 'nosuch'"):
        Kernel(system).spawn(str(program), cpu=ScriptedCPU(["hi"]))
    system.close()


class LastFirst(SchedPolicy):
    """A plugin's scheduling policy: the newest entity first."""

    name = "lastfirst"

    def select(self, entities: list[Entity], slots: int, resident: set[Entity]) -> list[Entity]:
        return list(reversed(entities))[:slots]


class SchedPlugin:
    @hookimpl
    def llmos_register_sched_policies(self, register: Callable[..., None]) -> None:
        register("lastfirst", LastFirst)


def test_sched_policies_are_pluggable(home: Path) -> None:
    from llmos.kernel import boot
    from llmos.kernel.core import Kernel

    pm = registry.make_plugin_manager(entry_points=False)
    assert list(registry.sched_policies(pm)) == list(POLICIES)
    assert isinstance(registry.sched_policy("fair", pm), FairShare)
    with pytest.raises(LlmosError, match="unknown scheduling policy 'lastfirst': use one of fifo"):
        registry.sched_policy("lastfirst", pm)
    plugin = SchedPlugin()
    registry.get_plugin_manager().register(plugin, name="sched-plugin")
    system = boot.boot()
    try:
        assert isinstance(Kernel(system, policy="lastfirst").policy, LastFirst)
    finally:
        registry.get_plugin_manager().unregister(plugin)
        system.close()


def test_builtin_cpu_specs_keep_their_forms() -> None:
    from llmos.config import Config
    from llmos.kernel import cpus as cpu_mod

    with pytest.raises(LlmosError, match="model spec 'openai/' names no model"):
        cpu_mod.resolve("openai/", Config())
    for spec in ("embedded/x", "openai", "gguf/x"):
        with pytest.raises(LlmosError, match=f"unknown model '{spec}': use one of embedded, "):
            cpu_mod.resolve(spec, Config())
