"""A long conversation far beyond the context window (in the manner of DMR and LoCoMo).

One user talks to one process over many sessions of small talk; in some sessions they state a
fact ("By the way, my dentist is called Dr. Velkaro."). Much later, after all the sessions,
they ask about the facts ("What is my dentist's name?"). The conversation is several times
the 2,048-token window of the process, so by then most of it has left the context.

Two systems run the same conversation on the embedded model's real tokenizer:
- llmos: the process's `Context` with a `Pager` (oldest-first) writing to a real swap store;
  before each question the kernel's auto-recall searches the process's paged-out pages with
  the question (hybrid retrieval) and pages the best hits back in, within 300 tokens, next to
  the question (so the KV of the conversation before it is kept);
- truncation baseline: no paging and no memory; the oldest messages are dropped to fit.

The OS metric is the page-in hit rate: the share of questions for which the fact needed is in
the context when the question is asked (goal >= 90%). Answer accuracy is the share of replies
from the embedded model (SmolLM2-135M, greedy) that contain the answer. Both are reported for
both systems. BENCH_QUICK=1 asks 8 questions instead of 20.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, emit, table

from llmos.hw.cpu.base import GenRequest, Message, collect
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.kernel.mm.context import Context
from llmos.kernel.mm.paging import Oldest, Pager, recall_into
from llmos.store.memory import MemoryStore

WINDOW = 2048
REPLY_TOKENS = 24
RECALL_TOKENS = 300
SESSIONS = 24
TURNS_PER_SESSION = 8
QUESTIONS = 8 if QUICK else 20
GOAL_HIT_RATE = 0.9
SYSTEM = (
    "You are a friendly assistant with a good memory. Answer the user's question in a few "
    "words, using the conversation and any recalled notes."
)

FIRST = ["Velkaro", "Marisol", "Tindra", "Oskarine", "Belmiro", "Quenby", "Rutvik", "Sabela"]
FIRST += ["Doriane", "Halvard", "Ilsabet", "Jorunn", "Kasimir", "Lavinia", "Merrit", "Nilsa"]
# (statement, question, answer-maker): each slot is asked about once, so answers are unique.
SLOTS = [
    ("By the way, my dentist is called Dr. {a}.", "What is my dentist's name?", "name"),
    ("Oh, and my sister's new puppy is named {a}.", "What is my sister's puppy called?", "name"),
    ("My landlord's name is {a}, in case it comes up.", "Who is my landlord?", "name"),
    ("The code for my bike lock is {a}.", "What is the code for my bike lock?", "digits"),
    ("I finally picked a name for my boat: {a}.", "What did I name my boat?", "name"),
    ("My gym locker number is {a}.", "What is my gym locker number?", "digits"),
    ("My boss is a woman called {a}.", "What is my boss's name?", "name"),
    ("Remember that my flight number is LX{a}.", "What is my flight number?", "flight"),
    ("My grandmother grew up in a village called {a}.", "Where did grandma grow up?", "name"),
    ("The wifi password at the cabin is {a}.", "What is the wifi password at the cabin?", "word"),
    ("My favourite band at the moment is The {a}s.", "Which band do I like at the moment?", "name"),
    ("My neighbour's cat is called {a}.", "What is my neighbour's cat called?", "name"),
    ("I keep my spare key under the {a} pot.", "Where do I keep my spare key?", "plant"),
    ("My new phone extension at work is {a}.", "What is my phone extension at work?", "digits"),
    ("My cousin just moved to {a}.", "Where did my cousin move to?", "name"),
    ("The restaurant we liked is called {a}.", "What was the restaurant we liked called?", "name"),
    ("My piano teacher is Mr. {a}.", "Who is my piano teacher?", "name"),
    ("Our team mascot is a fox named {a}.", "What is the name of our team mascot?", "name"),
    ("The safe at the office opens with {a}.", "What opens the safe at the office?", "digits"),
    ("My daughter's best friend is {a}.", "Who is my daughter's best friend?", "name"),
]
TOPICS = ["the weather", "a film I saw", "my commute", "cooking dinner", "the garden"]
TOPICS += ["a book", "the weekend", "a football match", "my cold", "the new cafe"]
SMALL_TALK = [
    "Let me tell you about {t}. It was fine, nothing special, but it took most of the day.",
    "I keep thinking about {t}. Honestly it was a bit of a mess but we laughed about it.",
    "Anyway, {t} again. Same as last time, more or less, with a few surprises.",
    "So, {t}: I did not expect much and it turned out rather pleasant overall.",
]
ACKS = [
    "That sounds like quite a day. How did you feel about it afterwards?",
    "Ha, I can imagine. Did anything else happen after that?",
    "Nice. It is good to hear the small things went well for you.",
    "I see. Tell me more whenever you like.",
]


def make_answer(kind: str, rng: random.Random) -> str:
    if kind == "digits":
        return str(rng.randrange(1000, 10000))
    if kind == "flight":
        return str(rng.randrange(100, 1000))
    if kind == "word":
        return rng.choice(["marmalade", "tangerine", "porcupine", "lighthouse"]) + str(
            rng.randrange(10, 100)
        )
    if kind == "plant":
        return rng.choice(["basil", "fern", "cactus", "rosemary"])
    return rng.choice(FIRST)


def script(seed: int = 3) -> tuple[list[Message], list[tuple[str, str]]]:
    """The sessions' messages, and the questions with their answers."""
    rng = random.Random(seed)
    slots = rng.sample(SLOTS, QUESTIONS)
    fact_sessions = sorted(rng.sample(range(SESSIONS), QUESTIONS))
    messages: list[Message] = []
    qa: list[tuple[str, str]] = []
    facts = iter(slots)
    for session in range(SESSIONS):
        messages.append({"role": "user", "content": f"Hi again, it is day {session + 1}."})
        messages.append({"role": "assistant", "content": "Welcome back! What is new?"})
        fact_at = rng.randrange(TURNS_PER_SESSION) if session in fact_sessions else -1
        for turn in range(TURNS_PER_SESSION):
            text = rng.choice(SMALL_TALK).format(t=rng.choice(TOPICS))
            if turn == fact_at:
                statement, question, kind = next(facts)
                answer = make_answer(kind, rng)
                text = f"{text} {statement.format(a=answer)}"
                qa.append((question, answer))
            messages.append({"role": "user", "content": text})
            messages.append({"role": "assistant", "content": rng.choice(ACKS)})
    rng.shuffle(qa)
    return messages, qa


