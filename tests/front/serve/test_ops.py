"""The operations side of a live `llmos serve`: usage and cost, per-user quotas (429) and the
process table's limit (503), logs over HTTP, Prometheus metrics, readiness and the drain."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmos.store.usage import day_of, seconds_to_next_day
from tests.front.serve.conftest import Server, _server, install_summarize, sse_events
from tests.front.serve.test_rest import _spawn

PRICES = {"prompt_per_1m": 2.0, "generated_per_1m": 8.0, "cpu_hour": 36.0}


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose config.json sets prices; summarize installed for alice and bob."""
    s = _server(tmp_path_factory.mktemp("ops-home"))
    (s.home / "config.json").write_text(json.dumps({"prices": PRICES}))
    s.start()
    install_summarize(s, "alice")
    install_summarize(s, "bob")
    try:
        yield s
    finally:
        s.kill()


def _run(c: httpx2.Client, text: str = "The meeting moved to Thursday.") -> dict[str, Any]:
    pid = _spawn(c, text)
    done = c.get(f"/api/processes/{pid}/wait", params={"timeout": 120}).json()
    assert done["process"]["exit_status"] == "ok", done
    return dict(done["process"])


def _today(c: httpx2.Client, user: str) -> dict[str, Any]:
    body = c.get("/api/usage", params={"since": day_of(time.time())}).json()
    rows = [r for r in body["usage"] if r["user"] == user]
    return rows[0] if rows else {"prompt_tokens": 0, "generated_tokens": 0, "processes": 0}


def _policy(server: Server, user: str, text: str) -> None:
    path = server.home / "users" / user / "policy.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _held(c: httpx2.Client, text: str = "word " * 300) -> int:
    """A live process that stays live: spawned, then stopped (again if it ended first)."""
    for _ in range(5):
        pid = _spawn(c, text)
        c.post(f"/api/processes/{pid}/stop")
        if c.get(f"/api/processes/{pid}").json()["process"]["state"] == "stopped":
            return pid
    raise AssertionError("no process could be held stopped")


# --- usage and metering --------------------------------------------------------------------------


def test_usage_after_a_run_reflects_its_tokens_and_cost(ops: Server) -> None:
    with ops.client("alice") as c:
        before = _today(c, "alice")
        proc = _run(c)
        after = _today(c, "alice")
        body = c.get("/api/usage").json()
        assert c.get("/api/usage", params={"since": "yesterday"}).status_code == 422
    assert proc["prompt_tokens"] > 0 and proc["generated_tokens"] > 0
    assert after["prompt_tokens"] - before["prompt_tokens"] == proc["prompt_tokens"]
    assert after["generated_tokens"] - before["generated_tokens"] == proc["generated_tokens"]
    assert after["processes"] - before["processes"] == 1
    assert after["cpu_s"] > 0
    expected = (
        after["prompt_tokens"] / 1e6 * PRICES["prompt_per_1m"]
        + after["generated_tokens"] / 1e6 * PRICES["generated_per_1m"]
        + after["cpu_s"] / 3600 * PRICES["cpu_hour"]
    )
    assert after["cost"] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert body["prices"] == PRICES
    assert body["totals"]["alice"]["processes"] >= 1


def test_usage_and_logs_are_per_user(ops: Server) -> None:
    with ops.client("alice") as alice, ops.client("bob") as bob, ops.client("root") as root:
        run_id = _run(alice)["run_id"]
        _run(bob)
        bob_usage = bob.get("/api/usage").json()
        assert {r["user"] for r in bob_usage["usage"]} == {"bob"}
        assert set(bob_usage["totals"]) == {"bob"}
        assert bob.get("/api/usage", params={"user": "alice"}).status_code == 403
        runs = bob.get("/api/logs", params={"limit": 100}).json()["runs"]
        assert runs and {r["owner"] for r in runs} == {"bob"}
        assert run_id not in {r["id"] for r in runs}
        missing = bob.get(f"/api/logs/{run_id}")
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == f"no run with id {run_id!r}"
        assert bob.get("/api/logs/0123456789abcdef").json()["error"]["message"] == (
            "no run with id '0123456789abcdef'"
        )
        # an admin sees everyone, or one user
        everyone = root.get("/api/usage").json()
        assert {"alice", "bob"} <= set(everyone["totals"])
        only = root.get("/api/usage", params={"user": "alice"}).json()
        assert set(only["totals"]) == {"alice"}
        assert root.get(f"/api/logs/{run_id}").json()["run"]["owner"] == "alice"
        owners = {r["owner"] for r in root.get("/api/logs", params={"limit": 100}).json()["runs"]}
        assert {"alice", "bob"} <= owners


