"""The web console end to end: a real headless browser (Debian's `chromium`, driven by
Playwright; never a browser download) against the real application of `llmos serve` (slow: a
browser, and the real model for the stream test).

The server runs in this test process (uvicorn serving `create_app` around a kernel of its own)
so that a scripted CPU can be put under the kernel where a run must be deterministic (paging
between approvals, a failing backend, a stream paced to be cut in the middle); the stream test
runs on the real embedded model. A dropped connection is a real one: the server is stopped and
started again on the same port while the page streams, and the kernel (with the process) goes
on.

Each test saves screenshots under its tmp dir and checks them: a PNG of the viewport's size,
not empty, and the page elements they must show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from llmos import params
from llmos.errors import LlmosError
from llmos.front.serve.app import create_app
from llmos.front.serve.service import Service
from llmos.hw.cpu.base import Chunk, GenRequest, ToolCall
from llmos.hw.cpu.scripted import ScriptedCPU
from llmos.kernel.boot import boot
from llmos.kernel.core import Kernel
from llmos.store.users import UserStore
from tests import approvals
from tests.front.serve.conftest import SUMMARIZE, free_port
from tests.uvicorn_thread import UvicornThread

try:
    from playwright import sync_api as playwright_api
except ImportError:  # in CI (scripts/test.sh installs the test extras) a missing one fails
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)
pytestmark = pytest.mark.slow

VIEWPORT = {"width": 1280, "height": 1000}
TIMEOUT_MS = 60_000
FAILING = """---
name: broken
description: A program whose CPU fails.
---
Say something about {{input}}.
"""
ASKER = """---
name: asker
description: Asks the user one question.
tools: [ask]
---
{{role "user"}}
Plan a trip. {{input}}
"""
NOTES = """---
name: notes
description: Reads the user's notes.
tools: [fs]
---
{{role "user"}}
Read my notes. {{input}}
"""
PACED_TEXT = " ".join(f"w{i}" for i in range(40))


class PacedCPU(ScriptedCPU):
    """A scripted CPU that takes `delay` seconds per word, so a stream can be cut midway."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__()
        self.name = name
        self.delay = delay

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        for chunk in super().generate(request):
            if chunk.text:
                time.sleep(self.delay)
            yield chunk


@dataclass
class Live:
    """The in-process server: its kernel, users, scripted CPUs and uvicorn."""

    home: Path
    kernel: Kernel
    service: Service
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    cpus: dict[str, ScriptedCPU] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.http = UvicornThread(create_app(self.service), self.port, lifespan="on")
        self.http.start()

    def stop(self) -> None:
        self.http.stop()

    def install(self, user: str, name: str, source: str) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        r = httpx2.put(f"{self.url}/api/programs/{name}", json={"source": source}, headers=headers)
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("console-home")
    old = os.environ.get("LLMOS_HOME")
    os.environ["LLMOS_HOME"] = str(home)
    try:
        kernel = Kernel(boot(), policy=params.SERVE_SCHED_POLICY)
        users = UserStore.open(home / params.USERS_DB_NAME)
        service = Service(kernel=kernel, users=users)
        live = Live(home, kernel, service, free_port())
        live.tokens = {name: users.add(name) for name in ("alice", "bob")}
        kernel.user_policy = lambda owner: approvals.APPROVE_CALC
        for cpu in (ScriptedCPU(), ScriptedCPU(), PacedCPU("paced", 0.1)):
            cpu.name = cpu.name if isinstance(cpu, PacedCPU) else f"scripted{len(live.cpus)}"
            kernel.add_cpu(cpu)
            live.cpus[cpu.name] = cpu
        service.ready = True
        live.start()
        live.install("alice", "summarize", SUMMARIZE)
        live.install("alice", "grow", approvals.GROW)
        live.install("alice", "broken", FAILING)
        live.install("alice", "asker", ASKER)
        live.install("alice", "notes", NOTES)
        yield live
        live.stop()
        kernel.shutdown()
        users.close()
        kernel.system.close()
    finally:
        if old is None:
            os.environ.pop("LLMOS_HOME", None)
        else:
            os.environ["LLMOS_HOME"] = old


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "chromium not found: run scripts/install-test-servers.sh as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    playwright_api.expect.set_options(timeout=TIMEOUT_MS)  # a loaded machine is slow
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert errors == []  # the page's script never threw


