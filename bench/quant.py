"""Quantization: speed and quality of the shipped Q4_1 model against IQ4_NL, Q4_0 and Q8_0.

Converts the shipped GGUF (llmos.hw.cpu.quant.prepared_model, into a temporary directory) and
measures every format in its own fresh process (one engine per process: the baseline never runs
beside another live engine), alternating the formats over ROUNDS rounds. Each process measures,
on the engine (same context size, threads and model parameters as llmos):
- prefill tok/s: one 512-token prompt;
- decode tok/s at N=1 and N=16 sequences (aggregate, one batch per step, greedy);
- in the first round only (it does not vary): quality on the first 1,024 tokens of HELD_OUT
  (English written for this benchmark): top-1 next-token agreement with the shipped Q4_1
  model at every position, top-1 accuracy against the text itself, and perplexity.
Speeds are the median over rounds, with the spread (max - min) / median beside them.

Recommendation for this kind of CPU (llmos.hw.cpu.weights.cpu_kind): the rule of
llmos.hw.cpu.weights.choose applied to the measured ratios: the fastest conversion at N=16 that
is at least params.QUANT_MIN_SPEEDUP x the shipped file at N=16, not slower at N=1, agrees with
it on >= params.QUANT_MIN_AGREEMENT of the positions and has a perplexity at most
params.QUANT_MAX_PPL_RATIO x; otherwise the shipped Q4_1. The JSON line's "measured" entry is
what params.QUANT_MEASURED records for the CPU kind.
"""

from __future__ import annotations

import ctypes
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import llmos.hw.cpu  # noqa: F401  (first: it sets how llama.cpp's OpenMP threads wait)

# isort: split
import llama_cpp as ll
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, loadavg, median, n_threads, quick, table

from llmos import params
from llmos.hw.cpu import weights
from llmos.hw.cpu.engine import Engine
from llmos.hw.cpu.llama import embedded_model_path
from llmos.hw.cpu.quant import prepared_model

QUICK = quick()
REPEATS = 1  # within a process; the rounds repeat each measurement in fresh processes
PREFILL_TOKENS = 128 if QUICK else 512
DECODE_STEPS = 8 if QUICK else 32
DECODE_PROMPT = 32
N_CTX = 4096
N_SEQ = 16
ROUNDS = 1 if QUICK else 3
QUALITY_TOKENS = 256 if QUICK else 1024  # the first 1,024 tokens of HELD_OUT
FORMATS = params.QUANT_FTYPES  # the shipped q4_1 first

