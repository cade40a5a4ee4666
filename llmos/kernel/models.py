"""The model registry: a GGUF file made a CPU under a name of its own (`llmos models add`).

A registered model is an alias in `config.json` (`aliases[NAME] = /abs/path/model.gguf`), so
`--model NAME`, a program's `model: NAME` and `default_model` all reach it the way
`llmos.kernel.cpus` resolves any alias: the embedded engine runs the file. A model comes from:

- a local file: checked to be a GGUF (its magic bytes) and registered where it is;
- Hugging Face, `hf:OWNER/REPO/FILE.gguf`: downloaded with `huggingface_hub` (its progress bar
  on stderr) into `<home>/models/hf/OWNER--REPO/`, then its SHA-256 is checked against the one
  given (`--sha256`) or, for a file stored in LFS, the one the Hub publishes; a file that does
  not match is deleted and refused.

Invariants: nothing is registered unless the file is a GGUF on disk (and, downloaded, matches
its checksum); `config.json` is rewritten whole and atomically, every other key kept
(`llmos.config.update`); a name is `[a-z0-9][a-z0-9._-]*`, never a built-in CPU's
(`embedded`, `openai`, `gguf`), and is not silently replaced (`replace=True` for that).
Offline (or any download failure) is one ModelError line that says how to add the file by hand.

What this module does not do: load a model (the CPU does, when a process first uses it),
convert weight formats (`llmos.hw.cpu.quant`), or delete files (`rm` unregisters the name).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from llmos import config, params
from llmos.errors import InputError, ModelError, NotFoundError
from llmos.hw.cpu.engine import GGUF_MAGIC
from llmos.kernel.plugins import BUILTIN_CPUS

_NAME = re.compile(params.MODEL_NAME_PATTERN)
HF_PREFIX = "hf:"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in BUILTIN_CPUS:
        raise InputError(
            f"bad model name {name!r}: use lowercase letters, digits, '.', '_' and '-' "
            f"(at most {params.MODEL_NAME_MAX} characters), not {', '.join(BUILTIN_CPUS)}"
        )
    return name


def check_gguf(path: Path) -> Path:
    """`path`, absolute, if it is a readable GGUF file; else ModelError naming it."""
    path = path.expanduser().absolute()
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF model file (it does not start with 'GGUF')")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(params.MODEL_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_hf(source: str) -> tuple[str, str]:
    """`hf:OWNER/REPO/PATH/IN/REPO.gguf` as (repo id, file path); InputError if malformed."""
    parts = source.removeprefix(HF_PREFIX).strip("/").split("/")
    if len(parts) < 3 or not all(parts) or not parts[-1].endswith(".gguf"):
        raise InputError(
            f"bad model source {source!r}: use a .gguf path or hf:OWNER/REPO/FILE.gguf"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def download(
    home: Path, repo: str, filename: str, *, revision: str | None, expected: str | None
) -> Path:
    """`filename` of Hugging Face repo `repo`, downloaded under `<home>/models/hf` and checked
    against `expected` (or the Hub's own SHA-256); ModelError, in one line, if it cannot be."""
    import huggingface_hub  # only for a download

    where = f"{repo}/{filename}"
    target = home / params.MODELS_DOWNLOAD_DIR / repo.replace("/", "--")
    try:
        if expected is None:
            infos = huggingface_hub.HfApi().get_paths_info(repo, [filename], revision=revision)
            lfs = getattr(infos[0], "lfs", None) if infos else None
            if not infos:
                raise ModelError(f"hf:{where}: no such file in that repository")
            expected = lfs.sha256 if lfs is not None else None
        path = Path(
            str(
                huggingface_hub.hf_hub_download(
                    repo,
                    filename,
                    revision=revision,
                    local_dir=target,
                    etag_timeout=params.MODEL_DOWNLOAD_TIMEOUT_S,
                )
            )
        )
    except ModelError:
        raise
    except Exception as exc:  # offline, unknown repo, gated, HTTP errors: one line each
        reason = " ".join(str(exc).split())[: params.MODEL_ERROR_MAX_CHARS]
        raise ModelError(
            f"cannot download hf:{where} ({type(exc).__name__}: {reason}); offline? fetch the "
            "file elsewhere and `llmos models add NAME PATH.gguf`"
        ) from exc
    if expected is not None:
        actual = sha256(path)
        if actual != expected.lower():
            path.unlink(missing_ok=True)
            raise ModelError(
                f"hf:{where}: SHA-256 {actual} does not match the expected {expected}; the "
                "download was deleted"
            )
    return path


def add(
    home: Path,
    name: str,
    source: str,
    *,
    default: bool = False,
    replace: bool = False,
    expected_sha256: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Register `source` (a local GGUF, or `hf:...` to download) as CPU `name`; with
    `default`, make it the default CPU. What was registered, as `llmos models` lists it."""
    check_name(name)
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise InputError(f"bad --sha256 {expected_sha256!r}: 64 hexadecimal digits")
    current = config.load(home)
    if name in current.aliases and not replace:
        raise InputError(
            f"model {name!r} is already registered ({current.aliases[name]}); use --force "
            "to replace it"
        )
    if source.startswith(HF_PREFIX):
        repo, filename = parse_hf(source)
        path = download(home, repo, filename, revision=revision, expected=expected_sha256)
    else:
        path = Path(source).expanduser().absolute()
        if expected_sha256 is not None and sha256(check_gguf(path)) != expected_sha256.lower():
            raise ModelError(f"{path}: SHA-256 does not match the expected {expected_sha256}")
    path = check_gguf(path)

    def change(raw: dict[str, Any]) -> None:
        raw.setdefault("aliases", {})[name] = str(path)
        if default:
            raw["default_model"] = name

    config.update(home, change)
    return {"name": name, "path": str(path), "bytes": path.stat().st_size, "default": default}


def remove(home: Path, name: str) -> dict[str, Any]:
    """Unregister `name` (its file stays); the default goes back to `embedded` if it was it."""
    current = config.load(home)
    if name not in current.aliases:
        raise NotFoundError(f"no model named {name!r} (see `llmos models`)")
    was_default = current.default_model == name

    def change(raw: dict[str, Any]) -> None:
        raw["aliases"].pop(name, None)
        if was_default:
            raw["default_model"] = "embedded"

    config.update(home, change)
    return {"name": name, "path": current.aliases[name], "was_default": was_default}


def set_default(home: Path, name: str) -> None:
    """Make `name` (a registered model, an alias, `embedded` or `openai/<model>`) the default."""
    current = config.load(home)
    if name not in current.aliases and name != "embedded" and not name.startswith("openai/"):
        raise NotFoundError(f"no model named {name!r} (see `llmos models`)")
    config.update(home, lambda raw: raw.__setitem__("default_model", name))
