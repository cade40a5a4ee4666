"""The REST API of a live `llmos serve`, through plain HTTP: authentication, isolation between
users, processes and their resumable event streams, programs, and bad input."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2

from tests.conftest import run_llmos
from tests.front.serve.conftest import Server, sse_events


def _spawn(c: httpx2.Client, text: str = "The meeting moved to Thursday.") -> int:
    r = c.post("/api/processes", json={"program": "summarize", "stdin": text})
    assert r.status_code == 201, r.text
    return int(r.json()["pid"])


# --- authentication ------------------------------------------------------------------------------


def test_every_api_request_needs_a_valid_token(server: Server) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer llmos_not-a-real-token"},
    ):
        r = httpx2.get(f"{server.url}/api/processes", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        err = r.json()["error"]
        assert err["type"] == "auth" and "\n" not in err["message"]
    # health needs no token (a load balancer asks it)
    assert httpx2.get(f"{server.url}/healthz").json() == {"ok": True}


def test_rotated_and_revoked_tokens_stop_working(server: Server) -> None:
    carol = server.add_user("carol")
    with server.client("carol") as c:
        assert c.get("/api/processes").status_code == 200
    rotated = run_llmos("user", "rotate", "carol", home=server.home)
    assert rotated.returncode == 0
    new = rotated.stdout.strip()
    assert new != carol and new.startswith("llmos_")
    old = httpx2.get(f"{server.url}/api/processes", headers={"Authorization": f"Bearer {carol}"})
    assert old.status_code == 401
    fresh = httpx2.get(f"{server.url}/api/processes", headers={"Authorization": f"Bearer {new}"})
    assert fresh.status_code == 200
    assert run_llmos("user", "revoke", "carol", home=server.home).returncode == 0
    gone = httpx2.get(f"{server.url}/api/processes", headers={"Authorization": f"Bearer {new}"})
    assert gone.status_code == 401


def test_tokens_are_stored_hashed(server: Server) -> None:
    raw = (server.home / "users.db").read_bytes()
    for token in server.tokens.values():
        assert token.encode() not in raw
    assert oct((server.home / "users.db").stat().st_mode & 0o777) == "0o600"


def test_user_command_errors_are_one_line(server: Server) -> None:
    dup = run_llmos("user", "add", "alice", home=server.home)
    assert dup.returncode == 20 and dup.stderr.count("\n") == 1 and "already exists" in dup.stderr
    bad = run_llmos("user", "add", "Bob@corp", home=server.home)
    assert bad.returncode == 20 and "invalid user name" in bad.stderr
    missing = run_llmos("user", "revoke", "nobody", home=server.home)
    assert missing.returncode == 20 and "no user named" in missing.stderr


# --- processes and isolation -------------------------------------------------------------------


def test_a_process_runs_and_streams_its_output(server: Server) -> None:
    with server.client("alice") as c:
        pid = _spawn(c)
        r = c.get(f"/api/processes/{pid}/events")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1]["event"] == "end"
        assert events[-1]["data"]["exit_status"] == "ok"
        text = "".join(e["data"]["text"] for e in events if e["event"] == "output")
        assert text.strip()
        waited = c.get(f"/api/processes/{pid}/wait", params={"timeout": 5}).json()
        assert waited["text"] == text and waited["process"]["owner"] == "alice"
        ids = [int(e["id"]) for e in events if e["event"] == "output"]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_resuming_with_last_event_id_misses_and_repeats_nothing(server: Server) -> None:
    with server.client("alice") as c:
        pid = _spawn(c, "Alpha beta gamma delta epsilon zeta eta theta iota kappa.")
        full = sse_events(c.get(f"/api/processes/{pid}/events").text)
        outputs = [e for e in full if e["event"] == "output"]
        text = "".join(e["data"]["text"] for e in outputs)
        for cut in range(len(outputs)):
            last_id = outputs[cut]["id"]
            before = "".join(e["data"]["text"] for e in outputs[: cut + 1])
            resumed = sse_events(
                c.get(f"/api/processes/{pid}/events", headers={"Last-Event-ID": last_id}).text
            )
            after = "".join(e["data"]["text"] for e in resumed if e["event"] == "output")
            assert before + after == text
            assert resumed[-1]["event"] == "end"
        bad = c.get(f"/api/processes/{pid}/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 422


def test_a_stream_that_starts_before_the_output_gets_all_of_it(server: Server) -> None:
    with server.client("alice") as c:
        pid = _spawn(c)
        pieces: list[str] = []
        with c.stream("GET", f"/api/processes/{pid}/events") as r:
            raw = "".join(r.iter_text())
        pieces = [e["data"]["text"] for e in sse_events(raw) if e["event"] == "output"]
        assert "".join(pieces) == c.get(f"/api/processes/{pid}/wait").json()["text"]


def test_another_users_pid_answers_exactly_like_a_missing_one(server: Server) -> None:
    with server.client("alice") as alice, server.client("bob") as bob:
        pid = _spawn(alice)
        missing = bob.get("/api/processes/999999")
        assert missing.status_code == 404
        for method, path in (
            ("GET", f"/api/processes/{pid}"),
            ("GET", f"/api/processes/{pid}/events"),
            ("GET", f"/api/processes/{pid}/wait"),
            ("DELETE", f"/api/processes/{pid}"),
            ("POST", f"/api/processes/{pid}/stop"),
            ("POST", f"/api/processes/{pid}/approve"),
            ("GET", f"/api/processes/{pid}/context"),
            ("GET", f"/api/processes/{pid}/steps"),
        ):
            r = bob.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["message"] == f"no process with pid {pid}"
        assert all(
            p["owner"] == "bob" for p in bob.get("/api/processes?all=true").json()["processes"]
        )
        # bob cannot run alice's own program either: programs are per user
        r = bob.post("/api/processes", json={"program": "summarize", "stdin": "x"})
        assert r.status_code == 404 and "no installed program named 'summarize'" in r.text
        alice.get(f"/api/processes/{pid}/wait")
    with server.client("root") as root:
        assert root.get(f"/api/processes/{pid}").json()["process"]["owner"] == "alice"


def test_context_window_and_timeline_of_a_process(server: Server) -> None:
    with server.client("alice") as c:
        pid = _spawn(c, "The cat sat on the mat.")
        c.get(f"/api/processes/{pid}/wait")
        ctx = c.get(f"/api/processes/{pid}/context").json()
        proc = c.get(f"/api/processes/{pid}").json()["process"]
        assert ctx["limit"] == proc["context_limit"] > 0
        assert 0 < ctx["used"] <= ctx["limit"] and ctx["tainted"] is False
        kinds = [s["kind"] for s in ctx["segments"]]
        assert "input" in kinds and all(s["resident"] for s in ctx["segments"])
        (given,) = [s for s in ctx["segments"] if s["kind"] == "input"]
        assert "The cat sat on the mat." in given["preview"] and given["label"] == "trusted"
        steps = c.get(f"/api/processes/{pid}/steps").json()
        # a program without devices has no syscalls to show, and waits on nothing
        assert steps == {
            "pid": pid,
            "state": "exited",
            "steps": [],
            "approval": None,
            "question": None,
        }
        assert c.get("/api/processes/999999/context").status_code == 404


def test_the_console_is_served_with_its_files(server: Server) -> None:
    with httpx2.Client(base_url=server.url) as c:
        r = c.get("/console")
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        login = c.get("/console/login")
        assert login.status_code == 200 and '<input id="token" name="token"' in login.text
        assert "default-src 'self'" in login.headers["content-security-policy"]
        script = c.get("/console/static/console.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "new EventSource(" in script.text
        assert c.get("/console/static/console.css").status_code == 200
        assert c.get("/console/api/top").status_code == 401  # a bearer token is not a session
    assert f"web console at {server.url}/console" in server.output()


def test_kill_stop_and_cont(server: Server) -> None:
    with server.client("alice") as c:
        pid = _spawn(c, "word " * 200)
        assert c.post(f"/api/processes/{pid}/stop").status_code == 200
        state = c.get(f"/api/processes/{pid}").json()["process"]["state"]
        assert state in ("stopped", "exited")
        if state == "stopped":
            reniced = c.post(f"/api/processes/{pid}/renice", json={"priority": 30})
            assert reniced.status_code == 200, reniced.text
            assert reniced.json()["old_priority"] == 20
            assert reniced.json()["process"]["priority"] == 30
            moved = c.post(f"/api/processes/{pid}/migrate", json={"cpu": "smol-2"})
            assert moved.status_code == 422 and "not on a pool" in moved.text, moved.text
        assert c.post(f"/api/processes/{pid}/cont").status_code == 200
        answered = c.post(f"/api/processes/{pid}/answer", json={"text": "x"})
        assert answered.status_code == 404 and "not waiting for an answer" in answered.text
        killed = c.delete(f"/api/processes/{pid}")
        assert killed.status_code == 200
        done = c.get(f"/api/processes/{pid}/wait", params={"timeout": 30}).json()
        assert done["process"]["exit_status"] in ("killed", "ok")


def test_a_slow_stream_does_not_hold_up_others(server: Server) -> None:
    """A client that opens a stream and never reads it does not delay another user."""
    with server.client("alice") as alice, server.client("bob") as bob:
        pid = _spawn(alice, "one two three")
        stalled = httpx2.Client(base_url=server.url, headers=alice.headers, timeout=60)
        r = stalled.send(stalled.build_request("GET", f"/api/processes/{pid}/events"), stream=True)
        started = time.monotonic()
        assert bob.get("/api/processes").status_code == 200
        assert bob.get("/readyz").status_code == 200
        assert time.monotonic() - started < 10
        r.close()
        stalled.close()


# --- programs ----------------------------------------------------------------------------------


def test_programs_install_list_show_and_remove(server: Server) -> None:
    source = "---\ndescription: Echo a word.\n---\nSay {{input}}.\n"
    with server.client("bob") as bob, server.client("root") as root:
        assert bob.put("/api/programs/say", json={"source": source}).status_code == 200
        names = {p["name"]: p["scope"] for p in bob.get("/api/programs").json()["programs"]}
        assert names.get("say") == "user"
        shown = bob.get("/api/programs/say").json()["program"]
        assert shown["source"] == source and shown["description"] == "Echo a word."
        # only an admin installs for everyone
        r = bob.put("/api/programs/shared", json={"source": source, "system": True})
        assert r.status_code == 403
        assert (
            root.put("/api/programs/shared", json={"source": source, "system": True}).status_code
            == 200
        )
        everyone = {p["name"]: p["scope"] for p in bob.get("/api/programs").json()["programs"]}
        assert everyone.get("shared") == "system"
        assert bob.delete("/api/programs/say").status_code == 200
        assert bob.get("/api/programs/say").status_code == 404
        assert root.delete("/api/programs/shared?system=true").status_code == 200


def test_program_names_and_models_are_never_paths(server: Server) -> None:
    with server.client("alice") as c:
        for name in ("..", "../etc", "a/b", ".hidden", "%2e%2e"):
            r = c.put(f"/api/programs/{name}", json={"source": "hi"})
            assert r.status_code in (404, 422), (name, r.status_code)
        r = c.post("/api/processes", json={"program": "/etc/passwd"})
        assert r.status_code == 422
        r = c.post("/api/processes", json={"program": "summarize", "model": "/etc/shadow.gguf"})
        assert r.status_code == 422 and "not one this service offers" in r.text
        bad = "---\nmodel: /tmp/x.gguf\n---\nhi\n"
        assert c.put("/api/programs/evil", json={"source": bad}).status_code == 422
        broken = c.put("/api/programs/broken", json={"source": "---\nbad: [\n---\nx"})
        assert broken.status_code == 422 and "\n" not in broken.json()["error"]["message"]
    assert not (server.home / "users" / "alice" / "programs" / "evil.prompt").exists()


# --- bad input ---------------------------------------------------------------------------------


def test_malformed_and_huge_bodies_get_clear_errors(server: Server) -> None:
    with server.client("alice") as c:
        r = c.post(
            "/api/processes", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
        r = c.post("/api/processes", json={"program": "summarize", "owner": "bob"})
        assert r.status_code == 422 and "owner" in r.json()["error"]["message"]
        r = c.post("/api/processes", json={"program": 5})
        assert r.status_code == 422
        huge = b'{"program": "summarize", "stdin": "' + b"x" * (5 * 1024 * 1024) + b'"}'
        r = c.post("/api/processes", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]

        # without a Content-Length (chunked), the body is counted as it arrives
        def chunks():  # type: ignore[no-untyped-def]
            yield b'{"program": "summarize", "stdin": "'
            for _ in range(6):
                yield b"x" * 1024 * 1024
            yield b'"}'

        r = c.post("/api/processes", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get("/api/nothing-here").status_code == 404
    assert "Traceback" not in server.output()


def test_openapi_spec_lists_the_api(server: Server) -> None:
    spec = httpx2.get(f"{server.url}/openapi.json").json()
    for path in ("/api/processes", "/api/processes/{pid}/events", "/api/programs/{name}"):
        assert path in spec["paths"]


def test_access_log_is_one_json_line_per_request_without_tokens(server: Server) -> None:
    with server.client("alice") as c:
        c.get("/api/processes")
    lines = [ln for ln in server.output().splitlines() if ln.startswith("{")]
    assert lines
    record = json.loads(lines[-1])
    assert {"method", "path", "status", "user", "ms"} <= set(record)
    for token in server.tokens.values():
        assert token not in server.output()


def test_sigterm_drains_and_exits(fresh_server: Server) -> None:
    fresh_server.start()
    with fresh_server.client("alice") as c:
        assert c.get("/readyz").status_code == 200
    assert fresh_server.stop() == 0
    assert "stopped" in fresh_server.output()
    assert not (fresh_server.home / "kernel.pid").exists()


def test_one_kernel_per_home(fresh_server: Server) -> None:
    fresh_server.start()
    done = run_llmos("serve", "--port", "0", home=fresh_server.home, timeout=60)
    assert done.returncode == 13 and "already running" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_client_that_disconnects_leaves_its_process_running(server: Server) -> None:
    """Closing an event stream ends the stream, not the process: it runs to its end, and the
    client reconnects with the last id it saw to get the rest."""
    with server.client("alice") as c:
        pid = _spawn(c, "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda.")
        first: dict[str, Any] | None = None
        with c.stream("GET", f"/api/processes/{pid}/events") as r:
            buffer = ""
            for chunk in r.iter_text():
                buffer += chunk
                outputs = [e for e in sse_events(buffer) if e["event"] == "output"]
                if outputs:
                    first = outputs[0]
                    break  # hang up after the first piece
        assert first is not None
        done = c.get(f"/api/processes/{pid}/wait", params={"timeout": 60}).json()
        assert done["process"]["exit_status"] == "ok"
        rest = sse_events(
            c.get(f"/api/processes/{pid}/events", headers={"Last-Event-ID": first["id"]}).text
        )
        after = "".join(e["data"]["text"] for e in rest if e["event"] == "output")
        assert first["data"]["text"] + after == done["text"]