_HELD_OUT_WRAPPED = """\
The harbour town of Kellmoor sits at the mouth of a slow brown river, and for most of its
history it was known for two things: the smell of drying nets and the argument about the bridge.
The old bridge was built of timber in the year the mill burned down, and every spring the
townspeople would gather at the tavern to decide whether to repair it once more or replace it
with stone. The repair always won, because it was cheaper, and because nobody could agree on who
would pay for the stone. So the timber bridge groaned under carts for another season, and the
argument waited for the next spring.

Mara Tillet kept the accounts for the harbour office. She was not a sailor and had never wanted
to be one, but she understood the sea better than most of the captains who came to her window,
because she read the ledgers. A ledger, she liked to say, is a diary that cannot lie. When the
herring came early, the ledgers showed it a week before the fishermen admitted it. When a ship
went missing, the ledgers showed the debts it had left behind, and the debts told you more about
the crew than any memorial ever would.

In the autumn of her eleventh year at the office, Mara noticed something odd. A merchant vessel
called the Lantern had paid its harbour fees in full, three times in one month, for a single
visit. The amounts were small and the clerk who took them had not thought twice. Mara thought
about it for two days. Then she walked down to the quay, found the Lantern tied up at the far
end, and asked the captain whether he knew he had paid for the same mooring three times.

The captain was a tall, tired man with ink on his fingers. He looked at her for a long moment
and then invited her aboard. In his cabin he showed her a box of letters, each one from a
different port, each one asking him to deliver a small sealed package to the next town along the
coast. He had been paid well for the work, he said, but the instructions were strange. Every
letter told him to pay his fees twice or three times, and to keep the receipts. He had assumed
it was a way of moving money quietly, and he had decided that it was not his business to ask.

Mara took the receipts home and spread them across her kitchen table. There were forty of them,
from nine different harbours. When she arranged them by date, the amounts formed a pattern that
repeated every seven days. When she arranged them by harbour, the pattern broke. She spent the
evening trying one order after another, the way her grandmother used to lay out cards, until she
noticed that the last digit of each amount matched a letter in the name of the harbour where it
had been paid. The receipts were not a way of moving money. They were a message.

Decoding the message took her most of the winter. It was written in a simple substitution, but
the writer had been careless with spelling, and some harbours had changed their names since the
letters were sent. Slowly the words came together. They described a shipment of seed grain that
had been promised to the valley farms after the flood, and a group of traders who had bought the
grain, stored it in a warehouse outside the city, and waited for the price to rise. The packages
the Lantern carried were the traders' own accounts, passed from port to port so that no single
clerk would ever hold the whole story.

Mara did not know what to do with what she had found. She was a clerk, not a magistrate, and the
traders were respectable people who sat on the harbour council. She considered burning the
receipts. She considered sending them to the capital without her name on them. In the end she
did the thing she was best at. She wrote it all down in a ledger, with dates and amounts and the
names of the harbours, and she added up the columns until the totals matched to the last coin.
Then she took the ledger to the spring meeting at the tavern, where the town had gathered once
again to argue about the bridge.

Nobody expected the harbour clerk to speak. She waited until the argument about timber and stone
had run out of breath, and then she stood up and read the totals aloud. She did not accuse
anyone. She simply read the numbers, the dates and the harbours, and the amount of grain that
had been promised to the valley and never delivered. When she finished, the room was silent for
a long time. Then an old farmer near the fire asked, quietly, how much stone a bridge would
need, and whether the grain money would cover it.

The traders left Kellmoor before the summer. The grain was found in the warehouse, most of it
still good, and it went to the valley farms in time for a late planting. The money that the
traders had hidden was not enough to build a stone bridge, but it was enough to begin one, and
for the first time in living memory the town agreed on something without a second meeting. The
new bridge took four years to finish. Mara kept the accounts for it, and the ledgers show that
it came in under budget, which the townspeople still mention whenever anyone praises the
engineers.

Years later, when Mara was old and had handed her window to a younger clerk, children would
sometimes ask her how she had known. She always gave the same answer. She had not known
anything, she told them. She had only noticed that a number was wrong, and she had refused to
stop looking at it until it made sense. Most mysteries, she said, are not hidden at all. They
sit in plain view, in columns and receipts and timetables, waiting for someone patient enough to
add them up.

A different kind of patience is needed in a garden. Anyone who has grown vegetables knows that
the work is mostly waiting and watching. The soil must be turned in autumn and left to rest
through the cold months, so that frost can break the clods and worms can carry the fallen leaves
underground. In spring the beds are raked smooth, and the first seeds go in when the ground is
warm enough to hold a hand against it without discomfort. Peas and broad beans come first,
because they tolerate the cold, followed by carrots, beetroot and lettuce in short rows a
fortnight apart, so that the harvest arrives in steady waves rather than all at once.

Water is the gardener's constant worry. Too little and the seedlings wilt by noon; too much and
the roots rot in the dark. The best advice is to water deeply and rarely, early in the morning,
at the base of the plants rather than over the leaves. A layer of straw or cut grass between the
rows keeps the moisture in the ground and the weeds out of the light. Slugs are the other enemy,
and every gardener has a theory about them. Some set out saucers of beer, some scatter crushed
eggshells, and some simply walk the rows at dusk with a torch and a bucket, which is the least
elegant method and by far the most effective.

By midsummer the garden repays the effort. The beans climb their poles faster than they can be
picked, the courgettes swell overnight into marrows if they are forgotten for a day, and the
tomatoes, which sulked through the cool weeks of June, suddenly ripen all together in a glut
that fills every windowsill in the house. This is the season for sharing. Neighbours who never
speak in winter exchange baskets over the fence, and recipes travel along the street with the
surplus: a soup for the marrows, a chutney for the green tomatoes, a cake that uses up the
carrots.

Then the light shortens, the nights grow cold, and the garden turns back toward rest. The last
potatoes are lifted and dried, the onions are plaited and hung in the shed, and the empty beds
are covered for the winter. A careful gardener writes everything down before the year is over:
which varieties grew well, which failed, where the frost lingered longest and where the slugs
did the most damage. Next spring, when the catalogues arrive and every packet promises a
miracle, that notebook is worth more than any advice on the back of a seed packet.

Railways changed the way people thought about time. Before the lines were built, every town kept
its own hour, set by the sun at noon over the church tower, and a traveller riding from one
county to the next simply adjusted his watch when he arrived. Nobody minded, because nobody
moved fast enough for a few minutes to matter. The trains made those minutes matter. A timetable
that listed departures in local time at every station was a puzzle that even the guards could
not solve, and more than one collision was blamed on two signalmen who each believed, correctly
by his own clock, that the line was clear.

The solution was a single standard hour, telegraphed each morning from an observatory to every
station along the line. At first many towns resisted. The new time was a stranger's time, they
said, imposed by a company that cared more for its schedules than for the sun. Some clock makers
built faces with two minute hands, one for the town and one for the railway, and for a few years
the two hours lived side by side. But the timetable was stronger than the sun. Within a
generation the railway hour had become simply the hour, and children grew up never knowing that
noon had once arrived at a different moment in every village.
"""
# Paragraphs as written (the wrapping above is only for the source file's line length).
HELD_OUT = "\n\n".join(" ".join(p.split()) for p in _HELD_OUT_WRAPPED.split("\n\n")) + "\n"


