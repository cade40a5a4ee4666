"""What the `llmos` command loads: commands import only what they use.

`llmos --help` and the commands that only read the log or talk to the daemon must not import
the heavy parts (numpy, llama.cpp, the MCP SDK, Jinja2, the web stack): each is imported by the
code that needs it, inside the function. `llmos --help` imports no command module and no part
of the kernel, the hardware or the stores; no command's `--help` imports those either. Checked
in a fresh interpreter through the real entry point, by the modules loaded when it exits. How
long that takes is bench/footprint.py's job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import ModelError

HEAVY = ("numpy", "llama_cpp", "mcp", "jinja2", "fastapi", "starlette", "pydantic", "llm")
HEAVY += ("vaderSentiment",)

# Runs the console script's entry point, then prints the top-level packages it loaded.
PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})),
                              file=sys.stderr))
sys.argv = ["llmos", *sys.argv[1:]]
from llmos.front.cli import main
main()
"""


# The same, printing every module loaded by its full name.
PROBE_ALL = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["llmos", *sys.argv[1:]]
from llmos.front.cli import main
main()
"""
# Every command's and subcommand's --help in one interpreter; prints what they loaded in all.
HELPS_PROBE = """
import contextlib, io, json, sys
import click
from llmos.front.cli import COMMANDS, cli

def paths(group, prefix):
    ctx = click.Context(group, info_name="llmos")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield [*prefix, name]
        if isinstance(command, click.Group):
            yield from paths(command, [*prefix, name])

shown = []
for path in paths(cli, []):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            cli.main([*path, "--help"], prog_name="llmos", standalone_mode=False)
        except SystemExit:
            pass
    assert out.getvalue().startswith("Usage: llmos "), path
    shown.append(" ".join(path))
