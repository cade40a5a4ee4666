"""Write the labelled sets of bench/quality.py (deterministic: the same files every run).

Each set is a JSON Lines file of {"input": ..., "gold": ...}; the gold labels come from the
same values the text is built from (sums and products with Decimal), so they are right by
construction. Run: python3 bench/data/quality/make.py
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent

POSITIVE = [
    "I loved this film, the acting was wonderful.",
    "The new phone is fantastic and the battery lasts for days.",
    "What a great dinner, the staff were so friendly.",
    "This book made me happy, I recommend it to everyone.",
    "Excellent service, my package arrived early and in perfect shape.",
    "The concert was amazing, best night of the year.",
    "I am delighted with the results, thank you so much.",
    "Our holiday was beautiful and relaxing, we enjoyed every day.",
    "The course was brilliant and the teacher was very helpful.",
    "Fantastic coffee and a lovely cozy place.",
]
NEGATIVE = [
    "I hated this movie, it was boring and far too long.",
    "The laptop broke after two days, a terrible purchase.",
    "The food was cold and the waiter was rude.",
    "Awful customer support, nobody answered my emails.",
    "The hotel room was dirty and smelled bad.",
    "I am very disappointed, the shoes fell apart in a week.",
    "The train was late again and I missed my meeting, horrible.",
    "This app crashes constantly, it is useless.",
    "The worst pizza I have ever eaten, never again.",
    "The package arrived damaged and the refund was refused.",
]
NEUTRAL = [
    "The meeting is scheduled for Tuesday at 10 am.",
    "The store opens at nine and closes at six.",
    "The report has twelve pages and three tables.",
    "The train to Lyon leaves from platform four.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The library is on the second floor of the building.",
    "The package weighs two kilograms.",
    "Our office moved to Main Street last year.",
    "The form asks for your name and address.",
    "The museum is closed on Mondays.",
]

FIRST = ["Maria", "John", "Aiko", "Pierre", "Fatima", "Lars", "Chen", "Olga", "Diego", "Priya"]
LAST = ["Lopez", "Smith", "Tanaka", "Dubois", "Haddad", "Berg", "Wei", "Ivanova", "Ramos", "Nair"]
COMPANIES = [
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Labs",
    "Stark Industries",
    "Wayne Foods",
    "Hooli",
    "Vandelay Imports",
    "Soylent Inc",
    "Tyrell Systems",
]
EXTRACT_TEMPLATES = [
    "Hi, I'm {name} from {company}. You can write to me at {email}.",
    "Please contact {name} ({email}), who works at {company}, about the order.",
    "{name} joined {company} last spring; her address is {email}.",
    "Best regards, {name}, {company}, {email}",
    "Meeting notes: {name} of {company} will send the slides. Email: {email}",
]

ITEMS = [
    ("pen", "books"),
    ("mug", "mugs"),
    ("ticket", "tickets"),
    ("notebook", "notebooks"),
    ("apple", "apples"),
    ("chair", "chairs"),
]
VENDORS = [
    "Blue River Supplies",
    "Northwind Traders",
    "Contoso Office",
    "Fabrikam Tools",
    "Green Leaf Market",
    "Atlas Printing",
]


def fmt(d: Decimal) -> str:
    return f"{d.normalize():f}" if d == d.to_integral() else f"{d:.2f}".rstrip("0").rstrip(".")


def arithmetic(rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    names = ["Tom", "Sara", "Ali", "Mei", "Ravi", "Lena"]
    for i in range(30):
        kind = i % 6
        who = names[i % len(names)]
        a = rng.randint(12, 95)
        price = Decimal(rng.randint(150, 4999)) / 100
        b = rng.randint(3, 40)
        if kind == 0:
            q = f"A shop sells {a} books at {price} dollars each. How much do they cost in total?"
            gold = a * price
        elif kind == 1:
            q = f"{who} had {a + b} marbles and gave away {b}. How many marbles are left?"
            gold = Decimal(a)
        elif kind == 2:
            n = rng.randint(2, 8)
            total = price * n
            q = f"{n} friends share a bill of {total} dollars equally. How much does each pay?"
            gold = price
        elif kind == 3:
            q = f"{who} read {a} pages on Monday and {b} pages on Tuesday. How many pages in all?"
            gold = Decimal(a + b)
        elif kind == 4:
            q = f"A car drives at {a} km per hour for {b} hours. How many km does it travel?"
            gold = Decimal(a * b)
        else:
            q = f"A ticket costs {price} dollars. {who} buys {b} tickets. What is the total cost?"
            gold = price * b
        out.append({"input": q, "gold": fmt(gold)})
    return out


def invoices(rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(30):
        vendor = VENDORS[i % len(VENDORS)]
        lines, total = [], Decimal(0)
        for item, _ in rng.sample(ITEMS, rng.randint(2, 3)):
            qty = rng.randint(1, 12)
            unit = Decimal(rng.randint(99, 9999)) / 100
            amount = qty * unit
            total += amount
            lines.append(f"  {qty} x {item} @ {unit:.2f} = {amount:.2f}")
        text = (
            f"INVOICE #{1000 + i}\nFrom: {vendor}\nDate: 2026-0{1 + i % 9}-1{i % 10}\n"
            + "\n".join(lines)
            + f"\nTotal due: {total:.2f}\n"
        )
        out.append({"input": text, "gold": {"vendor": vendor, "total": f"{total:.2f}"}})
    return out


def main() -> None:
    rng = random.Random(17)
    classify = [{"input": t, "gold": "positive"} for t in POSITIVE]
    classify += [{"input": t, "gold": "negative"} for t in NEGATIVE]
    classify += [{"input": t, "gold": "neutral"} for t in NEUTRAL]
    extract = []
    for i in range(30):
        first, last = FIRST[i % 10], LAST[(i * 3) % 10]
        company = COMPANIES[(i * 7) % 10]
        email = f"{first.lower()}.{last.lower()}@{company.split()[0].lower()}.com"
        text = EXTRACT_TEMPLATES[i % 5].format(name=f"{first} {last}", company=company, email=email)
        extract.append(
            {"input": text, "gold": {"name": f"{first} {last}", "email": email, "company": company}}
        )
    notes = [
        "buy milk and eggs",
        "call the dentist",
        "water the plants",
        "pay the rent",
        "book the train to Lyon",
        "send the report to Ana",
    ]
    files = ["todo.txt", "notes/home.txt", "reminders.md", "plan.txt", "notes/work.md"]
    fs = []
    for i in range(30):
        note, path = notes[i % 6], files[(i * 5 + i // 6) % 5]
        path = path.replace(".", f"{i}.")
        fs.append(
            {
                "input": f'Save the note "{note}" in the file {path}.',
                "gold": {"path": path, "content": note},
            }
        )
    sets = {
        "classify": classify,
        "extract": extract,
        "arithmetic": arithmetic(rng),
        "invoice": invoices(rng),
        "note": fs,
    }
    for name, rows in sets.items():
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