def prefill_tok_s(engine: Engine, tokens: list[int]) -> float:
    prompt = tokens[:PREFILL_TOKENS]
    times = []
    for _ in range(REPEATS):
        seq = engine.new_sequence(prompt, repeat_penalty=1.0)
        engine.admit(seq)
        t0 = time.perf_counter()
        while seq.prefilling or not seq.tokens:
            engine.step([seq])
        times.append(time.perf_counter() - t0)
        engine.finish(seq)
    return len(prompt) / median(times)


def decode_tok_s(engine: Engine, tokens: list[int], n: int) -> float:
    rates = []
    for _ in range(REPEATS):
        seqs = []
        for i in range(n):
            off = (i * 97) % (len(tokens) - DECODE_PROMPT)
            seq = engine.new_sequence(tokens[off : off + DECODE_PROMPT], repeat_penalty=1.0)
            engine.admit(seq)
            seqs.append(seq)
        while any(s.prefilling for s in seqs):
            engine.step(seqs)
        t0 = time.perf_counter()
        for _ in range(DECODE_STEPS):
            engine.step(seqs)
        rates.append(n * DECODE_STEPS / (time.perf_counter() - t0))
        for seq in seqs:
            engine.finish(seq)
    return median(rates)


def next_token_stats(engine: Engine, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each position i < len-1: the argmax of the logits and log p(tokens[i+1])."""
    ctx, n_vocab, n_batch = engine.ctx, engine.n_vocab, engine.n_batch
    ll.llama_memory_clear(engine.mem, True)
    batch = ll.llama_batch_init(n_batch, 0, 1)
    argmax: list[np.ndarray] = []
    logp: list[np.ndarray] = []
    try:
        for start in range(0, len(tokens) - 1, n_batch):
            chunk = tokens[start : min(start + n_batch, len(tokens) - 1)]
            for j, tok in enumerate(chunk):
                batch.token[j] = tok
                batch.pos[j] = start + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = True
            batch.n_tokens = len(chunk)
            rc = ll.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            ptr = ll.llama_get_logits(ctx)
            logits = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(len(chunk), n_vocab)
            ).astype(np.float64)
            nxt = np.array(tokens[start + 1 : start + 1 + len(chunk)])
            mx = logits.max(axis=1)
            lse = mx + np.log(np.exp(logits - mx[:, None]).sum(axis=1))
            argmax.append(logits.argmax(axis=1))
            logp.append(logits[np.arange(len(chunk)), nxt] - lse)
    finally:
        ll.llama_batch_free(batch)
        ll.llama_memory_clear(engine.mem, True)
    return np.concatenate(argmax), np.concatenate(logp)


def measure(path: Path, quality: bool, out: Path) -> dict[str, Any]:
    """One format in this (fresh) process: speeds, and quality when asked (the argmax of each
    position is saved to `out`.npy for the agreement, computed by the parent)."""
    engine = Engine(path, n_ctx=N_CTX, n_seq_max=N_SEQ, n_threads=n_threads())
    try:
        tokens = engine.tokenize(HELD_OUT, add_special=True, special=False)[:QUALITY_TOKENS]
        result: dict[str, Any] = {"size_mb": path.stat().st_size / 1e6, "tokens": len(tokens)}
        if quality:
            argmax, logp = next_token_stats(engine, tokens)
            np.save(out.with_suffix(".npy"), argmax)
            result["ppl"] = math.exp(-float(logp.mean()))
            result["text_acc"] = float((argmax == np.array(tokens[1:])).mean())
        result["prefill"] = prefill_tok_s(engine, tokens)
        result["decode1"] = decode_tok_s(engine, tokens, 1)
        result["decode16"] = decode_tok_s(engine, tokens, N_SEQ)
        return result
    finally:
        engine.close()


def worker(fmt: str, path: Path, quality: bool, out: Path) -> None:
    out.write_text(json.dumps(measure(path, quality, out)))


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / median(values) if values else 0.0


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), sys.argv[5] == "quality", Path(sys.argv[4]))
        return
    load_before = loadavg()
    kind = weights.this_cpu_kind()
    shipped = embedded_model_path()
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in FORMATS}
    quality: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        convert_s: dict[str, float] = {"q4_1": 0.0}
        paths = {"q4_1": shipped}
        for fmt in FORMATS[1:]:
            t0 = time.perf_counter()
            paths[fmt] = prepared_model(shipped, Path(tmp), fmt)
            convert_s[fmt] = time.perf_counter() - t0
        for rnd in range(ROUNDS):
            # Alternate the order each round so no format always runs first (or last).
            order = FORMATS if rnd % 2 == 0 else tuple(reversed(FORMATS))
            for fmt in order:
                out = Path(tmp) / f"{fmt}-{rnd}.json"
                print(f"round {rnd + 1}/{ROUNDS}: {fmt}...", file=sys.stderr)
                cmd = [sys.executable, __file__, "--worker", fmt, str(paths[fmt]), str(out)]
                subprocess.run([*cmd, "quality" if rnd == 0 else "speed"], check=True)
                r = json.loads(out.read_text())
                if rnd == 0:
                    r["argmax"] = np.load(out.with_suffix(".npy"))
                    quality[fmt] = r
                runs[fmt].append(r)
    ref_q = quality["q4_1"]
    med = {
        f: {key: median([r[key] for r in runs[f]]) for key in ("prefill", "decode1", "decode16")}
        for f in FORMATS
    }
    ref = med["q4_1"]
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for fmt in FORMATS:
        q = quality[fmt]
        m = med[fmt]
        s = {
            "size_mb": round(q["size_mb"], 1),
            "convert_s": round(convert_s[fmt], 2),
            "prefill_tok_s": round(m["prefill"], 1),
            "decode_n1_tok_s": round(m["decode1"], 1),
            "decode_n16_tok_s": round(m["decode16"], 1),
            "spread_prefill": round(spread([r["prefill"] for r in runs[fmt]]), 3),
            "spread_n1": round(spread([r["decode1"] for r in runs[fmt]]), 3),
            "spread_n16": round(spread([r["decode16"] for r in runs[fmt]]), 3),
            "speedup_prefill": round(m["prefill"] / ref["prefill"], 3),
            "speedup_n1": round(m["decode1"] / ref["decode1"], 3),
            "speedup_n16": round(m["decode16"] / ref["decode16"], 3),
            "agreement": round(float((q["argmax"] == ref_q["argmax"]).mean()), 4),
            "text_top1": round(q["text_acc"], 4),
            "ppl": round(q["ppl"], 3),
            "ppl_ratio": round(q["ppl"] / ref_q["ppl"], 4),
        }
        summary[fmt] = s
        rows.append(
            [
                fmt,
                s["size_mb"],
                f"{s['prefill_tok_s']} ±{s['spread_prefill']:.0%}",
                f"{s['decode_n1_tok_s']} ±{s['spread_n1']:.0%}",
                f"{s['decode_n16_tok_s']} ±{s['spread_n16']:.0%}",
                f"{s['speedup_prefill']:.2f}x",
                f"{s['speedup_n1']:.2f}x",
                f"{s['speedup_n16']:.2f}x",
                s["agreement"],
                s["text_top1"],
                s["ppl"],
            ]
        )
    measured = {
        f: {k: summary[f][k] for k in ("speedup_prefill", "speedup_n1", "speedup_n16")}
        | {"agreement": summary[f]["agreement"], "ppl_ratio": summary[f]["ppl_ratio"]}
        for f in FORMATS[1:]
    }
    recommend, reason = weights.choose(kind, {kind: measured})
    load_after = loadavg()
    print(
        table(
            [
                "format",
                "MB",
                "prefill tok/s",
                "decode N=1",
                "decode N=16",
                "prefill x",
                "N=1 x",
                "N=16 x",
                "agree w/ Q4_1",
                "text top-1",
                "ppl",
            ],
            rows,
        )
    )
    print(
        f"cpu kind {kind}; quality text: {ref_q['tokens']} tokens; threads {n_threads()}; "
        f"{ROUNDS} rounds, each format in its own process, medians (± spread: (max-min)/median); "
        f"load average before {load_before}, after {load_after}"
    )
    print(f"recommendation: {reason}")
    emit(
        "quant",
        {
            "cpu_kind": kind,
            "formats": summary,
            "measured": measured,
            "recommend": recommend,
            "goal": {
                "min_speedup_n16": params.QUANT_MIN_SPEEDUP,
                "min_agreement": params.QUANT_MIN_AGREEMENT,
                "max_ppl_ratio": params.QUANT_MAX_PPL_RATIO,
            },
            "rounds": ROUNDS,
            "quality_tokens": ref_q["tokens"],
            "threads": n_threads(),
            "quick": QUICK,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    )


if __name__ == "__main__":
    main()
