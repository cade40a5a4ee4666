"""The CPU interface: the one small contract every LLM backend implements.

A CPU turns a list of chat messages into a stream of text (or tool calls). It also answers the
questions the rest of the OS needs to manage it as a resource: how big its context window is,
how many tokens a text or a conversation takes, and what it can do (constrained decoding, native
tool calls, batching, saving KV state).

Invariants:
- `generate` is a generator of `Chunk`s; the last chunk has `done=True` and carries the finish
  reason and the token counts. Closing the generator early cancels the generation.
- Messages are OpenAI-style dicts (`{"role": ..., "content": ...}`), the lingua franca of chat
  backends; `tool_calls` / `tool_call_id` follow the Chat Completions shapes.
- A CPU raises only `llmos.errors` exceptions (ModelError, BackendError, ContextOverflowError,
  OutputError); it never lets a library's exception escape.

A CPU that batches also defines here what it needs from a scheduler, as protocols that ask
nothing of the kernel: `SchedView`, the scheduling face of the process behind a request (the
kernel's `sched.policy.Entity` is one); `JobView`, a live job as the CPU shows it; and
`Dispatcher`, which the CPU's engine thread asks every step for a `Plan` (who is resident, who
is preempted and where the KV goes, who steps now). `ArrivalOrder` is the dispatcher of a CPU
no kernel configures: arrival order, as many resident as there are slots.

A CPU with `kv_state` can also hand a generation to another CPU of the same model
(`kv_model`): the caller passes a `Handoff` in the request, where the CPU keeps the reply's
tokens and a checkpoint of its KV and, when asked to `move`, a fresh one, ending the stream
with finish reason "moved"; the caller then passes the `KVState` as `resume` to the other CPU,
which loads it only if the model identity and the prompt's tokens match (else it re-prefills
from `prefix`, never continuing a foreign state).

What this module does not do: scheduling decisions beyond that default (see
`llmos.kernel.sched`), prompt rendering (see `llmos.kernel.program`), or output validation
against a schema (the caller validates).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from llmos import params

Message = dict[str, Any]


@dataclass(frozen=True)
class Capabilities:
    """What a CPU can do. The kernel picks strategies from these, never from the class."""

    grammar: bool = False  # GBNF / JSON-schema constrained sampling inside the decoder
    json_schema: bool = False  # server-side `response_format: json_schema`
    tools: bool = False  # native tool calls
    streaming: bool = True
    batching: bool = False  # many sequences decode in one step
    kv_state: bool = False  # a sequence's KV state can be saved and restored
    exact_tokens: bool = False  # tokenize() is the model's own tokenizer, not an estimate
    continuation: bool = False  # continues a reply from `GenRequest.prefix` (plain text only)


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: a name, a description it reads, a JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class SchedView(Protocol):
    """The scheduling face of the process behind a request, as a batching CPU sees it. The
    kernel sets the first three and `on_change`; the CPU sets the rest and charges tokens."""

    priority: int
    stopped: bool  # the CPU keeps its KV parked until it is continued
    killed: bool  # the CPU ends its job at the next step
    context_used: int  # tokens in the context window now
    resident: bool  # holds a KV slot now
    swapped: str | None  # "ram" or "disk" while its KV is parked
    done: bool  # its generation has ended
    prefill: tuple[int, int] | None  # (prompt tokens computed, prompt tokens) while prefilling
    on_change: Callable[[], None] | None  # the CPU's wake-up, called when a flag above changes

    @property
    def over_budget(self) -> bool: ...

    def charge(self, prompt: int = 0, generated: int = 0) -> bool:
        """Count tokens; False when the process may not have more."""
        ...


@dataclass(eq=False)
class Unscheduled:
    """The `SchedView` of a request that names no process: never stopped, no budget."""

    priority: int = params.DEFAULT_PRIORITY
    stopped: bool = False
    killed: bool = False
    context_used: int = 0
    resident: bool = False
    swapped: str | None = None
    done: bool = False
    prefill: tuple[int, int] | None = None
    on_change: Callable[[], None] | None = None
    over_budget: bool = False

    def charge(self, prompt: int = 0, generated: int = 0) -> bool:
        return True


class SeqView(Protocol):
    """A job's KV as a dispatcher sees it."""

    @property
    def resident(self) -> bool: ...  # holds a slot now

    @property
    def prefilling(self) -> bool: ...  # more than one token left to decode before sampling

    @property
    def n_past(self) -> int: ...  # tokens in its KV (what saving it would save)


