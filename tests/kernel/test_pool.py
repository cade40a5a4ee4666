"""A pool of CPUs as one CPU: placement, failover (fresh and by re-prefill), the breaker, the
brownout fallback, waiting while every CPU is down, metering per CPU and user, migrate.

Deterministic decisions use the scripted CPU; the failover across kinds kills a real
llama-cpp-python server mid-generation and continues on the embedded engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos import config as config_mod
from llmos import params
from llmos.errors import BackendError, ConfigError, ModelError, NotFoundError
from llmos.hw.cpu.base import CPU, Chunk, GenRequest
from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path
from llmos.hw.cpu.openai import OpenAICPU
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel import cpus
from llmos.kernel.pool import MemberSpec, PoolCPU, PoolSpec
from llmos.kernel.sched.policy import Entity
from llmos.kernel.sched.router import RoutePolicy
from tests.servers import llama_server


def ask(text: str, entity: Entity | None = None, **kw: object) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], entity=entity, **kw)  # type: ignore[arg-type]


def pool_of(
    members: dict[str, CPU],
    *,
    fallback: tuple[str, ...] = (),
    prices: dict[str, float] | None = None,
    wait_down_s: float = params.POOL_WAIT_DOWN_S,
    policies: dict[str, RoutePolicy] | None = None,
) -> PoolCPU:
    spec = PoolSpec(
        "p",
        tuple(MemberSpec(n, n, (prices or {}).get(n, 0.0), n in fallback) for n in members),
        wait_down_s,
        policies or {},
    )
    return PoolCPU(spec, members.__getitem__)


def text_of(chunks: Iterator[Chunk]) -> tuple[str, Chunk]:
    parts, last = [], Chunk()
    for c in chunks:
        parts.append(c.text)
        last = c
    return "".join(parts), last


LONG = " ".join(f"w{i}" for i in range(3 * params.ROUTER_BLOCK_TOKENS))


def test_same_prefix_goes_where_it_was_computed() -> None:
    a, b = ScriptedCPU(["one", "two", "three"]), ScriptedCPU(["four", "five"])
    pool = pool_of({"a": a, "b": b})
    assert text_of(pool.generate(ask(LONG + " first")))[0] == "one"  # a tie: a, by name
    # b holds nothing of LONG; a holds its blocks, so the same prefix goes to a again
    assert text_of(pool.generate(ask(LONG + " second")))[0] == "two"
    assert "affinity" in pool.placements["a"]
    # an unrelated prompt: both hold nothing of it, a has no load either: a by name; with
    # a request in flight on a, b takes it
    pool.members["a"].in_flight = 1000
    assert text_of(pool.generate(ask("something else")))[0] == "four"
    assert len(a.requests) == 2 and len(b.requests) == 1


def test_a_failing_cpu_hands_its_request_to_another_and_opens_its_breaker() -> None:
    bad = ScriptedCPU([BackendError("server gone")] * 5)
    good = ScriptedCPU(["fine"] * 5)
    pool = pool_of({"a": bad, "b": good})
    owner = Entity(pid=7, owner="alice")
    text, last = text_of(pool.generate(ask("hi", owner)))
    assert text == "fine" and last.done and pool.failovers == 1
    stats = pool.stats()
    assert stats["members"]["a"]["state"] == "open" and stats["members"]["a"]["failures"] == 1
    assert "server gone" in stats["members"]["a"]["error"]
    # while its breaker is open, a is not tried
    text_of(pool.generate(ask("again", owner)))
    assert len(bad.requests) == 1 and len(good.requests) == 2


def test_breaker_lets_a_trial_through_after_it_has_been_open() -> None:
    now = [0.0]
    bad = ScriptedCPU([BackendError("x")] * 3 + ["back"])
    good = ScriptedCPU(["ok"] * 10)
    spec = PoolSpec("p", (MemberSpec("a", "a"), MemberSpec("b", "b")))
    pool = PoolCPU(spec, {"a": bad, "b": good}.__getitem__, clock=lambda: now[0])
    for _ in range(3):
        pool.members["a"].open_until = 0.0  # a trial each time
        text_of(pool.generate(ask("q")))
    assert pool.members["a"].failures == params.POOL_BREAKER_FAILURES
    assert pool.stats()["members"]["a"]["state"] == "open"
    now[0] += params.POOL_BREAKER_OPEN_S - 0.1
    assert pool.stats()["members"]["a"]["state"] == "open"
    now[0] += 0.2
    assert text_of(pool.generate(ask("q")))[0] == "back"  # the trial succeeds: closed again
    assert pool.members["a"].failures == 0 and pool.stats()["members"]["a"]["state"] == "up"


def test_brownout_falls_back_and_says_so() -> None:
    main = ScriptedCPU([BackendError("down")])
    spare = ScriptedCPU(["from the spare"])
    pool = pool_of({"main": main, "spare": spare}, fallback=("spare",))
    e = Entity(pid=3)
    text, _ = text_of(pool.generate(ask("q", e)))
    assert text == "from the spare"
    assert pool.stats()["brownouts"] == 1
    assert e.progress is not None and "brownout" in e.progress and "spare" in e.progress


def test_every_cpu_down_waits_visibly_then_fails_clearly() -> None:
    a = ScriptedCPU([BackendError("a broke")])
    pool = pool_of({"a": a}, wait_down_s=0.5)
    pool.members["a"].open_until = time.monotonic() + 60
    e = Entity(pid=4)
    seen: list[str | None] = []

    def watch() -> None:
        for _ in range(5):
            time.sleep(0.05)
            seen.append(e.progress)

    t = threading.Thread(target=watch)
    t.start()
    started = time.monotonic()
    with pytest.raises(
        BackendError, match=r"pool .p.: every CPU is down or refused for 0.5s \(a: down\)"
    ):
        text_of(pool.generate(ask("q", e)))
    t.join()
    assert time.monotonic() - started >= 0.5
    assert any(s and "waiting for a CPU of pool p" in s for s in seen)
    assert a.requests == []


def test_a_waiting_process_that_is_killed_ends_cancelled() -> None:
    pool = pool_of({"a": ScriptedCPU()}, wait_down_s=60)
    pool.members["a"].open_until = time.monotonic() + 60
    e = Entity(pid=5)
    threading.Timer(0.2, lambda: setattr(e, "killed", True)).start()
    _, last = text_of(pool.generate(ask("q", e)))
    assert last.done and last.finish_reason == "cancelled"


def test_metering_per_cpu_and_user_with_prices() -> None:
    a, b = ScriptedCPU(["a b c"] * 3), ScriptedCPU(["d e"] * 3)
    pool = pool_of({"a": a, "b": b}, prices={"a": 2.0, "b": 0.5})
    text_of(pool.generate(ask("x y", Entity(owner="alice"))))  # a tie: the cheaper, b
    pool.members["b"].in_flight = 10_000
    text_of(pool.generate(ask("z", Entity(owner="bob"))))
    usage = {(u["cpu"], u["user"]): u for u in pool.stats()["usage"]}
    bob = usage[("a", "bob")]
    assert bob["requests"] == 1 and bob["generated_tokens"] == 3
    assert bob["prompt_tokens"] == a.count_messages(a.requests[0].messages)
    assert bob["cost"] == pytest.approx((bob["prompt_tokens"] + 3) / 1000 * 2.0)
    assert usage[("b", "alice")]["generated_tokens"] == 2 and ("a", "alice") not in usage


def test_user_policy_keeps_a_user_off_dear_cpus() -> None:
    cheap, dear = ScriptedCPU(["cheap"] * 2), ScriptedCPU(["dear"] * 2)
    pool = pool_of(
        {"cheap": cheap, "dear": dear},
        prices={"cheap": 0.1, "dear": 5.0},
        policies={"alice": RoutePolicy(max_price_per_1k=1.0)},
    )
    pool.members["cheap"].in_flight = 10_000  # busy: bob goes to dear, alice waits in line
    assert text_of(pool.generate(ask("q", Entity(owner="bob"))))[0] == "dear"
    assert text_of(pool.generate(ask("q", Entity(owner="alice"))))[0] == "cheap"


def test_migrate_pins_a_process_and_refuses_an_unknown_cpu() -> None:
    a, b = ScriptedCPU(["a"] * 3), ScriptedCPU(["b"] * 3)
    pool = pool_of({"a": a, "b": b})
    with pytest.raises(NotFoundError, match=r"pool 'p' has no CPU 'zz' \(it has a, b\)"):
        pool.migrate(9, "zz")
    pool.migrate(9, "b")
    assert text_of(pool.generate(ask("q", Entity(pid=9))))[0] == "b"
    assert text_of(pool.generate(ask("q", Entity(pid=8))))[0] == "a"


def test_a_cpu_that_cannot_load_is_named_and_the_rest_serve(tmp_path: Path) -> None:
    raw = {
        "pools": {
            "p": {
                "cpus": [
                    {"name": "gone", "model": str(tmp_path / "missing.gguf")},
                    {"name": "ok", "model": "scripted-ok"},
                ]
            }
        }
    }
    conf = config_mod.parse(tmp_path / "config.json", raw)
    built = ScriptedCPU(["served"])

    def build(spec: str) -> CPU:
        if spec == "scripted-ok":
            return built
        return cpus._build(spec, conf)

    from llmos.kernel.pool import spec_of

    pool = PoolCPU(spec_of("p", conf.pools["p"]), build)
    members = pool.stats()["members"]
    assert (
        members["gone"]["state"] == "failed to load" and "missing.gguf" in members["gone"]["error"]
    )
    assert text_of(pool.generate(ask("q")))[0] == "served"
    # nothing loads: one error naming each
    raw["pools"]["p"]["cpus"] = raw["pools"]["p"]["cpus"][:1]
    conf = config_mod.parse(tmp_path / "config.json", raw)
    with pytest.raises(ModelError, match=r"pool 'p': no CPU can be used \(gone: .*missing.gguf"):
        PoolCPU(spec_of("p", conf.pools["p"]), build)


def test_unknown_pool_is_a_model_error(tmp_path: Path) -> None:
    conf = config_mod.parse(tmp_path / "config.json", {"pools": {}})
    with pytest.raises(ModelError, match="unknown pool 'nope'"):
        cpus._build("pool/nope", conf)


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ([], "'pools' must map"),
        ({"p": {"cpus": []}}, "pools.p must be an object with a non-empty 'cpus'"),
        ({"p": {"cpus": [{"name": "a"}]}}, r"pools.p.cpus\[0\] needs a 'name' and a 'model'"),
        ({"p": {"cpus": [{"name": "a", "model": "pool/q"}]}}, "cannot be a pool"),
        ({"p": {"cpus": [{"name": "a", "model": "m", "n": 0}]}}, r"\.n must be 1\.\."),
        ({"p": {"cpus": [{"name": "a", "model": "m", "price_per_1k": -1}]}}, "number >= 0"),
        ({"p": {"cpus": [{"name": "a", "model": "m"}] * 2}}, "two CPUs are named 'a'"),
        ({"p": {"cpus": [{"name": "a", "model": "m", "gpu": 1}]}}, "unknown key 'gpu'"),
        (
            {"p": {"cpus": [{"name": "a", "model": "m"}], "policies": {"u": {"cpus": ["b"]}}}},
            "policies.u.cpus must list CPUs of the pool",
        ),
    ],
)
def test_bad_pool_config_is_one_clear_error(pools: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        config_mod.parse(tmp_path / "config.json", {"pools": pools})


def test_n_instances_are_named_and_counted(tmp_path: Path) -> None:
    conf = config_mod.parse(
        tmp_path / "config.json",
        {"pools": {"p": {"cpus": [{"name": "smol", "model": "embedded", "n": 2}]}}},
    )
    assert [c["name"] for c in conf.pools["p"]["cpus"]] == ["smol-1", "smol-2"]


# --- real parts: a llama-cpp-python server killed mid-generation, the embedded engine ----------


@pytest.mark.slow
def test_a_server_killed_mid_reply_continues_on_the_embedded_cpu(embedded: EmbeddedCPU) -> None:
    started: list[subprocess.Popen[bytes]] = []
    with llama_server(embedded_model_path(), n_ctx=2048, alias="smol", started=started) as url:
        remote = OpenAICPU("smol", url, None, n_ctx=2048, timeout=30)
        pool = pool_of({"remote": remote, "local": embedded}, fallback=("local",))
        request = ask("Write a long story about a dragon who lives in a castle.", max_tokens=120)
        request.temperature = 0.0
        pieces: list[str] = []
        final = None
        killed_after = ""
        for chunk in pool.generate(request):
            pieces.append(chunk.text)
            if len("".join(pieces)) > 20 and not killed_after:
                killed_after = "".join(pieces)
                os.killpg(started[0].pid, signal.SIGKILL)
            if chunk.done:
                final = chunk
        remote.close()
    text = "".join(pieces)
    assert killed_after and final is not None and final.finish_reason in {"stop", "length"}
    assert text.startswith(killed_after)  # nothing the caller saw is taken back or repeated
    assert len(text) > len(killed_after)  # and the reply went on elsewhere
    stats = pool.stats()
    assert stats["failovers"] == 1 and stats["members"]["remote"]["failures"] == 1
    used = {u["cpu"] for u in stats["usage"]}
    assert used == {"remote", "local"}
    assert final.completion_tokens > pool.count_tokens(text) // 2


@pytest.mark.slow
def test_two_embedded_engines_share_work_by_prefix(embedded: EmbeddedCPU) -> None:
    second = EmbeddedCPU(embedded_model_path(), name="embedded-2")
    try:
        pool = pool_of({"e1": embedded, "e2": second})
        system = "You are a terse assistant. " * 12
        first = ask(system + "Say one.", max_tokens=4)
        first.messages.insert(0, {"role": "system", "content": system})
        text_of(pool.generate(first))
        again = ask("Say two.", max_tokens=4)
        again.messages.insert(0, {"role": "system", "content": system})
        text_of(pool.generate(again))
        usage = {u["cpu"]: u["requests"] for u in pool.stats()["usage"]}
        assert usage == {"e1": 2}  # the same system prompt went back where it was cached
        assert "affinity" in pool.placements["e1"]
    finally:
        second.close()


def test_json_config_example_in_the_module_note_parses(tmp_path: Path) -> None:
    note = config_mod.__doc__ or ""
    start = note.index("    {\n")
    end = note.index("\n    }\n", start) + 6
    conf = config_mod.parse(tmp_path / "c.json", json.loads(note[start:end]))
    assert [c["name"] for c in conf.pools["local"]["cpus"]] == ["smol-1", "smol-2", "gpu", "spare"]