def in_context(messages: list[Message], answer: str) -> bool:
    return any(answer.lower() in str(m.get("content") or "").lower() for m in messages)


def ask(cpu: EmbeddedCPU, messages: list[Message]) -> str:
    request = GenRequest(messages=messages, max_tokens=REPLY_TOKENS, temperature=0.0)
    text, _ = collect(cpu.generate(request))
    return text.strip()


def run_llmos(cpu: EmbeddedCPU, history: list[Message], qa: list[tuple[str, str]], root: Path):
    store = MemoryStore.open(root / "memory.db")
    ctx = Context.from_messages([{"role": "system", "content": SYSTEM}], WINDOW, cpu)
    pager = Pager(
        store=lambda: store,
        owner="user",
        process="longconv",
        policy=Oldest(),
        reserve=REPLY_TOKENS + 8,
    )
    pager.attach(ctx)
    for m in history:  # the sessions: the kernel fits the context before every step
        ctx.append(str(m["role"]), str(m["content"]), "input" if m["role"] == "user" else "turn")
        ctx.fit()
    rows = []
    for question, answer in qa:
        hits = store.search_pages("user", "longconv", question, 3)
        recall_into(
            ctx,
            hits,
            RECALL_TOKENS,
            header="Recalled from earlier in this conversation:",
            at_end=True,
        )
        ctx.append("user", question, "input")
        ctx.fit()
        messages = ctx.messages()
        reply = ask(cpu, messages)
        rows.append((in_context(messages, answer), answer.lower() in reply.lower(), ctx.used))
        ctx.append("assistant", reply, "turn")
    store.close()
    return rows, pager.pages_out


def run_truncation(cpu: EmbeddedCPU, history: list[Message], qa: list[tuple[str, str]]):
    system: Message = {"role": "system", "content": SYSTEM}
    kept: list[Message] = []
    budget = WINDOW - (REPLY_TOKENS + 8)

    def fit() -> list[Message]:
        while kept and cpu.count_messages([system, *kept]) > budget:
            kept.pop(0)  # drop the oldest message for good
        return [system, *kept]

    for m in history:
        kept.append(m)
        fit()
    rows = []
    for question, answer in qa:
        kept.append({"role": "user", "content": question})
        messages = fit()
        reply = ask(cpu, messages)
        rows.append((in_context(messages, answer), answer.lower() in reply.lower(), 0))
        kept.append({"role": "assistant", "content": reply})
    return rows


def main() -> None:
    history, qa = script()
    cpu = EmbeddedCPU(embedded_model_path())
    total = cpu.count_messages(history)
    print(
        f"{SESSIONS} sessions, {len(history)} messages, {total} tokens; window {WINDOW}; "
        f"{len(qa)} questions",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paged_rows, pages_out = run_llmos(cpu, history, qa, Path(tmp))
        llmos_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trunc_rows = run_truncation(cpu, history, qa)
    trunc_s = time.perf_counter() - t0
    cpu.close()

    def rates(rows: list[tuple[bool, bool, int]]) -> tuple[float, float]:
        return (
            round(sum(r[0] for r in rows) / len(rows), 3),
            round(sum(r[1] for r in rows) / len(rows), 3),
        )

    hit, acc = rates(paged_rows)
    t_hit, t_acc = rates(trunc_rows)
    print(
        table(
            ["system", "page-in hit rate", "answer accuracy", "seconds"],
            [
                ["llmos (paging + recall)", hit, acc, round(llmos_s, 1)],
                ["truncation baseline", t_hit, t_acc, round(trunc_s, 1)],
            ],
        )
    )
    emit(
        "longconv",
        {
            "sessions": SESSIONS,
            "messages": len(history),
            "conversation_tokens": total,
            "window": WINDOW,
            "questions": len(qa),
            "pages_out": pages_out,
            "hit_rate": hit,
            "accuracy": acc,
            "truncation_hit_rate": t_hit,
            "truncation_accuracy": t_acc,
            "goal_hit_rate": GOAL_HIT_RATE,
            "pass": hit >= GOAL_HIT_RATE,
        },
    )


if __name__ == "__main__":
    main()