class JobView(Protocol):
    """A live job on a batching CPU: its process and its KV."""

    @property
    def entity(self) -> SchedView: ...

    @property
    def seq(self) -> SeqView: ...


J = TypeVar("J", bound=JobView)
Where = Literal["ram", "disk"]


@dataclass(slots=True)
class Plan(Generic[J]):
    """One step's placement: `resident` are the jobs to hold a slot, most deserving first;
    `preempt` the resident jobs to park, each with where its KV goes."""

    resident: list[J]
    preempt: list[tuple[J, Where]]


class Dispatcher(Protocol):
    """What a batching CPU's engine thread asks each step: `plan` (under the CPU's lock), then,
    once the plan's jobs are placed, `pick`. The CPU parks KV the plan sends to "disk" in RAM
    when it has no swap directory or the disk fails."""

    def new_view(self) -> SchedView:
        """The view for a request that names no process (once, when it is submitted)."""
        ...

    def plan(self, jobs: list[J], slots: int, swap_ram: int) -> Plan[J]:
        """Placement of the live `jobs` (in arrival order) into `slots`, with `swap_ram`
        bytes of parked KV held in RAM now."""
        ...

    def pick(self, placed: list[J]) -> list[J]:
        """Of the jobs placed this step, the ones to step now."""
        ...


class ArrivalOrder:
    """The dispatcher of a CPU no kernel configures: the first jobs to arrive that are not
    stopped hold the slots; any other resident job is parked in RAM; all placed jobs step."""

    def new_view(self) -> SchedView:
        return Unscheduled()

    def plan(self, jobs: list[J], slots: int, swap_ram: int) -> Plan[J]:
        chosen = [j for j in jobs if not j.entity.stopped][:slots]
        chosen_set = set(chosen)
        return Plan(chosen, [(j, "ram") for j in jobs if j.seq.resident and j not in chosen_set])

    def pick(self, placed: list[J]) -> list[J]:
        return placed


@dataclass(frozen=True)
class KVState:
    """A reply's registers, portable to another CPU of the same model: `tokens` (the prompt's
    `n_prompt`, then every token of the reply so far; the last is not yet fed) and the KV of
    the first `n_kv` of them, in the bytes of the CPU that made it (`kv` empty when `n_kv` is
    0). `model` is that CPU's `kv_model`: no other model may load the bytes. A `Handoff` gives
    one to a pool; an embedded CPU's `export` gives one to a Ray node's driver."""

    model: str
    tokens: tuple[int, ...]
    n_prompt: int
    kv: bytes = b""
    n_kv: int = 0


class Handoff:
    """Where a CPU with `kv_state` leaves a running reply's state for its caller. The CPU sets
    `model` and `n_prompt` and extends `tokens` as tokens are sampled (shown to the caller or
    not yet: the text the caller has not received comes from the CPU that goes on); every
    `every` generated tokens (and when it parks the reply's KV in RAM) it stores a checkpoint;
    `request_move` asks it to stop the reply at its next step with a fresh checkpoint (finish
    reason "moved"). Written by the CPU's thread, read by the caller: under its lock."""

    def __init__(self, every: int = params.POOL_KV_CHECKPOINT_TOKENS) -> None:
        self.every = every
        self.lock = threading.Lock()
        self.model = ""
        self.n_prompt = 0
        self.tokens: list[int] = []
        self.kv = b""
        self.n_kv = 0
        self.move = False
        self.wake: Callable[[], None] | None = None  # the CPU's wake-up, set by the CPU

    def begin(
        self, model: str, tokens: list[int], n_prompt: int, kv: bytes = b"", n_kv: int = 0
    ) -> None:
        with self.lock:
            self.model, self.tokens, self.n_prompt = model, list(tokens), n_prompt
            self.kv, self.n_kv = kv, n_kv

    def extend(self, tokens: list[int]) -> None:
        with self.lock:
            self.tokens.extend(tokens)

    def request_move(self) -> None:
        self.move = True
        if self.wake is not None:
            self.wake()

    def checkpoint(self, tokens: list[int], kv: bytes, n_kv: int) -> None:
        with self.lock:
            self.tokens = list(tokens)
            self.kv, self.n_kv = kv, n_kv

    def state(self) -> KVState | None:
        """The reply so far, with the last checkpoint's KV; None before the CPU began it."""
        with self.lock:
            if not self.model or not self.tokens:
                return None
            n_kv = self.n_kv if self.kv and self.n_kv < len(self.tokens) else 0
            return KVState(
                self.model, tuple(self.tokens), self.n_prompt, self.kv if n_kv else b"", n_kv
            )


