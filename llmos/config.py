"""Where llmos keeps its files, and the user's configuration.

The home directory is `$LLMOS_HOME` if set, else the platform's per-user data directory
(`~/.local/share/llmos` on Linux). It holds the log database, `config.json` and the installed
`programs/` directory.

`config.json` (all keys optional):

    {
      "default_model": "embedded",
      "aliases": {"fast": "openai/gpt-4o-mini", "local": "/models/qwen.gguf"},
      "openai": {"base_url": "http://127.0.0.1:8080/v1", "api_key": "...", "n_ctx": 8192},
      "mcpServers": {"time": {"command": "mcp-server-time", "args": []}},
      "prices": {"prompt_per_1m": 0.10, "generated_per_1m": 0.40, "cpu_hour": 0.05},
      "logging": true,
      "pools": {"local": {"cpus": [{"name": "smol", "model": "embedded", "n": 2},
                                   {"name": "gpu", "model": "openai/qwen", "price_per_1k": 0.2},
                                   {"name": "spare", "model": "/models/tiny.gguf",
                                    "fallback": true}],
                          "wait_down_s": 30,
                          "policies": {"alice": {"cpus": ["smol-1", "smol-2"],
                                                 "max_price_per_1k": 0.1}}}}
    }

`logging: false` (`llmos logs off`) stops journalling runs in the log (`llmos.store.log`).

`prices` (each 0 when absent) turn metered usage into cost: per million prompt tokens, per
million generated tokens, per hour resident on a CPU (`/api/usage`, `llmos_user_cost_total`).

The OpenAI settings fall back to `LLMOS_OPENAI_BASE_URL` / `OPENAI_BASE_URL` and
`LLMOS_OPENAI_API_KEY` / `OPENAI_API_KEY`; the environment wins over the file.

`pools` declares pools of CPUs, each named by the model spec `pool/NAME` (`llmos.kernel.pool`):
every entry a CPU with a unique `name`, a `model` spec (not itself a pool), an optional price
per 1000 tokens, `fallback` (serves only while every other one is out) and `n` (that many
instances, named NAME-1..NAME-n); `wait_down_s`, how long a process waits while every CPU is
out; `policies`, per user, the CPUs they may use and the most they pay per 1000 tokens.

`update(home, change)` rewrites `config.json` (atomically, owner-only) with `change` applied to
its JSON object: how `llmos models add|rm` registers a model under a name, keeping every other
key as it was.

What this module does not do: create the log (see `llmos.store.log`) or resolve models (see
`llmos.kernel.cpus`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import ConfigError


def home(*, create: bool = True) -> Path:
    """The llmos home directory ($LLMOS_HOME, else the per-user data directory), as an
    absolute path. With `create`, a missing home is created owner-only (0700); an existing
    directory's mode is never changed. Without it, a missing home is returned as is (a client
    has nothing to connect to)."""
    env = os.environ.get(params.ENV_HOME)
    if env:
        path = Path(env).absolute()
    else:
        import platformdirs  # only without $LLMOS_HOME: it loads tempfile, shutil, random

        path = Path(platformdirs.user_data_dir(params.APP_NAME)).absolute()
    if create and not path.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot create llmos home {path}: {exc.strerror}") from exc
    return path


PRICE_KEYS = ("prompt_per_1m", "generated_per_1m", "cpu_hour")


@dataclass
class Config:
    default_model: str = "embedded"
    aliases: dict[str, str] = field(default_factory=dict)
    openai: dict[str, Any] = field(default_factory=dict)
    mcp_servers: dict[str, Any] = field(default_factory=dict)  # Claude-Desktop `mcpServers`
    path: Path | None = None
    prices: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PRICE_KEYS, 0.0))
    logging: bool = True  # False: runs are not journalled (`llmos logs off`)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)  # validated, `n` expanded

    def cost(self, prompt_tokens: int, generated_tokens: int, cpu_s: float) -> float:
        """What this much usage costs at the configured prices."""
        p = self.prices
        return (
            prompt_tokens / 1e6 * p.get("prompt_per_1m", 0.0)
            + generated_tokens / 1e6 * p.get("generated_per_1m", 0.0)
            + cpu_s / 3600.0 * p.get("cpu_hour", 0.0)
        )

    def openai_base_url(self) -> str | None:
        return (
            os.environ.get(params.ENV_OPENAI_BASE_URL)
            or os.environ.get("OPENAI_BASE_URL")
            or self.openai.get("base_url")
        )

    def openai_api_key(self) -> str | None:
        return (
            os.environ.get(params.ENV_OPENAI_API_KEY)
            or os.environ.get("OPENAI_API_KEY")
            or self.openai.get("api_key")
        )


def load(home_dir: Path | None = None) -> Config:
    """Read `config.json` from the home directory; a missing file means the defaults."""
    path = (home_dir or home()) / params.CONFIG_FILE_NAME
    if not path.exists():
        return Config(path=path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    return parse(path, raw)


def parse(path: Path, raw: Any) -> Config:
    """`config.json`'s object as a Config; ConfigError naming the key at fault."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a JSON object")
    aliases = raw.get("aliases", {})
    openai = raw.get("openai", {})
    default_model = raw.get("default_model", "embedded")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigError(f"{path}: 'aliases' must map names to model specs")
    if not isinstance(openai, dict):
        raise ConfigError(f"{path}: 'openai' must be an object")
    if not isinstance(default_model, str):
        raise ConfigError(f"{path}: 'default_model' must be a string")
    mcp_servers = raw.get("mcpServers", {})
    if not isinstance(mcp_servers, dict):
        raise ConfigError(f"{path}: 'mcpServers' must map server names to their settings")
    logging = raw.get("logging", True)
    if not isinstance(logging, bool):
        raise ConfigError(f"{path}: 'logging' must be true or false")
    return Config(
        logging=logging,
        default_model=default_model,
        aliases=aliases,
        openai=openai,
        mcp_servers=mcp_servers,
        path=path,
        prices=_prices(path, raw.get("prices", {})),
        pools=_pools(path, raw.get("pools", {})),
    )


