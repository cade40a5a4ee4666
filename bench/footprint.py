"""Footprint of the `llmos` command: start-up time of `llmos --help`, peak RSS of a plain run.

Every measurement is a fresh process (the command's own entry point, run by this Python), the
kinds alternating round by round, REPEATS rounds; medians and spread are reported.

- `python -c pass` is the interpreter's own start-up: the floor under any Python command on
  this machine (site packages and .pth hooks included), printed so the llmos part can be read
  off as the difference.
- `llmos --help` start-up: wall time to exit.
- `llmos run -p "Say hi"` (16 tokens, greedy) peak RSS, measured as the child's ru_maxrss by a
  small wrapper process, at the default KV window (a one-shot run allocates the smallest window
  that holds it: 512 tokens here, see `Program.window_needed`) and at LLMOS_N_CTX=8192 (the
  full window, what a daemon allocates) and 4096 (the KV cache, 22.5 KiB a cell in f16, is
  allocated and touched whole when the model loads).
- The `llm` CLI (Simon Willison's) on the same embedded model (its plugin offers no token
  limit, so it writes a full reply), when it is installed, as a reference: the same model
  run by another command-line tool.

Goals: `llmos --help` under 150 ms; a plain run at 250 MiB RSS or less.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, quick, table

REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if quick() else "5"))
ENTRY = "from llmos.front.cli import main; main()"
HELP_GOAL_MS = 150.0
RSS_GOAL_MIB = 250.0
WINDOWS = ("", "8192", "4096")  # "": the default, the window the run needs
PROMPT = ["run", "-p", "Say hi", "-o", "maxOutputTokens", "16", "-o", "temperature", "0"]
# Runs argv as a child and prints the child's peak RSS in KiB (ru_maxrss of RUSAGE_CHILDREN).
RSS_PROBE = (
    "import resource, subprocess, sys\n"
    "quiet = subprocess.DEVNULL\n"
    "rc = subprocess.run(sys.argv[1:], stdout=quiet, stderr=quiet).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000.0


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[0] != "0":
        raise SystemExit(f"{' '.join(argv)} exited {out[0]}")
    return int(out[1]) / 1024.0


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def main() -> None:
    home = tempfile.mkdtemp(prefix="llmos-footprint-")
    env = {**os.environ, "LLMOS_HOME": home}
    env.pop("LLMOS_N_CTX", None)
    llmos = [sys.executable, "-c", ENTRY]
    llm_cli = shutil.which("llm", path=str(Path(sys.executable).parent))
    times: dict[str, list[float]] = {"python -c pass": [], "llmos --help": []}
    rss: dict[str, list[float]] = {f"llmos run (n_ctx {w or 'default'})": [] for w in WINDOWS}
    if llm_cli:
        rss["llm -m SmolLM2 (reference)"] = []
    for _ in range(REPEATS):
        times["python -c pass"].append(wall_ms([sys.executable, "-c", "pass"], env))
        times["llmos --help"].append(wall_ms([*llmos, "--help"], env))
        for w in WINDOWS:
            run_env = {**env, "LLMOS_N_CTX": w} if w else env
            rss[f"llmos run (n_ctx {w or 'default'})"].append(
                peak_rss_mib([*llmos, *PROMPT], run_env)
            )
        if llm_cli:
            rss["llm -m SmolLM2 (reference)"].append(
                peak_rss_mib([llm_cli, "-m", "SmolLM2", "Say hi"], env)
            )
    shutil.rmtree(home, ignore_errors=True)

    rows: list[list[object]] = []
    for name, values in times.items():
        goal = f"<= {HELP_GOAL_MS:.0f}" if name == "llmos --help" else "-"
        rows.append([name, "wall ms", median(values), spread(values), goal])
    for name, values in rss.items():
        goal = f"<= {RSS_GOAL_MIB:.0f}" if name.startswith("llmos") else "-"
        rows.append([name, "peak RSS MiB", median(values), spread(values), goal])
    print(f"footprint: {REPEATS} alternating rounds, each a fresh process; medians")
    print(table(["command", "measure", "median", "range", "goal"], rows))
    help_ms = median(times["llmos --help"])
    floor_ms = median(times["python -c pass"])
    result: dict[str, object] = {
        "repeats": REPEATS,
        "help_ms": round(help_ms, 1),
        "python_floor_ms": round(floor_ms, 1),
        "help_over_floor_ms": round(help_ms - floor_ms, 1),
        "help_goal_met": help_ms <= HELP_GOAL_MS,
        "rss_mib": {k: round(median(v), 1) for k, v in rss.items()},
        "rss_stdev_mib": {k: round(statistics.pstdev(v), 1) for k, v in rss.items() if len(v) > 1},
        "rss_goal_met_default": median(rss["llmos run (n_ctx default)"]) <= RSS_GOAL_MIB,
    }
    emit("footprint", result)


if __name__ == "__main__":
    main()
