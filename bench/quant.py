"""Quantization: speed and quality of the shipped Q4_1 model against Q4_0 and Q8_0 conversions.

Converts the shipped GGUF (llmos.hw.cpu.quant.prepared_model, into a temporary directory) and, for
each format, measures on the engine (same context size, threads and model parameters as llmos):
- prefill tok/s: one 512-token prompt in one llama_decode (median of REPEATS);
- decode tok/s at N=1 and N=8 sequences (aggregate, one batch per step, greedy; median);
- quality on HELD_OUT, ~2,000 tokens of English written for this benchmark (not seen by the
  model in this form): top-1 next-token agreement with the shipped Q4_1 model at every
  position, top-1 accuracy against the text itself, and perplexity.

Recommendation: the fastest conversion (decode at N=8, the multi-process case) that is at least
MIN_SPEEDUP x the shipped file, agrees with it on >= MIN_AGREEMENT of the positions and has a
perplexity at most MAX_PPL_RATIO x the shipped one; otherwise keep the shipped Q4_1.
"""

from __future__ import annotations

import ctypes
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp as ll
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, loadavg, median, n_threads, quick, table

from llmos.hw.cpu.engine import Engine
from llmos.hw.cpu.llama import embedded_model_path
from llmos.hw.cpu.quant import prepared_model

QUICK = quick()
REPEATS = 1 if QUICK else 3
PREFILL_TOKENS = 128 if QUICK else 512
DECODE_STEPS = 8 if QUICK else 64
DECODE_PROMPT = 32
N_CTX = 4096
N_SEQ = 8
QUALITY_TOKENS = 256 if QUICK else 100_000  # all of HELD_OUT in a full run
MIN_SPEEDUP = 1.2
MIN_AGREEMENT = 0.90
MAX_PPL_RATIO = 1.05
FORMATS = ("q4_1", "q4_0", "q8_0")

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


def measure(path: Path) -> dict[str, Any]:
    engine = Engine(path, n_ctx=N_CTX, n_seq_max=N_SEQ, n_threads=n_threads())
    try:
        tokens = engine.tokenize(HELD_OUT, add_special=True, special=False)[:QUALITY_TOKENS]
        argmax, logp = next_token_stats(engine, tokens)
        return {
            "tokens": tokens,
            "argmax": argmax,
            "ppl": math.exp(-float(logp.mean())),
            "text_acc": float((argmax == np.array(tokens[1:])).mean()),
            "prefill": prefill_tok_s(engine, tokens),
            "decode1": decode_tok_s(engine, tokens, 1),
            "decode8": decode_tok_s(engine, tokens, N_SEQ),
            "size_mb": path.stat().st_size / 1e6,
        }
    finally:
        engine.close()


def main() -> None:
    load_before = loadavg()
    shipped = embedded_model_path()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        convert_s: dict[str, float] = {"q4_1": 0.0}
        paths = {"q4_1": shipped}
        for fmt in FORMATS[1:]:
            t0 = time.perf_counter()
            paths[fmt] = prepared_model(shipped, Path(tmp), fmt)
            convert_s[fmt] = time.perf_counter() - t0
        for fmt in FORMATS:
            results[fmt] = measure(paths[fmt])
    ref = results["q4_1"]
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for fmt in FORMATS:
        r = results[fmt]
        agree = float((r["argmax"] == ref["argmax"]).mean())
        s = {
            "size_mb": round(r["size_mb"], 1),
            "convert_s": round(convert_s[fmt], 2),
            "prefill_tok_s": round(r["prefill"], 1),
            "decode_n1_tok_s": round(r["decode1"], 1),
            "decode_n8_tok_s": round(r["decode8"], 1),
            "speedup_prefill": round(r["prefill"] / ref["prefill"], 3),
            "speedup_n1": round(r["decode1"] / ref["decode1"], 3),
            "speedup_n8": round(r["decode8"] / ref["decode8"], 3),
            "agreement_vs_q4_1": round(agree, 4),
            "text_top1": round(r["text_acc"], 4),
            "ppl": round(r["ppl"], 3),
            "ppl_ratio": round(r["ppl"] / ref["ppl"], 4),
        }
        summary[fmt] = s
        rows.append(
            [
                fmt,
                s["size_mb"],
                s["prefill_tok_s"],
                s["decode_n1_tok_s"],
                s["decode_n8_tok_s"],
                f"{s['speedup_n1']:.2f}x / {s['speedup_n8']:.2f}x",
                s["agreement_vs_q4_1"],
                s["text_top1"],
                s["ppl"],
            ]
        )
    ok = [
        f
        for f in FORMATS[1:]
        if summary[f]["speedup_n8"] >= MIN_SPEEDUP
        and summary[f]["agreement_vs_q4_1"] >= MIN_AGREEMENT
        and summary[f]["ppl_ratio"] <= MAX_PPL_RATIO
    ]
    recommend = max(ok, key=lambda f: summary[f]["decode_n8_tok_s"]) if ok else "q4_1"
    load_after = loadavg()
    print(
        table(
            [
                "format",
                "MB",
                "prefill tok/s",
                "decode N=1",
                "decode N=8",
                "speedup N=1/N=8",
                "agree w/ Q4_1",
                "text top-1",
                "ppl",
            ],
            rows,
        )
    )
    print(
        f"quality text: {len(ref['tokens'])} tokens; threads {n_threads()}; "
        f"load average before {load_before}, after {load_after}"
    )
    print(
        f"recommendation: {recommend} (a conversion must be >= {MIN_SPEEDUP}x at N=8, agree "
        f">= {MIN_AGREEMENT} with Q4_1 and have ppl <= {MAX_PPL_RATIO}x)"
    )
    emit(
        "quant",
        {
            "formats": summary,
            "recommend": recommend,
            "goal": {
                "min_speedup_n8": MIN_SPEEDUP,
                "min_agreement": MIN_AGREEMENT,
                "max_ppl_ratio": MAX_PPL_RATIO,
            },
            "pass": recommend != "q4_1",
            "quality_tokens": len(ref["tokens"]),
            "threads": n_threads(),
            "quick": QUICK,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    )


if __name__ == "__main__":
    main()
