"""`llmos models add|default|rm` through the real command: a local GGUF (the embedded model's
own file) registered under a name is a CPU for `--model NAME` and, with `--default`, for every
run; bad names, files that are not GGUF, wrong checksums and downloads without a network are
one line each and register nothing. (No test downloads: the download path is refused offline.)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from llmos.hw.cpu.llama import embedded_model_path
from llmos.store.log import Log

try:
    from tests.conftest import RunCli
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from conftest import RunCli  # type: ignore[no-redef,import-not-found,unused-ignore]

YES = """---
name: agree
description: One token.
config:
  temperature: 0
  maxOutputTokens: 1
---
{{role "user"}}
Say yes.
"""


def one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("llmos: error: ")
    return proc.stderr.removeprefix("llmos: error: ").rstrip("\n")


def config_of(home: Path) -> dict[str, object]:
    path = home / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def last_cpu(home: Path) -> str:
    log = Log.open(home / "logs.db")
    try:
        (record,) = log.list_runs(limit=1)
    finally:
        log.close()
    assert record.status == "ok", record
    return record.cpu


@pytest.fixture
def gguf() -> Path:
    return embedded_model_path()


def test_a_local_gguf_becomes_a_cpu_then_the_default(
    run_cli: RunCli, home: Path, tmp_path: Path, gguf: Path
) -> None:
    (home / "config.json").write_text(json.dumps({"aliases": {"fast": "openai/gpt-x"}}))
    program = tmp_path / "yes.prompt"
    program.write_text(YES)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    added = run_cli("models", "add", "small", str(gguf), "--sha256", digest)
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"{gguf}\n"
    assert added.stderr.startswith("llmos: model small (") and "--model small" in added.stderr
    assert config_of(home) == {"aliases": {"fast": "openai/gpt-x", "small": str(gguf)}}
    assert (home / "config.json").stat().st_mode & 0o077 == 0  # owner-only
    rows = json.loads(run_cli("models", "--json").stdout)
    assert {"name": "small", "kind": "alias", "detail": str(gguf)} in rows
    listed = run_cli("models").stdout.splitlines()
    assert listed[0].startswith("embedded ") and listed[0].endswith(" (default)")
    assert any(line.startswith("small ") for line in listed)
    # --model NAME runs on it (the CPU is the file).
    ran = run_cli("run", program, "--model", "small")
    assert ran.returncode == 0, ran.stderr
    assert last_cpu(home) == str(gguf)
    # --default makes every run use it; `models rm` puts embedded back.
    again = run_cli("models", "add", "small", str(gguf), "--default", "--force")
    assert again.returncode == 0, again.stderr
    assert config_of(home)["default_model"] == "small"
    listed = run_cli("models").stdout.splitlines()
    assert [line.split()[0] for line in listed if line.endswith(" (default)")] == ["small"]
    ran = run_cli("run", program)
    assert ran.returncode == 0, ran.stderr
    assert last_cpu(home) == str(gguf)
    removed = run_cli("models", "rm", "small")
    assert removed.returncode == 0, removed.stderr
    assert "the default is embedded again" in removed.stderr and gguf.is_file()
    assert config_of(home) == {"aliases": {"fast": "openai/gpt-x"}, "default_model": "embedded"}
    assert run_cli("models", "default", "fast").returncode == 0
    assert config_of(home)["default_model"] == "fast"


def test_what_cannot_be_registered_is_one_line_and_changes_nothing(
    run_cli: RunCli, home: Path, tmp_path: Path, gguf: Path
) -> None:
    assert run_cli("models", "add", "small", str(gguf)).returncode == 0
    before = config_of(home)
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("just text")
    cases = [
        (["small", str(gguf)], 4, "model 'small' is already registered ("),
        (["Big", str(gguf)], 4, "bad model name 'Big': use lowercase letters"),
        (["embedded", str(gguf)], 4, "bad model name 'embedded'"),
        (["x", str(not_gguf)], 5, f"{not_gguf}: not a GGUF model file"),
        (["x", str(tmp_path / "none.gguf")], 5, f"{tmp_path / 'none.gguf'}: cannot read"),
        (["x", str(gguf), "--sha256", "0" * 64], 5, f"{gguf}: SHA-256 does not match"),
        (["x", str(gguf), "--sha256", "abc"], 4, "bad --sha256 'abc'"),
        (["x", "hf:only-a-name.gguf"], 4, "bad model source 'hf:only-a-name.gguf'"),
    ]
    for args, code, start in cases:
        assert one_error(run_cli("models", "add", *args), code).startswith(start), args
    # A download without a network: one line that says what to do instead, exit 5.
    offline = run_cli(
        "models",
        "add",
        "qwen",
        "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
        env={"HF_HUB_OFFLINE": "1"},
    )
    message = one_error(offline, 5)
    assert message.startswith("cannot download hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/")
    assert message.endswith("fetch the file elsewhere and `llmos models add NAME PATH.gguf`")
    assert one_error(run_cli("models", "rm", "nope"), 21) == (
        "no model named 'nope' (see `llmos models`)"
    )
    assert one_error(run_cli("models", "default", "nope"), 21).startswith("no model named")
    assert config_of(home) == before
    assert not (home / "models").exists()  # nothing was downloaded