def test_logs_list_get_and_search_for_the_owner_only(ops: Server) -> None:
    word = "Zanzibarquokka"
    with ops.client("alice") as alice, ops.client("bob") as bob:
        run_id = _run(alice, f"The {word} festival opens on Friday.")["run_id"]
        hits = alice.get("/api/logs/search", params={"q": word}).json()["runs"]
        assert [h["id"] for h in hits] == [run_id]
        assert bob.get("/api/logs/search", params={"q": word}).json()["runs"] == []
        one = alice.get(f"/api/logs/{run_id[:12]}").json()  # a unique prefix will do
        assert one["run"]["id"] == run_id and one["run"]["status"] == "ok"
        assert any(word in str(m.get("content")) for m in one["messages"])
        assert one["messages"][-1]["role"] == "assistant"
        ok = alice.get("/api/logs", params={"program": "summarize", "status": "ok"}).json()
        assert run_id in {r["id"] for r in ok["runs"]}
        assert all(r["status"] == "ok" for r in ok["runs"])
        failed = alice.get("/api/logs", params={"status": "failed"}).json()["runs"]
        assert run_id not in {r["id"] for r in failed}
        assert alice.get("/api/logs", params={"status": "bogus"}).status_code == 422
        assert alice.get("/api/logs", params={"limit": 0}).status_code == 422


# --- quotas and admission ------------------------------------------------------------------------


def test_tokens_per_day_quota_is_429_with_retry_after_to_midnight(ops: Server) -> None:
    ops.add_user("dave")
    install_summarize(ops, "dave")
    _policy(ops, "dave", "[quota]\ntokens_per_day = 1\n")
    with ops.client("dave") as c:
        _run(c)  # nothing used yet today: admitted; it then uses more than 1 token
        r = c.post("/api/processes", json={"program": "summarize", "stdin": "again"})
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["type"] == "quota" and "tokens_per_day" in err["message"]
        assert abs(int(r.headers["retry-after"]) - seconds_to_next_day(time.time())) < 30
        assert c.get("/api/processes").status_code == 200  # only spawning is refused


def test_concurrent_process_quota_is_429(ops: Server) -> None:
    ops.add_user("erin")
    install_summarize(ops, "erin")
    _policy(ops, "erin", "[quota]\nmax_processes = 1\n")
    with ops.client("erin") as c:
        pid = _held(c)
        r = c.post("/api/processes", json={"program": "summarize", "stdin": "x"})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "quota"
        assert "max_processes" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "5"
        c.delete(f"/api/processes/{pid}")
        c.get(f"/api/processes/{pid}/wait", params={"timeout": 60})
        _run(c)  # its place is free again


