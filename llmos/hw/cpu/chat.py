"""The chat template: how a conversation becomes the embedded model's prompt tokens.

A GGUF carries its model's chat template (the Jinja text under `tokenizer.chat_template`);
llama-cpp-python's `Jinja2ChatFormatter` renders it, with the model's own begin and end
tokens. A GGUF without one gets ChatML, the most common convention.

Invariants:
- The template's own text may hold special tokens (role markers); message contents never do:
  they are tokenized without parsing special tokens, so text a user or a document supplies
  cannot forge a role marker. (A template that rewrites contents, none known in practice, is
  laid out whole, and its contents are then not protected.)
- A template that fails to render is one LlmosError naming the CPU.

What this module does not do: decide what the conversation holds (the kernel's context does),
or sample the reply (the engine does).
"""

from __future__ import annotations

import secrets

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmos.errors import LlmosError
from llmos.hw.cpu.base import Message
from llmos.hw.cpu.engine import Engine

# Used when a GGUF carries no chat template: ChatML, the most common convention.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplate:
    """The chat template of `engine`'s model, for the CPU called `name` (in its errors)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        template = engine.meta("tokenizer.chat_template") or CHATML_TEMPLATE
        bos = self._special_text("tokenizer.ggml.bos_token_id")
        eos = self._special_text("tokenizer.ggml.eos_token_id")
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def _special_text(self, key: str) -> str:
        value = self.engine.meta(key)
        return self.engine.token_text(int(value)) if value and value.isdigit() else ""

    def render(self, messages: list[Message]) -> str:
        """The conversation as the template lays it out, generation prompt included."""
        try:
            return self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        except Exception as exc:  # a Jinja template error in the model's own template
            raise LlmosError(f"{self.name}: chat template failed: {exc}") from exc

    def tokens(self, messages: list[Message]) -> list[int]:
        """Tokens of the conversation as the template lays it out (see the module note)."""
        nonce = secrets.token_hex(8)
        marks = [f"\x00{nonce}:{i}\x00" for i in range(len(messages))]
        layout = self.render(
            [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
        )
        tokens: list[int] = []
        pos = 0
        for message, mark in zip(messages, marks, strict=True):
            at = layout.find(mark, pos)
            if at < 0:  # the template rewrote the content: lay it out whole instead
                return self.engine.tokenize(self.render(messages), special=True)
            tokens += self.engine.tokenize(layout[pos:at], special=True)
            tokens += self.engine.tokenize(str(message.get("content") or ""), special=False)
            pos = at + len(mark)
        tokens += self.engine.tokenize(layout[pos:], special=True)
        return tokens
