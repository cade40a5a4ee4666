"""A deterministic scenario for the context and timeline views: a program whose every `calc`
call waits for approval and whose context pages out between two of them.

`grow` (context limit 400 tokens; the scripted CPU counts one token per word) is given about
250 words; its first call is small, its second carries a long expression (about 240 words in
the model's turn), so the third step's fit must page out; the fourth step answers. The user
policy `APPROVE_CALC` makes each call wait in `waiting_approval` until approved or denied.
"""

from __future__ import annotations

import json

from llmos.hw.cpu.base import ToolCall
from llmos.hw.cpu.scripted import Reply
from llmos.kernel.security.policy import UserPolicy

GROW = """---
name: grow
description: Adds numbers, one approved call at a time.
tools: [calc]
llmos.context: 400
llmos.max_steps: 8
---
{{role "user"}}
Add the numbers. {{input}}
"""
INPUT = " ".join(f"word{i}" for i in range(250))
LONG = " + ".join(["1"] * 120)
ANSWER = "The sums are 2, 120 and 4."
APPROVE_CALC = UserPolicy(approve=["calc"])


def call(i: int, expression: str) -> list[ToolCall]:
    return [ToolCall(f"call-{i}", "calc", json.dumps({"expression": expression}))]


def replies() -> list[Reply]:
    """What the scripted CPU answers, step by step."""
    return [call(1, "1 + 1"), call(2, LONG), call(3, "2 + 2"), ANSWER]