@dataclass
class GenRequest:
    messages: list[Message]
    max_tokens: int = params.DEFAULT_MAX_OUTPUT_TOKENS
    temperature: float = params.DEFAULT_TEMPERATURE
    top_k: int = params.DEFAULT_TOP_K
    top_p: float = params.DEFAULT_TOP_P
    repeat_penalty: float = params.DEFAULT_REPEAT_PENALTY  # 1.0 disables; CPUs may ignore it
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # never end on the model's end token (benchmarks); CPUs may ignore
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # the reply must be JSON valid against this
    tools: list[ToolSpec] | None = None
    tool_choice: str | None = None  # "auto" (default), "required" or "none", as in OpenAI's API
    entity: SchedView | None = None  # the process asking, for CPUs that schedule
    # The reply so far (a recovered process's output): a CPU with `continuation` prefills it
    # after the conversation and goes on from there; it is neither generated nor streamed
    # again, and it counts against max_tokens. Plain text only (no grammar, no tools).
    prefix: str = ""
    speculative: bool | None = None  # draft by prompt lookup; None: the CPU's default
    # A reply begun elsewhere (see `KVState`): a CPU whose `kv_model` is its `model` and whose
    # prompt tokens are its first `n_prompt` loads its KV and goes on from its tokens; `prefix`
    # still says what the caller has received. Any other CPU ignores it.
    resume: KVState | None = None
    handoff: Handoff | None = None  # where a `kv_state` CPU keeps this reply's state


@dataclass
class Chunk:
    """A piece of a streamed reply. The last one has done=True and the totals."""

    text: str = ""
    done: bool = False
    finish_reason: str | None = None  # "stop", "length", "tool_calls", "cancelled"
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CPU(abc.ABC):
    """An LLM backend. Subclasses set `name` and `capabilities`."""

    name: str = "cpu"
    capabilities: Capabilities = Capabilities()

    @property
    @abc.abstractmethod
    def n_ctx(self) -> int:
        """Context window size in tokens."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (an estimate where `capabilities.exact_tokens` is False)."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    @abc.abstractmethod
    def count_messages(self, messages: list[Message]) -> int:
        """Tokens the rendered conversation takes in the context, generation prompt included."""

    @abc.abstractmethod
    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        """Stream the reply to `request`; see the module note for the contract."""

    @property
    def kv_model(self) -> str | None:
        """The identity of the model whose KV this CPU can save and load (a hash of its
        weights); two CPUs with the same one can continue each other's replies from KV. None
        for a CPU whose KV is not reachable."""
        return None

    def describe(self) -> dict[str, Any]:
        """What `llmos models` shows for this CPU."""
        caps = self.capabilities
        return {
            "name": self.name,
            "n_ctx": self.n_ctx,
            "capabilities": [k for k, v in vars(caps).items() if v],
        }

    def schedule(self, dispatcher: Dispatcher, swap_dir: Path | None) -> None:  # noqa: B027
        """Put a batching CPU under `dispatcher`, parking KV on disk in `swap_dir` (None: RAM
        only). A CPU that does not batch ignores it: it has nothing to place."""

    def stats(self) -> dict[str, Any]:
        """Counters for `llmos top` (a new dict each call); none by default."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the backend's resources."""

    def __enter__(self) -> CPU:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(chunks: Iterator[Chunk]) -> tuple[str, Chunk]:
    """Drain a stream: the whole text and the final chunk."""
    parts: list[str] = []
    last = Chunk(done=True)
    for chunk in chunks:
        parts.append(chunk.text)
        if chunk.done:
            last = chunk
    return "".join(parts), last