def login(page: Any, live: Live, user: str = "alice") -> None:
    page.goto(f"{live.url}/console")
    page.get_by_label("Token").fill(live.tokens[user])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live.url}/console")
    expect = playwright_api.expect
    expect(page.locator("#user")).to_have_text(user)
    expect(page.locator("#run-program option[value=grow]")).to_have_count(1)


def run(page: Any, program: str, text: str, model: str = "") -> int:
    page.get_by_label("Program", exact=True).select_option(program)
    page.get_by_label("Input", exact=True).fill(text)
    page.get_by_label("Model (optional)").fill(model)
    page.get_by_role("button", name="Run", exact=True).click()
    heading = page.locator("#detail-h")
    playwright_api.expect(heading).to_contain_text(f": {program}")
    return int(heading.inner_text().split()[1].rstrip(":"))


def shot(page: Any, path: Path, *selectors: str) -> Path:
    """A viewport screenshot, checked: a PNG of the viewport's size, and every selector's
    element on the page and visible."""
    for selector in selectors:
        assert page.locator(selector).first.is_visible(), f"{selector} is not visible"
    page.evaluate("window.scrollTo(0, 0)")  # the viewport from the top
    page.screenshot(path=str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(data) > 10_000  # a drawn page, not a blank one
    return path


def test_a_wrong_token_is_a_clear_login_error(page: Any, live: Live, tmp_path: Path) -> None:
    page.goto(f"{live.url}/console")
    assert page.url == f"{live.url}/console/login"  # no cookie: the login form
    page.get_by_label("Token").fill("llmos_not-a-token")
    with page.expect_response(f"{live.url}/console/login") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 401
    alert = page.get_by_role("alert")
    playwright_api.expect(alert).to_contain_text("That token is not valid")
    assert page.get_by_label("Token").get_attribute("aria-invalid") == "true"
    shot(page, tmp_path / "login-error.png", "#login-error", "#token")
    # and the API refuses a page without the cookie
    r = httpx2.get(f"{live.url}/console/api/processes")
    assert r.status_code == 401


def test_run_a_program_and_watch_its_stream(page: Any, live: Live, tmp_path: Path) -> None:
    login(page, live)
    text = "The cat sat on the mat all afternoon because the sun was warm."
    pid = run(page, "summarize", text)  # the real embedded model
    expect = playwright_api.expect
    expect(page.locator("#stream-status")).to_have_text("(ended: ok)", timeout=120_000)
    out = page.locator("#stream").inner_text()
    proc = live.kernel.table.get(pid)
    assert out.strip() and out == proc.text  # the page shows exactly what it generated
    expect(page.locator(f"#proc-rows tr[data-pid='{pid}'] td.state")).to_have_text("exited (ok)")
    expect(page.locator("#proc-error")).to_be_hidden()
    # its context window: the program's text and the input, resident, trusted
    expect(page.locator("#context-bar .seg.resident")).not_to_have_count(0)
    expect(page.locator("#context-summary")).to_contain_text(f"of {proc.context_limit} tokens")
    expect(page.locator("#context-summary")).to_contain_text("0 paged out")
    expect(page.locator("#scheduler")).to_contain_text("live")
    # every form field has a label a screen reader announces
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter((e) => e.type !== 'hidden' && e.labels.length === 0).map((e) => e.id)"
    )
    assert unlabelled == []
    # the run is in the logs, and a search finds it
    page.get_by_label("Search runs").fill("afternoon")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#log-results li.run-ok").first).to_contain_text("summarize")
    expect(page.locator("#usage-chart svg rect.bar")).not_to_have_count(0, timeout=15_000)
    shot(page, tmp_path / "stream.png", "#stream", "#context-bar", "#log-results", "#usage svg")


