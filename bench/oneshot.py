"""Speed of a one-shot run's sizing: the KV window and sequence slots `llmos run` allocates.

A one-shot run of a program that cannot grow its context allocates the window it needs
(`Program.window_needed`, `plugins.size_window`: a multiple of params.WINDOW_STEP) and
params.ONE_SHOT_N_SEQ_MAX slots. This compares it with the sizing it replaced (2048 cells, the
smallest window it used to pick, and params.EMBEDDED_N_SEQ_MAX slots) on the embedded model in
the weight format this machine chose: one greedy reply of TOKENS tokens (end-of-generation
ignored) to a prompt of about 200 tokens, through `EmbeddedCPU.generate` (the engine thread,
its batching and sampling). Prefill tok/s is prompt tokens over the time to the first token;
decode tok/s is the tokens after the first over the time after it. Each side is a fresh process
(model load untimed), the sides alternating over ROUNDS rounds, the order rotating; medians.
The replies must be identical (greedy output does not depend on the window or the slots).

    python bench/oneshot.py        (BENCH_QUICK=1: 1 round, 32 tokens)

Goal: the one-shot sizing is no slower (ratio >= 0.95, the noise of a shared machine).
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

from _common import emit, median, quick, table

from llmos import params

QUICK = quick()
ROUNDS = 1 if QUICK else int(os.environ.get("BENCH_REPEATS", "5"))
TOKENS = 32 if QUICK else 128
OLD = {"n_ctx": 2048, "n_seq_max": params.EMBEDDED_N_SEQ_MAX}
PROMPT = (
    "Here are notes from a week at a small harbour town. On Monday the ferry was late because "
    "of fog, and the fishermen waited at the pier drinking coffee. On Tuesday the market sold "
    "out of mackerel before noon. On Wednesday a storm closed the lighthouse path and the school "
    "let the children go home early. On Thursday the mayor opened the new library, which has a "
    "reading room that looks over the bay. On Friday there was music in the square until late. "
    "Write a long, detailed story about this week, day by day."
)


def side(name: str, home: str) -> dict[str, object]:
    from llmos.front.cli_prompt import adhoc
    from llmos.hw.cpu.base import GenRequest
    from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
    from llmos.hw.cpu.quant import prepared_model
    from llmos.hw.cpu.weights import embedded_format
    from llmos.kernel import plugins

    models = Path(home) / params.QUANT_CACHE_DIR_NAME
    config = {"maxOutputTokens": TOKENS, "temperature": 0}
    if name == "one-shot":
        plugins.size_window(adhoc(PROMPT, None, None, config).window_needed())
        sizing = {"n_ctx": plugins._n_ctx(), "n_seq_max": plugins._n_seq_max()}
    else:
        sizing = dict(OLD)
    path = prepared_model(embedded_model_path(), models, embedded_format(models).ftype)
    cpu = EmbeddedCPU(path, n_ctx=sizing["n_ctx"], n_seq_max=sizing["n_seq_max"])
    request = GenRequest(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=TOKENS,
        temperature=0,
        ignore_eos=True,
    )
    start = time.perf_counter()
    first = last = 0.0
    text: list[str] = []
    prompt_tokens = generated = 0
    for chunk in cpu.generate(request):
        now = time.perf_counter()
        if chunk.text:
            text.append(chunk.text)
            if not first:
                first = now
            last = now
        if chunk.done:
            prompt_tokens, generated = chunk.prompt_tokens, chunk.completion_tokens
    cpu.close()
    return {
        **sizing,
        "prefill_tok_s": prompt_tokens / (first - start),
        "decode_tok_s": (generated - 1) / (last - first) if last > first else 0.0,
        "prompt_tokens": prompt_tokens,
        "text": "".join(text),
    }


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(side(sys.argv[1], sys.argv[2])))
        return
    home = os.environ.get("LLMOS_HOME") or tempfile.mkdtemp(prefix="llmos-oneshot-")
    env = {**os.environ, "LLMOS_HOME": home}
    env.pop(params.ENV_N_CTX, None)
    names = ["old sizing", "one-shot"]
    subprocess.run([sys.executable, __file__, "one-shot", home], env=env, check=True)  # converts
    runs: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    for r in range(ROUNDS):
        for name in names[r % 2 :] + names[: r % 2]:
            out = subprocess.run(
                [sys.executable, __file__, name, home], env=env, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise SystemExit(f"{name}: {out.stderr.strip().splitlines()[-1:]}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(name: str, key: str) -> float:
        return median([float(str(x[key])) for x in runs[name]])

    rows = []
    for name in names:
        first = runs[name][0]
        rows.append(
            [
                name,
                first["n_ctx"],
                first["n_seq_max"],
                med(name, "prefill_tok_s"),
                med(name, "decode_tok_s"),
            ]
        )
    same = len({str(x["text"]) for xs in runs.values() for x in xs}) == 1
    ratio_prefill = med("one-shot", "prefill_tok_s") / med("old sizing", "prefill_tok_s")
    ratio_decode = med("one-shot", "decode_tok_s") / med("old sizing", "decode_tok_s")
    print(f"one-shot sizing: {ROUNDS} alternating rounds, {TOKENS} tokens, medians")
    print(table(["sizing", "n_ctx", "slots", "prefill tok/s", "decode tok/s"], rows))
    print(f"one-shot / old: prefill {ratio_prefill:.3f}x, decode {ratio_decode:.3f}x")
    emit(
        "oneshot",
        {
            "rounds": ROUNDS,
            "tokens": TOKENS,
            "prompt_tokens": runs["one-shot"][0]["prompt_tokens"],
            "sizing": {
                n: {"n_ctx": r[1], "n_seq_max": r[2]} for n, r in zip(names, rows, strict=True)
            },
            "prefill_tok_s": {n: round(float(r[3]), 1) for n, r in zip(names, rows, strict=True)},
            "decode_tok_s": {n: round(float(r[4]), 1) for n, r in zip(names, rows, strict=True)},
            "ratio_prefill": round(ratio_prefill, 3),
            "ratio_decode": round(ratio_decode, 3),
            "replies_identical": same,
        },
    )


if __name__ == "__main__":
    main()