def test_flooding_a_full_process_table_is_503_and_the_server_keeps_serving(
    fresh_server: Server,
) -> None:
    fresh_server.start("--max-processes", "2")
    install_summarize(fresh_server)
    with fresh_server.client("alice") as c:
        held = [_held(c), _held(c)]

        def spawn(_: int) -> httpx2.Response:
            with fresh_server.client("alice") as one:
                return one.post("/api/processes", json={"program": "summarize", "stdin": "x"})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(spawn, range(24)))
        assert {a.status_code for a in answers} == {503}
        for a in answers:
            assert a.headers["retry-after"] == "5"
            assert a.json()["error"]["type"] == "admission"
            assert "process table full" in a.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert len(c.get("/api/processes").json()["processes"]) == 2
        for pid in held:
            c.delete(f"/api/processes/{pid}")
            c.get(f"/api/processes/{pid}/wait", params={"timeout": 60})
        _run(c)  # room again
    assert "Traceback" not in fresh_server.output()


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_parse_as_prometheus_text_with_per_user_labels(ops: Server) -> None:
    with ops.client("alice") as c:
        _run(c)
    r = httpx2.get(f"{ops.url}/metrics")  # no token needed by default
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in (
        "llmos_tokens_generated",
        "llmos_tokens_prompt",
        "llmos_cpu_seconds",
        "llmos_processes_run",
        "llmos_cost",
        "llmos_processes",
        "llmos_queue_depth",
        "llmos_ready",
        "llmos_time_to_first_token_seconds",
        "llmos_http_request_duration_seconds",
    ):
        assert name in families, name

    def value(name: str, sample: str, **labels: str) -> float:
        for s in families[name].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {sample} {labels}")

    assert value("llmos_tokens_generated", "llmos_tokens_generated_total", user="alice") > 0
    assert value("llmos_cost", "llmos_cost_total", user="alice") > 0
    assert value("llmos_time_to_first_token_seconds", "llmos_time_to_first_token_seconds_count") > 0
    latency = "llmos_http_request_duration_seconds"
    assert value(latency, f"{latency}_count", route="/api/processes", method="POST", status="201")
    assert value(latency, f"{latency}_count", route="/api/processes/{pid}/wait") > 0
    assert {s.labels["state"] for s in families["llmos_processes"].samples} >= {
        "runnable",
        "running",
        "stopped",
    }
    assert value("llmos_ready", "llmos_ready") == 1


# --- readiness and the drain ---------------------------------------------------------------------


def test_readiness_is_false_while_draining(home: Path) -> None:
    from llmos.front.serve.app import create_app
    from llmos.front.serve.service import Service
    from llmos.kernel import boot
    from llmos.kernel.core import Kernel

    system = boot.boot()
    try:
        service = Service(kernel=Kernel(system), users=None, ready=True)  # type: ignore[arg-type]
        app = create_app(service)
        assert _asgi_get(app, "/readyz")[0] == 200
        service.start_draining()
        status, body = _asgi_get(app, "/readyz")
        assert status == 503 and json.loads(body) == {"ready": False, "draining": True}
        metrics = _asgi_get(app, "/metrics")[1].decode()
        assert "llmos_ready 0.0" in metrics
        assert _asgi_get(app, "/healthz")[0] == 200  # alive, just not taking work
    finally:
        system.close()


def _asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(status), body


def test_sigterm_lets_an_open_stream_finish_and_usage_survives_a_restart(
    fresh_server: Server,
) -> None:
    fresh_server.start()
    install_summarize(fresh_server)
    assert fresh_server.proc is not None
    with fresh_server.client("alice") as c:
        pid = _spawn(c, "Alpha beta gamma delta epsilon zeta eta theta iota kappa. " * 4)
        chunks: list[str] = []
        with c.stream("GET", f"/api/processes/{pid}/events") as r:
            stream = r.iter_text()
            chunks.append(next(stream))  # connected
            fresh_server.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            chunks.extend(stream)  # the process's output goes on to its end
    events = sse_events("".join(chunks))
    assert events and events[-1]["event"] == "end"
    assert events[-1]["data"]["exit_status"] == "ok"
    assert "".join(e["data"]["text"] for e in events if e["event"] == "output").strip()
    assert fresh_server.proc.wait(timeout=60) == 0
    assert time.monotonic() - started < 35  # within the drain time (params.SERVE_DRAIN_S)
    assert "stopped" in fresh_server.output()
    # the usage was written when the process ended: a new server reports it
    fresh_server.start()
    with fresh_server.client("alice") as c:
        today = _today(c, "alice")
    assert today["processes"] >= 1 and today["generated_tokens"] > 0