def test_approve_waiting_syscalls_and_watch_the_context_page(
    page: Any, live: Live, tmp_path: Path
) -> None:
    live.cpus["scripted0"].queue(*approvals.replies())
    login(page, live)
    pid = run(page, "grow", approvals.INPUT, model="scripted0")
    expect = playwright_api.expect
    summary, timeline = page.locator("#context-summary"), page.locator("#timeline")
    approve = page.get_by_role("button", name="Approve")
    # 1st call waits: nothing paged yet, the row says what it waits on
    expect(page.locator("#waiting-what")).to_contain_text('calc {"expression": "1 + 1"}')
    expect(page.locator(f"#proc-rows tr[data-pid='{pid}']")).to_contain_text("approval: calc")
    expect(page.locator("#scheduler")).to_contain_text("1 waiting")
    expect(summary).to_contain_text(" 0 paged out")
    expect(timeline.locator("li.pending")).to_contain_text("waiting for approval")
    shot(page, tmp_path / "waiting.png", "#approve", "#deny", "#context-bar", "#timeline")
    approve.click()
    # the call ran and is in the timeline; the 2nd (long) call waits
    expect(timeline.locator("li.step-syscall")).to_have_count(1)
    expect(timeline.locator("li.step-syscall").first).to_contain_text("calc")
    expect(timeline.locator("li.step-syscall").first).to_contain_text("approved by alice")
    expect(timeline.locator("li.step-syscall").first).to_contain_text("ok: {'result': '2'")
    expect(page.locator("#waiting-what")).to_contain_text('calc {"expression": "1 + 1 + 1')
    expect(summary).to_contain_text(" 0 paged out")
    free = page.locator("#context-bar .free")
    width = "(e) => e.getBoundingClientRect().width"  # 0 when full: bounding_box() is then None
    before = free.evaluate(width)  # the long call filled the window
    drawn = page.locator("#context-bar").screenshot()
    approve.click()
    # the 3rd step's fit paged out: the bar shows paged-out segments in its swap row
    expect(page.locator("#waiting-what")).to_contain_text('calc {"expression": "2 + 2"}')
    expect(page.locator("#context-bar .seg.paged")).not_to_have_count(0)
    pages = live.kernel.table.get(pid).memory.pages_out
    assert pages > 0
    expect(summary).not_to_contain_text(" 0 paged out")
    after = free.evaluate(width)  # paging freed room in the window
    assert after > before
    assert page.locator("#context-bar").screenshot() != drawn  # and the drawing changed
    paged = shot(page, tmp_path / "paged.png", "#context-bar .seg.paged", "#timeline")
    target = os.environ.get("LLMOS_CONSOLE_SCREENSHOT")  # docs/console.png is taken this way
    if target:
        shutil.copyfile(paged, target)
    approve.focus()  # the last one from the keyboard
    page.keyboard.press("Enter")
    expect(page.locator("#stream-status")).to_have_text("(ended: ok)")
    expect(page.locator("#stream")).to_have_text(approvals.ANSWER)
    expect(timeline.locator("li.step-syscall")).to_have_count(3)
    expect(timeline.locator("li.step-text")).to_have_count(1)
    expect(timeline.locator("li.pending")).to_have_count(0)
    expect(page.locator("#waiting")).to_be_hidden()
    shot(page, tmp_path / "done.png", "#timeline", "#context-bar", "#processes")


def test_deny_a_waiting_syscall(page: Any, live: Live, tmp_path: Path) -> None:
    live.cpus["scripted1"].queue(approvals.call(1, "5 + 5"), "Not allowed, then.")
    login(page, live)
    run(page, "grow", "Five and five.", model="scripted1")
    expect = playwright_api.expect
    expect(page.locator("#waiting-what")).to_contain_text('calc {"expression": "5 + 5"}')
    page.get_by_role("button", name="Deny").click()
    expect(page.locator("#stream-status")).to_have_text("(ended: ok)")
    step = page.locator("#timeline li.step-syscall")
    expect(step).to_have_class(re.compile(r"\bfailed\b"))
    expect(step).to_contain_text("denied by alice")
    expect(step).to_contain_text("error:")
    shot(page, tmp_path / "denied.png", "#timeline")


def test_untrusted_text_is_marked_in_the_context(page: Any, live: Live, tmp_path: Path) -> None:
    root = live.kernel.user_root("alice")
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("buy milk\n")
    read = [ToolCall("r1", "fs", json.dumps({"op": "read", "path": "notes.txt"}))]
    live.cpus["scripted1"].queue(read, "You need milk.")
    login(page, live)
    run(page, "notes", "today", model="scripted1")
    expect = playwright_api.expect
    expect(page.locator("#stream-status")).to_have_text("(ended: ok)")
    expect(page.locator("#context-summary")).to_contain_text("tainted by fs:notes.txt")
    expect(page.locator("#context-bar .seg.untrusted.kind-syscall")).to_have_count(1)
    expect(page.locator("#context-bar .seg.trusted.kind-input")).not_to_have_count(0)
    shot(page, tmp_path / "tainted.png", "#context-bar .seg.untrusted")


