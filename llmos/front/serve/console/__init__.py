"""The web console of `llmos serve`: the LLM computer seen from a browser, behind the same
tokens as the REST API.

Pages (server-rendered Jinja2 templates under `templates/`, one small committed ES module and a
stylesheet under `static/`; nothing is built at install time):

    GET  /console/login      the login form: paste your bearer token
    POST /console/login      checks the token; sets the session cookie; 303 to /console
    POST /console/logout     clears the cookie
    GET  /console            the console: scheduler, processes, the selected process (its
                             live output, its context window drawn as memory, its syscall
                             timeline, approve/deny/answer), run a program, usage, log search
    GET  /console/static/... the script and stylesheet

The page's script reads JSON from `/console/api/...`: the same kernel operations as the REST
API (`ps`, `top`, `get`, `context`, `steps`, `exec`, `approve`, `deny`, `kill`, `answer`,
`programs.list`, `usage`, `logs.search`), called as the user the cookie names, and a process's
output as the same resumable SSE (`llmos.front.serve.sse`).

Invariants:
- Every page and API route but the login form needs a valid token: the cookie
  (params.CONSOLE_COOKIE: HttpOnly, SameSite=Strict, path /console) holds the token itself and
  is checked against the user store on every request, so revoking a token logs its console
  out. A page without one redirects to the login form; an API call answers 401.
- CSRF: a POST (login included) must carry an `Origin` header naming this server
  (scheme://host), else 403; with SameSite=Strict no other site's request carries the cookie.
- A wrong token is one clear line on the login form (401), never a hint of which tokens exist.
- Pages carry a Content-Security-Policy that allows only this server's own files (no inline
  script) and forbids framing.

What this does not do: hold any state of its own (everything comes from the kernel API), or
serve the REST API (`rest`), which takes bearer tokens only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

from llmos import params
from llmos.errors import AuthError, RequestError
from llmos.front.serve import sse
from llmos.front.serve.auth import UNAUTHORIZED
from llmos.front.serve.errors import HTTPError
from llmos.kernel import api
from llmos.store.users import User

HERE = Path(__file__).parent
PATH = "/console"
LOGIN_ERROR = (
    "That token is not valid: it is unknown or revoked. "
    "Paste a token that llmos user add or llmos user rotate printed."
)
# Only this server's own script, styles and forms; never framed by another site.
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(("html",)),
    undefined=jinja2.StrictUndefined,
)

router = APIRouter(prefix=PATH, include_in_schema=False)
static = StaticFiles(directory=HERE / "static")


def _render(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(path=PATH, **values)
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": CSP}
    return HTMLResponse(html, status_code=status, headers=headers)


def _user(request: Request) -> User | None:
    token = request.cookies.get(params.CONSOLE_COOKIE, "")
    if not token:
        return None
    user: User | None = request.app.state.service.users.authenticate(token)
    if user is not None:
        request.state.user = user.name  # for the access log
    return user


def _same_origin(request: Request) -> None:
    """403 unless the request's Origin is this server (the CSRF check of every POST)."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if not origin or not host or origin != f"{request.url.scheme}://{host}":
        raise HTTPError(403, "cross-origin request refused: the console only posts to itself")


def console_caller(request: Request) -> api.Caller:
    """The caller the console's cookie names (FastAPI dependency); 401 without one."""
    user = _user(request)
    if user is None:
        raise AuthError(UNAUTHORIZED)
    if request.method == "POST":
        _same_origin(request)
    return api.Caller(user.name, user.admin, lambda: False)


CallerDep = Annotated[api.Caller, Depends(console_caller)]


def _call(request: Request, caller: api.Caller, op: str, payload: dict[str, Any]) -> Any:
    service = request.app.state.service
    if op == "exec" and service.draining:
        raise HTTPError(503, "the service is shutting down; try again shortly", "draining")
    return api.call(service.kernel, caller, op, payload)


# --- pages -------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request) -> Response:
    return _render("login.html", error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    _same_origin(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    user = request.app.state.service.users.authenticate(token) if token else None
    if user is None:
        return _render("login.html", status=401, error=LOGIN_ERROR)
    request.state.user = user.name
    page = RedirectResponse(PATH, status_code=303)
    page.set_cookie(
        params.CONSOLE_COOKIE,
        token,
        max_age=params.CONSOLE_COOKIE_MAX_AGE_S,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return page


@router.post("/logout")
def logout(request: Request) -> Response:
    _same_origin(request)
    page = RedirectResponse(f"{PATH}/login", status_code=303)
    page.delete_cookie(params.CONSOLE_COOKIE, path=PATH)
    return page


@router.get("")
def console(request: Request) -> Response:
    user = _user(request)
    if user is None:
        return RedirectResponse(f"{PATH}/login", status_code=303)
    settings = {
        "poll_ms": params.CONSOLE_POLL_MS,
        "reconnect_ms": params.CONSOLE_RECONNECT_MS,
    }
    return _render("console.html", user=user.name, admin=user.admin, settings=json.dumps(settings))


# --- the page's data ---------------------------------------------------------------------------


@router.get("/api/processes")
def processes(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "ps", {"all": True})


@router.get("/api/top")
def top(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "top", {})


@router.get("/api/processes/{pid}")
def process(request: Request, caller: CallerDep, pid: int) -> Any:
    """One process with its context window and its syscall timeline."""
    reply = _call(request, caller, "get", {"pid": pid})
    reply["context"] = _call(request, caller, "context", {"pid": pid})
    timeline = _call(request, caller, "steps", {"pid": pid})
    reply["steps"] = timeline["steps"]
    reply["approval"] = timeline["approval"]
    return reply


@router.get("/api/processes/{pid}/events", response_class=StreamingResponse)
def events(
    request: Request,
    caller: CallerDep,
    pid: int,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    start = sse.resume_point(last_event_id, after)
    frames = sse.stream(request.app.state.service.kernel, caller, pid, start)
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class Answer(api.Request):
    text: str


@router.post("/api/processes/{pid}/answer")
def answer(request: Request, caller: CallerDep, pid: int, body: Answer) -> Any:
    return _call(request, caller, "answer", {"pid": pid, "text": body.text})


# after /answer: /{action} would match it too
@router.post("/api/processes/{pid}/{action}")
def act(request: Request, caller: CallerDep, pid: int, action: str) -> Any:
    if action not in ("approve", "deny", "kill", "stop", "cont"):
        raise RequestError(f"unknown action {action!r}: use approve, deny, kill, stop or cont")
    return _call(request, caller, action, {"pid": pid})


class Run(api.Request):
    program: str
    input: str = ""
    model: str = ""


@router.post("/api/run", status_code=201)
def run(request: Request, caller: CallerDep, body: Run) -> Any:
    payload: dict[str, Any] = {"program": body.program}
    if body.input:
        payload["stdin"] = body.input
    if body.model:
        payload["model"] = body.model
    return _call(request, caller, "exec", payload)


@router.get("/api/programs")
def programs(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "programs.list", {})


@router.get("/api/usage")
def usage(request: Request, caller: CallerDep) -> Any:
    return _call(request, caller, "usage", {})


@router.get("/api/logs")
def logs(request: Request, caller: CallerDep, q: str = "") -> Any:
    if q.strip():
        return _call(
            request, caller, "logs.search", {"query": q, "limit": params.CONSOLE_LOGS_LIMIT}
        )
    return _call(request, caller, "logs.list", {"limit": params.CONSOLE_LOGS_LIMIT})
