"""Persistence across a crash: `llmos serve` killed with SIGKILL mid-stream and started again
on the same home. Judged on what a client gets: every token it had received is kept, the
interrupted process resumes under its pid and a reconnecting stream (`Last-Event-ID`) gets the
rest of it, a process that had sent nothing runs again, and pids are never reused."""

from __future__ import annotations

from tests.front.serve.conftest import Server, sse_events

STORY = """---
description: A long story.
config:
  temperature: 0
  maxOutputTokens: 400
---
Write a long story about {{input}}.
"""


def test_a_killed_server_loses_no_token_and_resumes_queued_work(fresh_server: Server) -> None:
    server = fresh_server
    # one process at a time, first come first served: the second waits with no output
    server.start("--policy", "fifo", "--max-resident", "1")
    with server.client("alice") as c:
        assert c.put("/api/programs/story", json={"source": STORY}).status_code == 200
        first = c.post("/api/processes", json={"program": "story", "stdin": "a lighthouse"})
        queued = c.post("/api/processes", json={"program": "story", "stdin": "a ship"})
        pid, waiting = first.json()["pid"], queued.json()["pid"]
        received = ""
        last_id = None
        with c.stream("GET", f"/api/processes/{pid}/events") as r:
            buffer = ""
            for chunk in r.iter_text():
                buffer += chunk
                outputs = [e for e in sse_events(buffer) if e["event"] == "output"]
                if len(outputs) >= 5:
                    received = "".join(e["data"]["text"] for e in outputs)
                    last_id = outputs[-1]["id"]
                    server.kill()  # SIGKILL, mid-stream
                    break
    assert last_id is not None and received

    server.start("--policy", "fifo", "--max-resident", "1")  # same home, same port
    assert "recovered 2 processes" in server.output()
    with server.client("alice") as c:
        rest = sse_events(
            c.get(f"/api/processes/{pid}/events", headers={"Last-Event-ID": last_id}).text
        )
        assert rest[-1]["event"] == "end"
        # greedy, alone on the CPU before and after: its new run reproduces what was sent
        assert rest[-1]["data"]["exit_status"] == "ok", rest[-1]["data"]
        after = "".join(e["data"]["text"] for e in rest if e["event"] == "output")
        assert after.strip()  # it went on past the crash
        whole = c.get(f"/api/processes/{pid}/wait", params={"timeout": 5}).json()
        assert whole["process"]["owner"] == "alice"
        assert whole["text"] == received + after  # nothing the client saw is missing
        assert whole["text"].startswith(received)
        # the queued process had sent nothing: it ran again, under its pid and owner
        done = c.get(f"/api/processes/{waiting}/wait", params={"timeout": 240}).json()
        assert done["process"]["exit_status"] == "ok" and done["process"]["owner"] == "alice"
        assert done["text"].strip()
        # pids go on above the old ones
        fresh = c.post("/api/processes", json={"program": "story", "stdin": "a cat"}).json()
        assert fresh["pid"] > max(pid, waiting)
        c.delete(f"/api/processes/{fresh['pid']}")
    with server.client("bob") as c:
        assert c.get(f"/api/processes/{pid}").status_code == 404
    assert "Traceback" not in server.output()