def test_answer_a_process_that_asks(page: Any, live: Live, tmp_path: Path) -> None:
    question = [ToolCall("q1", "ask", json.dumps({"question": "Which city?"}))]
    live.cpus["scripted1"].queue(question, "Booked.")
    login(page, live)
    pid = run(page, "asker", "In June.", model="scripted1")
    expect = playwright_api.expect
    expect(page.locator("#waiting-what")).to_have_text("It asks: Which city?")
    expect(page.locator(f"#proc-rows tr[data-pid='{pid}']")).to_contain_text("Which city?")
    expect(page.get_by_role("button", name="Approve")).to_be_hidden()
    shot(page, tmp_path / "asks.png", "#answer-form")
    page.get_by_label("Your answer").fill("Oslo")
    page.get_by_label("Your answer").press("Enter")
    expect(page.locator("#stream-status")).to_have_text("(ended: ok)")
    step = page.locator("#timeline li.step-syscall")
    expect(step).to_contain_text("ask(")
    expect(step).to_contain_text("Oslo")
    expect(page.locator("#waiting")).to_be_hidden()


def test_a_failing_program_shows_its_error_where_it_ran(
    page: Any, live: Live, tmp_path: Path
) -> None:
    live.cpus["scripted1"].queue(LlmosError("the backend went away"))
    login(page, live)
    pid = run(page, "broken", "anything", model="scripted1")
    expect = playwright_api.expect
    error = page.locator("#detail #proc-error")
    expect(error).to_contain_text("the backend went away")
    expect(page.locator("#stream-status")).to_have_text("(ended: failed)")
    expect(page.locator(f"#proc-rows tr[data-pid='{pid}'] td.state")).to_have_text(
        "exited (failed)"
    )
    shot(page, tmp_path / "failed.png", "#proc-error")
    # a run the kernel refuses is an error at the form
    run_error = page.locator("#run-error")
    page.get_by_label("Model (optional)").fill("no-such-model")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(run_error).to_contain_text("Could not run broken: unknown model 'no-such-model'")


def test_a_dropped_stream_reconnects_and_catches_up(page: Any, live: Live, tmp_path: Path) -> None:
    paced = live.cpus["paced"]
    paced.queue(PACED_TEXT)
    login(page, live)
    pid = run(page, "broken", "x", model="paced")
    expect = playwright_api.expect
    stream = page.locator("#stream")
    expect(stream).to_contain_text("w3")
    live.stop()  # every connection drops; the kernel and the process go on
    expect(page.locator("#stream-status")).to_contain_text("reconnecting")
    time.sleep(1.0)  # it generates while the page is cut off
    live.start()
    expect(page.locator("#stream-status")).to_have_text("(ended: ok)", timeout=30_000)
    assert stream.inner_text() == PACED_TEXT == live.kernel.table.get(pid).text
    assert page.evaluate("window.llmosConsole.stream.reconnects") >= 1
    shot(page, tmp_path / "reconnected.png", "#stream")


def test_the_session_cookie_and_the_csrf_check(live: Live) -> None:
    token = live.tokens["bob"]
    origin = {"Origin": live.url}
    with httpx2.Client(base_url=live.url) as c:
        refused = c.post("/console/login", data={"token": token})  # no Origin: refused
        assert refused.status_code == 403 and "cross-origin" in refused.json()["error"]["message"]
        r = c.post("/console/login", data={"token": token}, headers=origin)
        assert r.status_code == 303 and r.headers["location"] == "/console"
        cookie = r.headers["set-cookie"].lower()
        for part in ("httponly", "samesite=strict", "path=/console", "max-age="):
            assert part in cookie, cookie
        assert c.get("/console/api/processes").status_code == 200
        # a state-changing call from another site is refused even with the cookie
        foreign = {"Origin": "http://evil.example"}
        r = c.post("/console/api/run", json={"program": "summarize"}, headers=foreign)
        assert r.status_code == 403
        r = c.post("/console/api/processes/1/approve")  # no Origin at all
        assert r.status_code == 403
        r = c.post("/console/api/run", json={"program": "nope"}, headers=origin)
        assert r.status_code == 404 and "no installed program named 'nope'" in r.text
        # revoking the token logs the console out
        live.service.users.revoke("bob")
        assert c.get("/console/api/processes").status_code == 401
        page = c.get("/console")
        assert page.status_code == 303 and page.headers["location"] == "/console/login"
    live.tokens["bob"] = live.service.users.rotate("bob")