print(json.dumps({"shown": shown, "modules": sorted(sys.modules)}))
"""
UNLOADED_BY_HELP = ("llmos.kernel", "llmos.hw", "llmos.store")


def loaded(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    full_env = {**os.environ, "LLMOS_HOME": str(home), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    last = proc.stderr.strip().splitlines()[-1]
    return proc.returncode, set(json.loads(last))


@pytest.mark.parametrize(
    "args",
    [("--help",), ("run", "--help"), ("logs", "-n", "1"), ("programs",)],
)
def test_light_commands_import_nothing_heavy(home: Path, args: tuple[str, ...]) -> None:
    code, modules = loaded(home, *args)
    assert code == 0
    assert "llmos" in modules and "click" in modules  # the probe saw the command run
    assert sorted(modules.intersection(HEAVY)) == []


def test_help_loads_no_command_and_no_kernel(home: Path) -> None:
    from llmos.front.cli import COMMANDS

    proc = subprocess.run(
        [sys.executable, "-c", PROBE_ALL, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "LLMOS_HOME": str(home)},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "Commands:" in proc.stdout
    modules = set(json.loads(proc.stderr.strip().splitlines()[-1]))
    assert "llmos.front.cli" in modules
    inner = sorted(m for m in modules if m.startswith(UNLOADED_BY_HELP))
    assert inner == []
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
    commands = sorted({entry.module for entry in COMMANDS.values()} & modules)
    assert commands == []


def test_no_commands_help_loads_the_kernel(home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", HELPS_PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, "LLMOS_HOME": str(home)},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"run", "kernel start", "memory remember", "shm create", "models add"} <= set(
        report["shown"]
    )
    modules = report["modules"]
    assert [m for m in modules if m.startswith(UNLOADED_BY_HELP)] == []
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []


def test_a_bad_kv_size_is_one_line_and_the_model_exit_code(home: Path) -> None:
    full_env = {**os.environ, "LLMOS_HOME": str(home), params.ENV_N_CTX: "lots"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "-p", "hi"],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == ModelError.exit_code
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("[")]
    assert lines[0] == (
        f"llmos: error: {params.ENV_N_CTX}='lots': give a number of tokens from "
        f"{params.N_CTX_MIN} to {params.EMBEDDED_N_CTX}"
    )
    assert "Traceback" not in proc.stderr


def test_a_smaller_kv_cache_is_the_window_the_cpu_reports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmos.config import load
    from llmos.kernel import cpus

    monkeypatch.setenv(params.ENV_N_CTX, "1024")
    monkeypatch.setattr(cpus, "_cache", {})
    cpu = cpus.resolve("embedded", load(tmp_path))
    try:
        assert cpu.n_ctx == 1024
    finally:
        cpu.close()


# --- a one-shot run allocates the window it needs ---------------------------------------------


def test_the_window_a_program_needs_is_bounded_by_its_text(tmp_path: Path) -> None:
    from llmos.kernel.program import load as load_program

    plain = tmp_path / "plain.prompt"
    plain.write_text(
        "---\nconfig:\n  maxOutputTokens: 100\nllmos.max_steps: 1\n---\nSay {{input}}.\n"
    )
    prog = load_program(plain)
    need = prog.window_needed({"input": "hello"})
    one_message = params.MESSAGE_OVERHEAD_GUESS + params.WINDOW_MARGIN_TOKENS
    assert need == len(b"Say hello.") + 100 + one_message
    # a token is at least one byte: a multi-byte input counts its bytes
    assert prog.window_needed({"input": "é" * 10}) == need - 5 + 20
    grows = tmp_path / "grows.prompt"
    grows.write_text("---\nllmos.devices: [calc]\n---\nAdd {{input}}.\n")
    assert load_program(grows).window_needed({"input": "1 and 2"}) is None
    remembers = tmp_path / "remembers.prompt"
    remembers.write_text("---\nllmos.memory: {auto_recall: 200}\n---\nHi {{input}}.\n")
    assert load_program(remembers).window_needed({"input": "x"}) is None


def test_size_window_picks_the_smallest_that_holds_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmos.kernel import plugins

    monkeypatch.delenv(params.ENV_N_CTX, raising=False)
    monkeypatch.setattr(plugins, "_window_hint", None)
    step, small = params.WINDOW_STEP, params.N_CTX_MIN
    for tokens, window in [
        (10, small),
        (small, small),
        (small + 1, small + step),
        (small + step, small + step),
        (params.WINDOW_MAX, params.WINDOW_MAX),
        (params.WINDOW_MAX + 1, params.EMBEDDED_N_CTX),
        (None, params.EMBEDDED_N_CTX),
    ]:
        plugins.size_window(tokens)
        assert plugins._n_ctx() == window, tokens
        one_shot = window < params.EMBEDDED_N_CTX
        slots = params.ONE_SHOT_N_SEQ_MAX if one_shot else params.EMBEDDED_N_SEQ_MAX
        assert plugins._n_seq_max() == slots, tokens
    plugins.size_window(10)
    monkeypatch.setenv(params.ENV_N_CTX, "4096")  # the user's setting wins
    assert plugins._n_ctx() == 4096
    assert plugins._n_seq_max() == params.ONE_SHOT_N_SEQ_MAX  # still one run's process


def run_window(home: Path, *args: str, stdin: str = "") -> int:
    """The window `llmos run -v ARGS` reports it ran with (the real command)."""
    proc = subprocess.run(
        ["llmos", "run", "-v", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "LLMOS_HOME": str(home)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("llmos: run ")][-1]
    return int(line.rsplit("window ", 1)[1].split()[0])


@pytest.mark.slow
def test_a_one_shot_run_allocates_the_window_it_needs(home: Path) -> None:
    from llmos.front.cli_prompt import adhoc
    from llmos.kernel.program import load as load_program

    def window(need: int | None) -> int:
        assert need is not None
        step = params.WINDOW_STEP
        return max(params.N_CTX_MIN, -(-need // step) * step)

    examples = Path(__file__).resolve().parents[2] / "examples"
    say_hi = window(adhoc("Say hi", None, None, {}).window_needed())
    assert say_hi < 1024  # the 512-token default reply and the prompt, with room to spare
    assert run_window(home, "-p", "Say hi") == say_hi
    summarize = load_program(examples / "summarize.prompt")
    summary = "The meeting moved from Monday to Thursday at 3pm because the projector broke."
    assert run_window(home, str(examples / "summarize.prompt"), stdin=summary) == window(
        summarize.window_needed({"input": summary})
    )
    # an input too large for the largest small window gets the full one (and the pager)
    long_text = "The committee met again and talked about the budget. " * 120
    assert run_window(home, str(examples / "summarize.prompt"), stdin=long_text) == (
        params.EMBEDDED_N_CTX
    )
