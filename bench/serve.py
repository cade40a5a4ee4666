"""Serve: many users streaming completions over HTTP, against the same load on the kernel in
process.

HTTP side: `llmos serve` runs in its own process on loopback (a temporary home, USERS users,
fair-share scheduling). CLIENTS concurrent clients (spread evenly over the users) each stream
chat completions through the official async `openai` client (`AsyncOpenAI`), one after another,
for DURATION seconds: a distinct short prompt each time, greedy, MAX_TOKENS tokens at most,
usage in the last chunk. Recorded per request: time to first token (first non-empty content
chunk), total latency, generated tokens, and whether it failed.

In-process side: the same load (the same users, clients, prompts and limits) on a `Kernel` in a
process of its own, configured as `llmos serve` configures it (fair share, the process journal
that logs every piece of output before it is sent), each client a thread calling the kernel's
API (`chat`, then following the process's output) directly: the ceiling the HTTP layer is
measured against.

The HTTP side's load generator (the process running the `openai` clients, not the server) runs
at nice CLIENT_NICE (`--client-nice`, default 10): on a small machine it shares the cores with
the server, and a client that takes CPU the server wanted measures the client, not the HTTP
layer; real clients run on other machines. `--client-nice 0` measures them side by side; the
JSON line says which was used.

The two sides alternate over ROUNDS rounds (each in its own process, never side by side).
Goals: 0 errors; HTTP aggregate tokens/s at least 0.9 of the in-process rate; Jain's fairness
index over per-user tokens (HTTP side) at least 0.95.

    python bench/serve.py [--duration S] [--clients N] [--users N] [--rounds N]
                          [--client-nice N] [--quick]

A table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, jain, percentile, table

GOAL_RATIO = 0.9
GOAL_JAIN = 0.95
MAX_TOKENS = 32
START_TIMEOUT_S = 180.0


def prompt(client: int, n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Count in words from {client * 97 + n} onwards."}]


def record(
    user: str, t0: float, ttft: float | None, tokens: int, error: str | None
) -> dict[str, Any]:
    """One request: a failed one before its first token counts its whole time as TTFT."""
    now = time.monotonic()
    return {
        "user": user,
        "ttft": ttft if ttft is not None else now - t0,
        "latency": now - t0,
        "tokens": tokens,
        "error": error,
    }


def summarize(kind: str, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [r for r in records if not r["error"]]
    per_user: dict[str, int] = {}
    for r in ok:
        per_user[r["user"]] = per_user.get(r["user"], 0) + r["tokens"]
    tokens = sum(per_user.values())
    return {
        "side": kind,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "tokens": tokens,
        "tok_s": round(tokens / wall, 2) if wall else 0.0,
        "ttft_p50_s": round(percentile([r["ttft"] for r in ok], 50), 3),
        "ttft_p99_s": round(percentile([r["ttft"] for r in ok], 99), 3),
        "latency_p50_s": round(percentile([r["latency"] for r in ok], 50), 3),
        "latency_p99_s": round(percentile([r["latency"] for r in ok], 99), 3),
        "per_user": per_user,
        "jain": round(jain(list(per_user.values())), 4) if per_user else 0.0,
        "wall_s": round(wall, 2),
        "first_error": next((r["error"] for r in records if r["error"]), None),
    }


# --- the HTTP side --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llmos_cmd() -> list[str]:
    return [sys.executable, "-c", "from llmos.front.cli import main; main()"]


def start_server(home: Path, users: int) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    import httpx2

    env = {**os.environ, "LLMOS_HOME": str(home)}
    tokens = {}
    for i in range(users):
        name = f"user{i}"
        out = subprocess.run(
            [*llmos_cmd(), "user", "add", name], env=env, capture_output=True, text=True, check=True
        )
        tokens[name] = out.stdout.strip()
    port = free_port()
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - kept open for the server's life
    server = subprocess.Popen(
        [*llmos_cmd(), "serve", "--port", str(port), "--max-processes", "256"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llmos serve exited: {(home / 'serve.log').read_text()[-800:]}")
        try:
            if httpx2.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return server, url, tokens
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("llmos serve did not get ready")


async def http_load(
    url: str, tokens: dict[str, str], clients: int, duration: float
) -> tuple[list[dict[str, Any]], float]:
    import httpx2
    import openai

    users = sorted(tokens)
    records: list[dict[str, Any]] = []
    limits = httpx2.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    pool = httpx2.AsyncClient(limits=limits, timeout=600)
    apis = {
        u: openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=tokens[u], max_retries=0, http_client=pool
        )
        for u in users
    }
    started = time.monotonic()
    stop_at = started + duration

    async def client(i: int) -> None:
        user = users[i % len(users)]
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            t0 = time.monotonic()
            ttft = None
            got = 0
            error = None
            try:
                stream = await apis[user].chat.completions.create(
                    model="embedded",
                    messages=prompt(i, n),  # type: ignore[arg-type]
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                        ttft = time.monotonic() - t0
                    if chunk.usage is not None:
                        got = chunk.usage.completion_tokens
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            records.append(record(user, t0, ttft, got, error))

    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.monotonic() - started
    await pool.aclose()
    return records, wall


def run_http(clients: int, users: int, duration: float, nice: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmos-bench-serve-") as tmp:
        home = Path(tmp) / "home"
        server, url, tokens = start_server(home, users)
        os.nice(nice)  # this process only: the server started above keeps its priority
        try:
            records, wall = asyncio.run(http_load(url, tokens, clients, duration))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    return summarize("http", records, wall)


# --- the in-process side --------------------------------------------------------------------------


def run_inproc(clients: int, users: int, duration: float, nice: int) -> dict[str, Any]:
    del nice  # the callers here are the kernel API's own threads: nothing to set apart
    with tempfile.TemporaryDirectory(prefix="llmos-bench-inproc-") as tmp:
        os.environ["LLMOS_HOME"] = str(Path(tmp) / "home")
        from llmos import params
        from llmos.kernel import api
        from llmos.kernel.boot import boot
        from llmos.kernel.core import Kernel
        from llmos.store.procs import ProcJournal

        system = boot()
        journal = ProcJournal.open(system.home / params.PROCS_DB_NAME)
        kernel = Kernel(
            system, policy=params.SERVE_SCHED_POLICY, max_processes=256, journal=journal
        )
        kernel.cpu(None)
        names = [f"user{i}" for i in range(users)]
        records: list[dict[str, Any]] = []
        lock = threading.Lock()
        started = time.monotonic()
        stop_at = started + duration

        def client(i: int) -> None:
            user = names[i % len(names)]
            caller = api.Caller(user)
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                t0 = time.monotonic()
                ttft = None
                error = None
                got = 0
                try:
                    reply = api.call(
                        kernel,
                        caller,
                        "chat",
                        {
                            "model": "embedded",
                            "messages": prompt(i, n),
                            "max_tokens": MAX_TOKENS,
                            "temperature": 0.0,
                        },
                    )
                    proc = api.owned(kernel, caller, int(reply["pid"]))
                    for event in api.follow_process(proc, caller):
                        if ttft is None and event.get("text"):
                            ttft = time.monotonic() - t0
                    if proc.exit_status != "ok":
                        error = f"{proc.exit_status}: {proc.error}"
                    got = int(proc.info()["generated_tokens"])
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                with lock:
                    records.append(record(user, t0, ttft, got, error))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        kernel.shutdown()
        kernel.system.close()
        journal.close()
    return summarize("in-process", records, wall)


# --- rounds -----------------------------------------------------------------------------------


def one_side(side: str, clients: int, users: int, duration: float, nice: int) -> dict[str, Any]:
    """Run one side in a fresh process and return its summary."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--side",
            side,
            "--clients",
            str(clients),
            "--users",
            str(users),
            "--duration",
            str(duration),
            "--client-nice",
            str(nice),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{side} side failed: {out.stderr[-1500:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per side")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--client-nice", type=int, default=10, help="niceness of the HTTP load generator"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (15 s, 10 clients)")
    parser.add_argument("--side", choices=["http", "in-process"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run = run_http if args.side == "http" else run_inproc
        print(json.dumps(run(args.clients, args.users, args.duration, args.client_nice)))
        return
    if args.quick:
        args.duration, args.clients, args.rounds = 15.0, 10, 1
    per_round = args.duration / args.rounds
    sides: dict[str, list[dict[str, Any]]] = {"http": [], "in-process": []}
    for _ in range(args.rounds):
        for side in ("http", "in-process"):
            summary = one_side(side, args.clients, args.users, per_round, args.client_nice)
            sides[side].append(summary)

    def total(side: str, key: str) -> float:
        return float(sum(r[key] for r in sides[side]))

    def worst(side: str, key: str) -> float:
        return float(max(r[key] for r in sides[side]))

    http_tok_s = total("http", "tokens") / total("http", "wall_s")
    inproc_tok_s = total("in-process", "tokens") / total("in-process", "wall_s")
    per_user: dict[str, int] = {}
    for r in sides["http"]:
        for u, t in r["per_user"].items():
            per_user[u] = per_user.get(u, 0) + t
    fairness = jain(list(per_user.values())) if per_user else 0.0
    ratio = http_tok_s / inproc_tok_s if inproc_tok_s else 0.0
    errors = int(total("http", "errors"))
    rows = []
    for side in ("http", "in-process"):
        for i, r in enumerate(sides[side]):
            rows.append(
                [
                    side,
                    i + 1,
                    r["requests"],
                    r["errors"],
                    r["tok_s"],
                    r["ttft_p50_s"],
                    r["ttft_p99_s"],
                    r["latency_p50_s"],
                    r["latency_p99_s"],
                    r["jain"],
                ]
            )
    print(
        table(
            [
                "side",
                "round",
                "requests",
                "errors",
                "tok/s",
                "ttft p50",
                "ttft p99",
                "latency p50",
                "latency p99",
                "jain",
            ],
            rows,
        )
    )
    first_error = next((r["first_error"] for r in sides["http"] if r["first_error"]), None)
    if first_error:
        print(f"first error: {first_error}")
    print(
        f"http / in-process tokens/s = {ratio:.3f} (goal >= {GOAL_RATIO}); "
        f"jain = {fairness:.4f} (goal >= {GOAL_JAIN}); errors = {errors} (goal 0)"
    )
    emit(
        "serve",
        {
            "clients": args.clients,
            "users": args.users,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "max_tokens": MAX_TOKENS,
            "client_nice": args.client_nice,
            "requests": int(total("http", "requests")),
            "errors": errors,
            "ttft_p50_s": max(r["ttft_p50_s"] for r in sides["http"]),
            "ttft_p99_s": worst("http", "ttft_p99_s"),
            "latency_p50_s": max(r["latency_p50_s"] for r in sides["http"]),
            "latency_p99_s": worst("http", "latency_p99_s"),
            "http_tok_s": round(http_tok_s, 2),
            "inproc_tok_s": round(inproc_tok_s, 2),
            "inproc_ttft_p99_s": worst("in-process", "ttft_p99_s"),
            "ratio": round(ratio, 3),
            "goal_ratio": GOAL_RATIO,
            "jain": round(fairness, 4),
            "goal_jain": GOAL_JAIN,
            "tokens_per_user": per_user,
            "pass": errors == 0 and ratio >= GOAL_RATIO and fairness >= GOAL_JAIN,
        },
    )


if __name__ == "__main__":
    main()
