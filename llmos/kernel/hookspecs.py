"""The plugin contract of llmos: pluggy hook specifications (project name "llmos").

A plugin is any object or module with functions marked `@hookimpl` named like the specs below.
Installed packages expose plugins through the entry-point group "llmos"
(`[project.entry-points.llmos] myplugin = "my_package.plugin"`); the built-in devices, CPUs
and paging policies register through the same hooks (see `llmos.kernel.plugins`).

What this module does not do: load or call plugins (see `llmos.kernel.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from llmos.hw.cpu.base import CPU
    from llmos.hw.dev.base import Device
    from llmos.kernel.mm.paging import Policy, Summarizer

PROJECT = "llmos"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmos_register_devices(register: Callable[[Device], None]) -> None:
    """Call `register(device)` once per device (a fresh `Device` instance) the plugin adds."""


@hookspec
def llmos_register_cpus(register: Callable[[str, Callable[[str], CPU]], None]) -> None:
    """Call `register(prefix, factory)`; `factory(spec)` builds a CPU for specs "prefix/..."."""


@hookspec
def llmos_register_paging_policies(
    register: Callable[[str, Callable[[Summarizer | None], Policy]], None],
) -> None:
    """Call `register(name, factory)`; `factory(summarizer)` builds a paging `Policy` (see
    `llmos.paging`) for programs that set `llmos.paging: name`. `summarizer(text)` writes a
    one-line summary with the process's CPU, for policies that want one."""
