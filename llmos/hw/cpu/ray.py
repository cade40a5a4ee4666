"""A CPU on a Ray cluster: an embedded engine in a Ray actor on some node, driven from here.

When one machine is not enough, llmos runs CPUs on other machines through Ray rather than a
transport of its own. `RayCPU` is the driver: it places one `EngineHost` actor on a node of the
cluster (model spec `ray`: any node; `ray/<resource>`: a node offering that custom resource,
as `ray start --resources '{"<resource>": 1}'` declares) and answers the CPU interface through
it. The actor hosts an `EmbeddedCPU` (`llmos.hw.cpu.llama`), so everything the embedded CPU
does (batching, grammars, tools, continuation) happens on that node; the kernel stays the
control plane here and sees one more CPU. A generation streams back by polling: the actor
queues the reply's chunks, and each poll returns what is there (waiting up to
`params.RAY_POLL_WAIT_S` for the first).

KV state moves between nodes through Ray's object store. A generation started with `export`
hands, when it ends by its token limit, a `KVHandle`: a reference to the actor's `KVState`
(`llmos.hw.cpu.base`: the reply's tokens and KV bytes, tagged with the model's identity, the
SHA-256 of its GGUF file) that stays in the source node's object store until the target
fetches it. `generate(..., resume=handle)` on another `RayCPU` continues the reply from that
KV; if the target's model is not the one the state was computed with, it re-prefills the
conversation and the reply's text instead, and so does the target's engine for a state it
may not load (`llmos.hw.cpu.kvmove`): a mismatched KV is never loaded, so a continuation is
never wrong.

Invariants:
- Ray is imported only when a Ray CPU is made (`pip install 'llmos[cluster]'`); without it the
  spec is a ModelError naming the extra. No cluster at the address is a BackendError.
- A node lost mid-generation (the actor died, or did not answer a call within
  `params.RAY_CALL_TIMEOUT_S`) raises BackendError whose `emitted` holds the text this call
  streamed before the loss, so the caller can continue the reply on another CPU.
- A process's scheduling view (`GenRequest.entity`) never crosses to the node: the remote
  engine schedules its own jobs, and this driver does not batch from the kernel's side.

What this module does not do: start or stop Ray nodes (`ray start`, or any Ray cluster
launcher does), choose the node a process runs on or move it after a failure (the kernel's
pool and router do), or serve a vLLM backend (an OpenAI-compatible server, `openai/<model>`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmos import params
from llmos.errors import BackendError, LlmosError, ModelError
from llmos.hw.cpu.base import CPU, Capabilities, Chunk, GenRequest, KVState, Message

Item = Chunk | BaseException


def _ray() -> Any:
    """The `ray` module, imported on first use (it is an optional extra)."""
    try:
        import ray
    except ImportError as exc:
        raise ModelError("Ray CPUs need Ray: pip install 'llmos[cluster]'") from exc
    return ray


class _Stream:
    """One generation inside the actor: a thread drains the embedded CPU's stream into a queue
    the driver polls. The thread closes the stream (cancelling the job) once asked to stop."""

    def __init__(self) -> None:
        self.items: queue.Queue[Item] = queue.Queue()
        self.state: KVState | None = None  # set by the engine thread before the last chunk
        self.stop = False

    def keep(self, state: KVState) -> None:
        self.state = state

    def run(self, chunks: Iterator[Chunk]) -> None:
        threading.Thread(target=self._drain, args=(chunks,), daemon=True).start()

    def _drain(self, chunks: Iterator[Chunk]) -> None:
        try:
            for chunk in chunks:
                if self.stop:
                    break
                self.items.put(chunk)
        except BaseException as exc:  # an llmos error (or a bug) ends the stream as its item
            self.items.put(exc if isinstance(exc, LlmosError) else LlmosError(f"{exc!r}"))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def take(self, wait_s: float) -> list[Item]:
        """The items queued now, waiting up to `wait_s` for the first."""
        out: list[Item] = []
        try:
            out.append(self.items.get(timeout=wait_s))
            while True:
                out.append(self.items.get_nowait())
        except queue.Empty:
            pass
        return out


class EngineHost:
    """The Ray actor: one embedded CPU on one node, its generations as pollable streams."""

    def __init__(self, model_path: str | None, n_ctx: int, n_threads: int, name: str) -> None:
        from llmos.hw.cpu.llama import EmbeddedCPU, embedded_model_path

        path = Path(model_path) if model_path else embedded_model_path()
        self.cpu = EmbeddedCPU(path, name=name, n_ctx=n_ctx, n_threads=n_threads)
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        ray = _ray()
        return {
            "n_ctx": self.cpu.n_ctx,
            "model_id": self.cpu.kv_model,
            "path": str(self.cpu.engine.model_path),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    def tokenize(self, text: str) -> list[int]:
        return self.cpu.tokenize(text)

    def count_messages(self, messages: list[Message]) -> int:
        return self.cpu.count_messages(messages)

    def start(self, request: GenRequest, resume: KVState | None, export: bool) -> int:
        """Start a generation, continuing `resume` (a top-level argument, so that Ray
        fetches it from the object store; one nested in the request would stay a reference);
        its id, for `poll`, `take_state` and `cancel`."""
        if resume is not None:
            request = dataclasses.replace(request, resume=resume)
        with self._lock:
            sid = next(self._ids)
        stream = _Stream()
        with self._lock:
            self._streams[sid] = stream
        stream.run(self.cpu.generate(request, export=stream.keep if export else None))
        return sid

    def poll(self, sid: int, wait_s: float) -> list[Item]:
        """The generation's next chunks (or its error); it is forgotten once it has ended,
        unless it holds an exported state not yet taken."""
        stream = self._streams.get(sid)
        if stream is None:
            return [LlmosError(f"no generation {sid} on this engine")]
        items = stream.take(wait_s)
        last = items[-1] if items else None
        ended = isinstance(last, BaseException) or (isinstance(last, Chunk) and last.done)
        if ended and stream.state is None:
            with self._lock:
                self._streams.pop(sid, None)
        return items

    def take_state(self, sid: int) -> KVState | None:
        """The KV state an exported generation left (once); None if it left none."""
        with self._lock:
            stream = self._streams.pop(sid, None)
        return stream.state if stream is not None else None

    def cancel(self, sid: int) -> None:
        with self._lock:
            stream = self._streams.pop(sid, None)
        if stream is not None:
            stream.stop = True

    def stats(self) -> dict[str, Any]:
        return self.cpu.stats()


@functools.cache
def _host_class() -> Any:
    return _ray().remote(EngineHost)


@dataclasses.dataclass(frozen=True)
class KVHandle:
    """A reply's KV state in the cluster's object store, and what a target needs to continue
    it without fetching the state: whose model it is, and the reply so far (text and tokens)
    to re-prefill when the model differs."""

    ref: Any  # ray.ObjectRef[KVState], in the source node's object store
    model_id: str
    text: str  # the reply so far (the request's prefix included)
    reply_tokens: int  # its tokens, counted against the request's max_tokens
    source: str  # the node id of the engine that computed it


class RayCPU(CPU):
    """An embedded engine in a Ray actor on a node of the cluster. See the module note."""

    capabilities = Capabilities(
        grammar=True,
        tools=True,
        streaming=True,
        batching=False,  # the node's engine batches its own jobs; the kernel gates requests
        kv_state=True,
        exact_tokens=True,
        continuation=True,
    )

    def __init__(
        self,
        resource: str | None = None,
        *,
        address: str | None = None,
        model_path: Path | None = None,
        n_ctx: int = params.EMBEDDED_N_CTX,
        n_threads: int = params.RAY_ENGINE_THREADS,
    ) -> None:
        ray = _ray()
        self.name = f"{params.RAY_CPU_PREFIX}/{resource}" if resource else params.RAY_CPU_PREFIX
        address = address or os.environ.get(params.ENV_RAY_ADDRESS) or params.RAY_DEFAULT_ADDRESS
        if not ray.is_initialized():
            _check_reachable(self.name, address)
            try:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            except Exception as exc:
                raise BackendError(
                    f"{self.name}: cannot join the Ray cluster at {address}: {_line(exc)}"
                ) from exc
        options: dict[str, Any] = {
            "num_cpus": 0,
            "max_concurrency": params.RAY_ACTOR_CONCURRENCY,
        }
        if resource:
            if resource not in ray.cluster_resources():
                raise ModelError(
                    f"{self.name}: no node of the Ray cluster offers resource '{resource}' "
                    f"(start one with: ray start --resources '{{\"{resource}\": 1}}')"
                )
            options["resources"] = {resource: params.RAY_RESOURCE_SHARE}
        self.resource = resource
        self._ray = ray
        self._actor = (
            _host_class()
            .options(**options)
            .remote(str(model_path) if model_path else None, n_ctx, n_threads, self.name)
        )
        self._info: dict[str, Any] = self._call(
            self._actor.info.remote(), params.RAY_START_TIMEOUT_S, "start"
        )
        self.node_id: str = self._info["node_id"]
        self.model_id: str = self._info["model_id"]
        self.kv_resumes = self.reprefills = 0

    # --- calls to the actor --------------------------------------------------------------------
    def _call(self, ref: Any, timeout: float, what: str, emitted: str = "") -> Any:
        """`ray.get` of one actor call; a lost node or actor is a BackendError (carrying
        `emitted`), an llmos error raised in the actor is raised here as itself."""
        ray = self._ray
        exc_mod = ray.exceptions
        try:
            return ray.get(ref, timeout=timeout)
        except exc_mod.GetTimeoutError as exc:
            raise BackendError(
                f"{self.name}: its Ray actor did not answer {what} within {timeout:g} s "
                "(node lost or overloaded)",
                emitted=emitted,
            ) from exc
        except exc_mod.RayActorError as exc:
            raise BackendError(
                f"{self.name}: its Ray node or actor was lost during {what}: {_line(exc)}",
                emitted=emitted,
            ) from exc
        except exc_mod.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, LlmosError):
                raise cause from None
            raise BackendError(f"{self.name}: {what} failed on its node: {_line(exc)}") from exc
        except exc_mod.RayError as exc:
            raise BackendError(f"{self.name}: Ray failed during {what}: {_line(exc)}") from exc

    # --- the CPU interface ---------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return int(self._info["n_ctx"])

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._call(
            self._actor.tokenize.remote(text), params.RAY_CALL_TIMEOUT_S, "tokenize"
        )
        return tokens

    def count_messages(self, messages: list[Message]) -> int:
        return int(
            self._call(
                self._actor.count_messages.remote(messages),
                params.RAY_CALL_TIMEOUT_S,
                "count_messages",
            )
        )

    def generate(
        self,
        request: GenRequest,
        *,
        resume: KVHandle | None = None,
        export: Callable[[KVHandle], None] | None = None,
    ) -> Iterator[Chunk]:
        """Stream the reply to `request` from the node. `resume`: continue the reply a
        `KVHandle` holds (its text stands for the request's prefix; max_tokens still counts
        the whole reply); from its KV when this engine runs the same model and may load it,
        else re-prefilled from the conversation and the reply's text. `export`: if the reply
        ends by its token limit, a `KVHandle` of its KV is passed to this callable before the
        final chunk."""
        remote = dataclasses.replace(request, entity=None)
        state_ref = None
        base_text, base_tokens = request.prefix, 0
        if resume is not None:
            base_text = resume.text
            remote = dataclasses.replace(remote, prefix=resume.text)
            if resume.model_id == self.model_id:
                state_ref = resume.ref
                base_tokens = resume.reply_tokens
                self.kv_resumes += 1
            else:
                self.reprefills += 1
        if export is not None and state_ref is None and base_text:
            base_tokens = self.count_tokens(base_text)
        sid = self._call(
            self._actor.start.remote(remote, state_ref, export is not None),
            params.RAY_CALL_TIMEOUT_S,
            "start of a generation",
        )
        streamed: list[str] = []
        finished = False
        try:
            while True:
                items = self._call(
                    self._actor.poll.remote(sid, params.RAY_POLL_WAIT_S),
                    params.RAY_CALL_TIMEOUT_S,
                    "a generation",
                    emitted="".join(streamed),
                )
                for item in items:
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                    streamed.append(item.text)
                    if item.done:
                        finished = True
                        if export is not None and item.finish_reason == "length":
                            export(
                                KVHandle(
                                    ref=self._actor.take_state.remote(sid),
                                    model_id=self.model_id,
                                    text=base_text + "".join(streamed),
                                    reply_tokens=base_tokens + item.completion_tokens,
                                    source=self.node_id,
                                )
                            )
                        elif export is not None:
                            self._actor.cancel.remote(sid)  # nothing to keep
                    yield item
                    if item.done:
                        return
        finally:
            if not finished:
                # A node that is gone has nothing left to cancel.
                with contextlib.suppress(Exception):
                    self._actor.cancel.remote(sid)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(node=self.node_id, path=self._info["path"])
        return info

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kv_resumes": self.kv_resumes, "reprefills": self.reprefills}
        try:
            out.update(self._call(self._actor.stats.remote(), params.RAY_CALL_TIMEOUT_S, "stats"))
        except BackendError:
            out["lost"] = True
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone with its node
            self._ray.kill(self._actor)


def _check_reachable(name: str, address: str) -> None:
    """BackendError unless the cluster at `address` answers a TCP connect within
    `params.RAY_CONNECT_TIMEOUT_S` (Ray's own client waits minutes, logging, for a dead one).
    "auto" is the cluster last started on this machine; a Ray Client address is not checked."""
    if address.startswith("ray://"):
        return
    from ray._private.services import canonicalize_bootstrap_address

    try:
        where = canonicalize_bootstrap_address(address)
    except Exception as exc:
        raise BackendError(f"{name}: bad Ray cluster address {address!r}: {_line(exc)}") from exc
    if where is None:
        raise BackendError(
            f"{name}: no Ray cluster runs on this machine (start one with: ray start --head, "
            f"or set {params.ENV_RAY_ADDRESS})"
        )
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host, int(port)), params.RAY_CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise BackendError(
            f"{name}: no Ray cluster answers at {where}: {getattr(exc, 'strerror', None) or exc} "
            f"(start one with: ray start --head, or set {params.ENV_RAY_ADDRESS})"
        ) from exc


def _line(exc: BaseException) -> str:
    """The first line of an exception's text (Ray's carry tracebacks and context blocks)."""
    text = str(exc).strip().splitlines()
    return text[0][: params.OPENAI_ERROR_MAX_CHARS] if text else type(exc).__name__
