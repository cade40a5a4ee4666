"""Overhead of llmos over raw llama-cpp-python: the same program, prompt and model.

Runs examples/story-like generation through `llmos run --json` (a real subprocess: program
loading, rendering, the engine thread, streaming to stdout, the log) and through
llama-cpp-python's own `Llama.create_completion` on the same GGUF file, the same rendered
prompt, greedy decoding, the same thread count. Decode speed is compared: generated tokens
after the first, divided by the time from the first token to the last (prefill and model
load excluded on both sides). Each run is a process of its own (the raw side too: never beside
a loaded model), the two alternating REPEATS times; the medians are compared. `llmos` is the
one installed next to the running Python (not whatever PATH finds).

Goal: llmos reaches >= 0.95 of raw throughput.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, n_threads, patch_llama_model_params, table

from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.kernel.program import load

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
MAX_TOKENS = 128
PROGRAM = """---
name: story
description: Write a long story (benchmark program).
config:
  temperature: 0
  maxOutputTokens: {max_tokens}
input:
  schema:
    input: string
---
{{{{role "system"}}}}
You are a storyteller. Write long, detailed stories.
{{{{role "user"}}}}
{{{{input}}}}
"""
TOPIC = "Write a long story about a lighthouse keeper who finds a map in a bottle."


def llmos_cmd() -> list[str]:
    """The `llmos` of this Python's environment."""
    script = Path(sys.executable).with_name("llmos")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from llmos.front.cli import main; main()"]


def llmos_run(program: Path, home: str) -> dict[str, float]:
    env = {**os.environ, "LLMOS_HOME": home}
    out = subprocess.run(
        [*llmos_cmd(), "run", str(program), "--json", "-i", f"input={TOPIC}"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    result = json.loads(out.stdout)
    return {
        "tokens": result["usage"]["completion_tokens"],
        "tok_s": result["tokens_per_s"],
    }


def raw_side(prompt_file: Path) -> dict[str, float]:
    """One raw run in this (fresh) process: load the model, generate, report decode speed."""
    patch_llama_model_params()
    from llama_cpp import Llama

    llm = Llama(
        str(embedded_model_path()),
        n_ctx=2048,
        n_threads=n_threads(),
        n_threads_batch=n_threads(),
        verbose=False,
    )
    return raw_run(llm, prompt_file.read_text())


def raw_proc(prompt_file: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--raw", str(prompt_file)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return dict(json.loads(out.stdout.splitlines()[-1]))


def raw_run(llm: object, prompt: str) -> dict[str, float]:
    first = last = 0.0
    n = 0
    for _ in llm.create_completion(  # type: ignore[attr-defined]
        prompt, max_tokens=MAX_TOKENS, temperature=0.0, stream=True
    ):
        now = time.perf_counter()
        if n == 0:
            first = now
        last = now
        n += 1
    return {"tokens": n, "tok_s": (n - 1) / (last - first) if n > 1 else 0.0}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--raw":
        print(json.dumps(raw_side(Path(sys.argv[2]))))
        return
    model = embedded_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "story.prompt"
        program.write_text(PROGRAM.format(max_tokens=MAX_TOKENS))
        # The exact prompt text llmos sends, rendered by the model's own chat template.
        cpu = EmbeddedCPU(model, n_seq_max=1, n_ctx=2048)
        prompt = cpu.render_prompt(load(program).render({"input": TOPIC}))
        cpu.close()
        prompt_file = Path(tmp) / "prompt.txt"
        prompt_file.write_text(prompt)
        llmos_runs, raw_runs = [], []
        for _ in range(REPEATS):
            llmos_runs.append(llmos_run(program, tmp))
            raw_runs.append(raw_proc(prompt_file))
    rows = [
        ["llmos run", llmos_runs[0]["tokens"], median([r["tok_s"] for r in llmos_runs])],
        ["raw llama-cpp-python", raw_runs[0]["tokens"], median([r["tok_s"] for r in raw_runs])],
    ]
    ratio = rows[0][2] / rows[1][2] if rows[1][2] else 0.0
    print(table(["path", "tokens", "decode tok/s (median)"], rows))
    print(f"ratio llmos/raw = {ratio:.3f} (goal >= 0.95)")
    emit(
        "overhead",
        {
            "llmos_tok_s": round(rows[0][2], 2),
            "raw_tok_s": round(rows[1][2], 2),
            "ratio": round(ratio, 3),
            "goal": 0.95,
            "pass": ratio >= 0.95,
            "tokens": rows[0][1],
            "repeats": REPEATS,
            "threads": n_threads(),
        },
    )


if __name__ == "__main__":
    main()
