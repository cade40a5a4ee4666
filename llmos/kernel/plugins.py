"""The device and CPU registry: built-ins and plugins, through one pluggy hook table.

`get_plugin_manager()` builds (once per llmos process) a pluggy `PluginManager` for the project
"llmos" with the specs of `llmos.kernel.hookspecs`, registers the built-in plugin (`BUILTIN`, which
adds calc, python, shell, fs, clock, random, call and ask through `llmos_register_devices`
like any other plugin), then loads installed plugins from the entry-point group "llmos".

- `devices(config=None, pm=None) -> dict[str, Device]`: calls every plugin's
  `llmos_register_devices(register)` and returns fresh instances by name.
- `cpu_factories(pm=None) -> dict[str, Callable[[str], CPU]]`: every plugin's
  `llmos_register_cpus(register)`, by model-spec prefix.

Invariants:
- Hooks are called one plugin at a time, so every failure names its plugin: a plugin that
  raises, registers something that is not a `Device`, a bad name, or a name another plugin
  already registered gives one `LlmosError` line naming both plugins, never a traceback.
- An entry point that cannot be imported is an `LlmosError` naming the entry point and its
  distribution (raised by `get_plugin_manager()`, that is at first use, not at import).

What this module does not do: decide which devices a program may use (the kernel grants),
validate arguments (the syscall layer), or start MCP servers (`llmos.hw.dev.mcp`; `config`
is accepted for the caller's convenience and not read here).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from llmos.errors import LlmosError
from llmos.hw.dev.base import Device
from llmos.kernel import hookspecs

if TYPE_CHECKING:
    from llmos.hw.cpu.base import CPU

BUILTIN_NAME = "llmos.builtin"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class BuiltinDevices:
    """The built-in plugin: the devices that ship with llmos."""

    @hookspecs.hookimpl
    def llmos_register_devices(self, register: Callable[[Device], None]) -> None:
        from llmos.hw.dev.calc import CalcDevice
        from llmos.hw.dev.clock import ClockDevice, RandomDevice
        from llmos.hw.dev.fs import FsDevice
        from llmos.hw.dev.proc import AskDevice, CallDevice
        from llmos.hw.dev.python import PythonDevice
        from llmos.hw.dev.shell import ShellDevice

        for cls in (CalcDevice, PythonDevice, ShellDevice, FsDevice, ClockDevice, RandomDevice):
            register(cls())
        for proc_cls in (CallDevice, AskDevice):  # need the kernel: llmos.hw.dev.proc
            register(proc_cls())
        from llmos.hw.dev.memory import DEVICES as MEMORY_DEVICES

        for mem_cls in MEMORY_DEVICES:  # need the process's pager: llmos.hw.dev.memory
            register(mem_cls())

    @hookspecs.hookimpl
    def llmos_register_paging_policies(self, register: Callable[..., None]) -> None:
        from llmos.kernel.mm.paging import LRU, Oldest, Summarize

        register("oldest", lambda summarizer: Oldest())
        register("lru", lambda summarizer: LRU())
        register("summarize", Summarize)


BUILTIN = BuiltinDevices()


def make_plugin_manager(*, entry_points: bool = True) -> pluggy.PluginManager:
    """A new plugin manager with the built-in plugin (and installed plugins, by default)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(BUILTIN, name=BUILTIN_NAME)
    if entry_points:
        load_entry_points(pm)
    return pm


def load_entry_points(pm: pluggy.PluginManager, group: str = hookspecs.PROJECT) -> int:
    """Register the plugins of entry-point `group`; returns how many were added.

    Does what `pm.load_setuptools_entrypoints(group)` does, one entry point at a time, so an
    entry point that fails to import is reported by name.
    """
    added = 0
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != group or ep.name in seen:
                continue
            seen.add(ep.name)
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            dist_name = dist.metadata["name"] if dist.metadata else "?"
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                raise LlmosError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} of {dist_name}) failed to "
                    f"load: {type(exc).__name__}: {exc}"
                ) from exc
            added += 1
    return added


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    return make_plugin_manager()


def _call_each(pm: pluggy.PluginManager, hook_name: str, register: Callable[..., None]) -> None:
    """Call `hook_name` on each plugin in registration order; `register(plugin_name, *args)`
    receives the calling plugin's name first. Any failure names the plugin."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        bound = functools.partial(register, impl.plugin_name)
        try:
            impl.function(*[{"register": bound}[a] for a in impl.argnames])
        except LlmosError:
            raise
        except Exception as exc:
            raise LlmosError(
                f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc


def devices(config: Any = None, pm: pluggy.PluginManager | None = None) -> dict[str, Device]:
    """Fresh instances of every registered device, by name (built-ins first)."""
    pm = pm or get_plugin_manager()
    found: dict[str, Device] = {}
    owners: dict[str, str] = {}

    def register(plugin: str, device: Device) -> None:
        if not isinstance(device, Device):
            raise LlmosError(
                f"plugin {plugin!r} registered {type(device).__name__}, not a Device instance"
            )
        name = device.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise LlmosError(f"plugin {plugin!r} registered a device with a bad name: {name!r}")
        if name in found:
            raise LlmosError(
                f"device {name!r} registered twice: by plugin {owners[name]!r} and by "
                f"plugin {plugin!r}"
            )
        found[name] = device
        owners[name] = plugin

    _call_each(pm, "llmos_register_devices", register)
    return found


def cpu_factories(pm: pluggy.PluginManager | None = None) -> dict[str, Callable[[str], CPU]]:
    """Every registered CPU factory, by model-spec prefix."""
    return _factories(pm, "llmos_register_cpus", "CPU prefix")


def paging_policies(pm: pluggy.PluginManager | None = None) -> dict[str, Callable[..., Any]]:
    """Every registered paging policy factory, by name (built-ins first)."""
    return _factories(pm, "llmos_register_paging_policies", "paging policy")


def _factories(
    pm: pluggy.PluginManager | None, hook_name: str, what: str
) -> dict[str, Callable[..., Any]]:
    """The factories a `register(name, factory)` hook collects, by name; a bad name, a
    non-callable or a name registered twice is an LlmosError naming the plugins."""
    pm = pm or get_plugin_manager()
    found: dict[str, Callable[..., Any]] = {}
    owners: dict[str, str] = {}

    def register(plugin: str, name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not _NAME.match(name) or not callable(factory):
            raise LlmosError(
                f"plugin {plugin!r} registered a bad {what}: {name!r}, factory {factory!r}"
            )
        if name in found:
            raise LlmosError(
                f"{what} {name!r} registered twice: by plugin {owners[name]!r} and by "
                f"plugin {plugin!r}"
            )
        found[name] = factory
        owners[name] = plugin

    _call_each(pm, hook_name, register)
    return found