def update(home_dir: Path, change: Callable[[dict[str, Any]], None]) -> Config:
    """Apply `change` to `config.json`'s object and write it back whole (a temporary file
    renamed over it, mode 0600), then read it again: a change that leaves it invalid is not
    written (ConfigError)."""
    path = home_dir / params.CONFIG_FILE_NAME
    raw: dict[str, Any] = {}
    if path.exists():
        load(home_dir)  # ConfigError for a file that is not valid as it is
        raw = json.loads(path.read_text(encoding="utf-8"))
    change(raw)
    config = parse(path, raw)  # ConfigError: nothing is written
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write config: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return config


def _prices(path: Path, raw: Any) -> dict[str, float]:
    """The `prices` object: known keys only, each a number >= 0 (absent: 0)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: 'prices' must be an object")
    unknown = sorted(set(raw) - set(PRICE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown price {unknown[0]!r}: use {', '.join(PRICE_KEYS)}")
    prices = dict.fromkeys(PRICE_KEYS, 0.0)
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{path}: prices.{key} must be a number >= 0, got {value!r}")
        prices[key] = float(value)
    return prices


def _number(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{path}: {where} must be a number >= 0, got {value!r}")
    return float(value)


def _pools(path: Path, raw: Any) -> dict[str, dict[str, Any]]:
    """The `pools` object, each pool's CPUs with `n` expanded into named instances."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: 'pools' must map pool names to pools")
    out: dict[str, dict[str, Any]] = {}
    for name, pool in raw.items():
        where = f"pools.{name}"
        if not isinstance(pool, dict) or not isinstance(pool.get("cpus"), list) or not pool["cpus"]:
            raise ConfigError(f"{path}: {where} must be an object with a non-empty 'cpus' list")
        unknown = sorted(set(pool) - {"cpus", "wait_down_s", "policies"})
        if unknown:
            raise ConfigError(f"{path}: {where}: unknown key {unknown[0]!r}")
        cpus: list[dict[str, Any]] = []
        for i, entry in enumerate(pool["cpus"]):
            at = f"{where}.cpus[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: {at} must be an object")
            bad = sorted(set(entry) - {"name", "model", "price_per_1k", "fallback", "n"})
            if bad:
                raise ConfigError(f"{path}: {at}: unknown key {bad[0]!r}")
            cpu_name, model = entry.get("name"), entry.get("model")
            if not isinstance(cpu_name, str) or not cpu_name or not isinstance(model, str):
                raise ConfigError(f"{path}: {at} needs a 'name' and a 'model' (strings)")
            if model.startswith(params.POOL_SPEC_PREFIX):
                raise ConfigError(f"{path}: {at}: a pool's CPU cannot be a pool ({model})")
            n = entry.get("n", 1)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= params.POOL_MAX_CPUS:
                raise ConfigError(f"{path}: {at}.n must be 1..{params.POOL_MAX_CPUS}, got {n!r}")
            fallback = entry.get("fallback", False)
            if not isinstance(fallback, bool):
                raise ConfigError(f"{path}: {at}.fallback must be true or false")
            price = _number(path, f"{at}.price_per_1k", entry.get("price_per_1k", 0))
            names = [cpu_name] if n == 1 else [f"{cpu_name}-{k}" for k in range(1, n + 1)]
            for one in names:
                cpus.append(
                    {"name": one, "model": model, "price_per_1k": price, "fallback": fallback}
                )
        seen = [c["name"] for c in cpus]
        dup = next((c for c in seen if seen.count(c) > 1), None)
        if dup is not None:
            raise ConfigError(f"{path}: {where}: two CPUs are named {dup!r}")
        if len(cpus) > params.POOL_MAX_CPUS:
            raise ConfigError(f"{path}: {where} has more than {params.POOL_MAX_CPUS} CPUs")
        wait = _number(
            path, f"{where}.wait_down_s", pool.get("wait_down_s", params.POOL_WAIT_DOWN_S)
        )
        policies = pool.get("policies", {})
        if not isinstance(policies, dict):
            raise ConfigError(f"{path}: {where}.policies must map user names to policies")
        checked: dict[str, dict[str, Any]] = {}
        for user, pol in policies.items():
            at = f"{where}.policies.{user}"
            if not isinstance(pol, dict) or set(pol) - {"cpus", "max_price_per_1k"}:
                raise ConfigError(f"{path}: {at} may say only 'cpus' and 'max_price_per_1k'")
            allowed = pol.get("cpus")
            if allowed is not None and (
                not isinstance(allowed, list) or not all(a in seen for a in allowed)
            ):
                raise ConfigError(
                    f"{path}: {at}.cpus must list CPUs of the pool ({', '.join(seen)})"
                )
            top = pol.get("max_price_per_1k")
            checked[user] = {
                "cpus": allowed,
                "max_price_per_1k": None
                if top is None
                else _number(path, f"{at}.max_price_per_1k", top),
            }
        out[name] = {"cpus": cpus, "wait_down_s": wait, "policies": checked}
    return out
