"""exec: load a program file and render it into the chat messages a CPU runs.

A program is English text in one of three formats:

- **Dotprompt** (`NAME.prompt`, canonical): YAML front matter and a Handlebars body, parsed and
  rendered by the official `dotpromptz` package. `{{role "system"}}` etc. split messages; with
  no role markers the whole text is one user message (dotprompt's own behaviour). Picoschema and
  JSON Schema inputs/outputs are compiled to JSON Schema at load time.
- **Agent Skill** (a folder holding `SKILL.md`, or that file itself): front matter `name`
  (1-64 chars of `[a-z0-9-]`, no leading/trailing/double hyphen, equal to the folder name) and
  `description` (required, <= 1024 chars); optional `license`, `compatibility`, `metadata`,
  `allowed-tools`. The body is the system message; the input is the user message and is required.
- **Markdown** (`NAME.md`): optional front matter (`name`, `description`, `model`, `config`,
  `llmos.*`, starting on line 1; other keys are kept in `Program.extra` and ignored). The body
  is the system message and the input the user message; without an input the body alone is the
  user message. The body is sent verbatim (no templating) for skills and Markdown.

Inputs: `render(inputs)` takes a dict; piped stdin is, by convention, the input named `input`
(the caller puts it there; `Program.takes_input` says whether the program accepts one). Defaults
from the front matter are merged under the given inputs, and the result is validated against the
input JSON Schema before anything is rendered.

OS settings live in namespaced front-matter keys (`llmos.max_steps: 4`), so other Dotprompt
runtimes still run the file. The nested form (`llmos: {max_steps: 4}`) is accepted too; the same
key in both forms is an error. Keys and types are `params.LLMOS_KEYS`; the settings and `config`
are checked in `llmos.kernel.programconfig`.

Invariants:
- Every failure is a `ProgramError` (the file is at fault, exit 3) or an `InputError` (the
  caller's inputs are at fault, exit 4) with a one-line message naming the file and the field;
  no exception of a library escapes `load`, `discover` or `render`.
- A loaded `Program` is fully checked: front matter, `llmos.*` keys, config types, both schemas
  (compiled and checked against the JSON Schema metaschema), defaults against the input schema,
  and the template's syntax. `render` can then fail only on inputs (or on a template that emits
  media at render time).
- Rendered messages are OpenAI-style `{"role", "content": str}` dicts, roles `system`, `user`,
  `assistant` (dotprompt's `model`); each text is stripped and empty messages are dropped.
- String inputs may not contain dotprompt's internal markers (`<<<dotprompt:`): rendered input
  text could otherwise forge new messages (an `InputError` says so).
- `render` works from any thread, with or without a running event loop in it.

What this module does not do: run a program (see the kernel), talk to a CPU, read stdin, resolve
`model` names, enforce the output schema on a reply, or resolve `tools` to devices. `toolDefs`,
partials and `{{history}}` are left to dotprompt (no partials or history are registered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from llmos import params
from llmos.errors import InputError, LlmosError, ProgramError
from llmos.hw.cpu.base import Message, ToolSpec
from llmos.kernel import dependable, dotprompt
from llmos.kernel.inputs import as_json, check_defaults, validate_inputs
from llmos.kernel.programconfig import (
    CONFIG_KEYS,
    check_config_at,
    check_str,
    check_tools,
    llmos_settings,
)

_T = TypeVar("_T")

Kind = Literal["dotprompt", "skill", "markdown", "chat"]

_SKILL_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MARKER = "<<<dotprompt:"
_OUTPUT_FORMATS = ("text", "json")


@dataclass
class Program:
    """A loaded, checked program. `render` turns inputs into chat messages."""

    name: str
    description: str
    kind: Kind
    path: Path
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    input_schema: dict[str, Any] | None = None
    input_defaults: dict[str, Any] = field(default_factory=dict)
    output_format: Literal["text", "json"] = "text"
    output_schema: dict[str, Any] | None = None
    tools: list[str] = field(default_factory=list)
    llmos: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # other front-matter keys, unchecked
    template: str = field(default="", repr=False)  # dotprompt body / skill or markdown text
    source: str = field(default="", repr=False)  # the whole file, for dotprompt rendering
    messages: list[Message] = field(default_factory=list, repr=False)  # a chat's, as given
    # Functions the caller runs itself (the OpenAI endpoint's `tools`): a call to one ends the
    # process with finish reason `tool_calls` instead of running a device (llmos.kernel.loop).
    client_tools: list[ToolSpec] = field(default_factory=list)

    @property
    def json_mode(self) -> bool:
        return self.output_format == "json"

    @property
    def priority(self) -> int:
        return int(self.llmos.get("priority", params.DEFAULT_PRIORITY))

    @property
    def max_steps(self) -> int:
        return int(self.llmos.get("max_steps", params.DEFAULT_MAX_STEPS))

    @property
    def takes_input(self) -> bool:
        """Whether an input named `input` (piped stdin, by convention) is accepted."""
        if self.kind != "dotprompt" or self.input_schema is None:
            return True
        if "input" in self.input_schema.get("properties", {}):
            return True
        return self.input_schema.get("additionalProperties", True) is not False

    def gen_settings(self) -> dict[str, Any]:
        """GenRequest keyword arguments from `config` (only the keys the program sets)."""
        out: dict[str, Any] = {}
        for key, (kwarg, _types, _what) in CONFIG_KEYS.items():
            if key in self.config:
                value = self.config[key]
                out[kwarg] = list(value) if isinstance(value, list) else value
        if "max_output_tokens" in self.llmos:
            out["max_tokens"] = self.llmos["max_output_tokens"]
        if "speculative" in self.llmos:
            out["speculative"] = bool(self.llmos["speculative"])
        return out

    def window_needed(self, inputs: dict[str, Any] | None = None) -> int | None:
        """At most how many tokens one run of this program puts in the context window: its
        rendered messages in UTF-8 bytes (a token is at least one byte), its output limit,
        params.MESSAGE_OVERHEAD_GUESS tokens of chat template a message and
        params.WINDOW_MARGIN_TOKENS more. None when a run can grow past what its
        text shows (devices, tools, memory, shared segments, paging or context settings) or
        its inputs do not render."""
        if self.tools or self.client_tools or set(self.llmos) - params.WINDOW_FIXED_KEYS:
            return None
        try:
            messages = self.messages or self.render(inputs)
        except LlmosError:
            return None
        size = sum(len(str(m.get("content") or "").encode()) for m in messages)
        out = self.gen_settings().get("max_tokens") or params.DEFAULT_MAX_OUTPUT_TOKENS
        overhead = params.MESSAGE_OVERHEAD_GUESS * len(messages) + params.WINDOW_MARGIN_TOKENS
        return size + int(out) + overhead

    def render(self, inputs: dict[str, Any] | None = None) -> list[Message]:
        """Validate `inputs` (defaults merged under them) and render the chat messages."""
        data = {**self.input_defaults, **(inputs or {})}
        for key, value in data.items():
            if isinstance(value, str) and _MARKER in value:
                raise InputError(
                    f"{self.path}: input '{key}' contains the reserved text '{_MARKER}'"
                )
        if self.kind == "chat":
            return [dict(m) for m in self.messages]
        if self.kind == "dotprompt":
            if self.input_schema is not None:
                validate_inputs(self.path, self.input_schema, data)
            return dotprompt.render(self.path, self.source, data)
        return self._render_plain(data)

    def _render_plain(self, data: dict[str, Any]) -> list[Message]:
        unknown = sorted(k for k in data if k != "input")
        if unknown:
            raise InputError(
                f"{self.path}: unknown input '{unknown[0]}' ({self.kind} programs take only"
                " 'input')"
            )
        value = data.get("input")
        if value is not None and not isinstance(value, str):
            raise InputError(f"{self.path}: input 'input' must be text")
        text = (value or "").strip()
        if not text:
            if self.kind == "skill":
                raise InputError(
                    f"skill {self.name} needs an input: pipe text or pass -i input=..."
                )
            return [{"role": "user", "content": self.template}]
        return [
            {"role": "system", "content": self.template},
            {"role": "user", "content": text},
        ]


def chat(
    messages: list[Message],
    *,
    model: str | None = None,
    config: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    json_output: bool = False,
) -> Program:
    """A conversation as a program: it renders to `messages` as given and takes no inputs (the
    OpenAI endpoint's completions on a raw CPU). No file, no devices."""
    if not messages:
        raise InputError("a chat needs at least one message")
    return Program(
        name="chat",
        description="a chat completion",
        kind="chat",
        path=Path("<chat>"),
        model=model,
        config=dict(config or {}),
        output_format="json" if (json_output or output_schema is not None) else "text",
        output_schema=output_schema,
        messages=list(messages),
    )


# --- Loading ----------------------------------------------------------------------------------


def load(path_or_name: str | Path, search_dirs: list[Path] | None = None) -> Program:
    """Load a program from a path (file or skill folder) or a bare name found in `search_dirs`.

    A string is a path when it contains a path separator, ends in a program suffix, or names
    an existing file or skill folder; otherwise it is a name, looked up in each directory in
    order as `NAME.prompt`, `NAME.md`, then `NAME/SKILL.md`; the first match wins.
    """
    if isinstance(path_or_name, Path) or _looks_like_path(path_or_name):
        return _load_path(Path(path_or_name))
    name = path_or_name
    tried: list[str] = []
    for directory in search_dirs or []:
        for candidate in candidates(directory, name):
            tried.append(str(candidate))
            if candidate.is_file():
                return _load_path(candidate)
    where = ", ".join(tried) if tried else "no search directories"
    raise ProgramError(f"program '{name}' not found (searched: {where})")


def discover(dirs: list[Path], problems: list[ProgramError] | None = None) -> list[Program]:
    """Every program in `dirs`: `*.prompt` / `*.md` files and `*/SKILL.md` skill folders.

    Not recursive beyond one level of skill folders; hidden entries are skipped; a missing
    directory is skipped. When two entries answer to the same lookup name (file stem or folder
    name), the one `load(name, dirs)` would pick wins and the other is left out. A file that
    fails to load is left out and its `ProgramError` appended to `problems` when given.
    Programs come back sorted by name.
    """
    found: dict[str, Program] = {}
    for directory in dirs:
        if not directory.is_dir():
            continue
        names = sorted(
            {_lookup_name(entry) for entry in directory.iterdir() if _is_entry(entry)} - {""}
        )
        for name in names:
            if name in found:
                continue
            for candidate in candidates(directory, name):
                if not candidate.is_file():
                    continue
                try:
                    found[name] = _load_path(candidate)
                except ProgramError as exc:
                    if problems is not None:
                        problems.append(exc)
                break
    return sorted(found.values(), key=lambda p: (p.name, str(p.path)))


def default_search_dirs(home: Path, cwd: Path) -> list[Path]:
    """Where bare program names are looked up: installed programs, then project skills."""
    return [home / params.PROGRAMS_DIR_NAME, cwd / params.SKILLS_DIR]


# --- Internals: paths -------------------------------------------------------------------------


def _looks_like_path(arg: str) -> bool:
    if "/" in arg or "\\" in arg or arg.endswith(params.PROGRAM_SUFFIXES):
        return True
    path = Path(arg)
    return path.is_file() or (path / params.SKILL_FILE).is_file()


def candidates(directory: Path, name: str) -> list[Path]:
    return [directory / f"{name}{suffix}" for suffix in params.PROGRAM_SUFFIXES] + [
        directory / name / params.SKILL_FILE
    ]


def _is_entry(entry: Path) -> bool:
    if entry.name.startswith("."):
        return False
    if entry.is_dir():
        return (entry / params.SKILL_FILE).is_file()
    return entry.is_file() and entry.suffix in params.PROGRAM_SUFFIXES


def _lookup_name(entry: Path) -> str:
    return entry.name if entry.is_dir() else entry.stem


def _load_path(path: Path) -> Program:
    if path.is_dir():
        skill_file = path / params.SKILL_FILE
        if not skill_file.is_file():
            raise ProgramError(f"{path}: not a program (a skill folder needs {params.SKILL_FILE})")
        path = skill_file
    elif not path.exists():
        raise ProgramError(f"{path}: no such program file")
    text = _read_text(path)
    if path.name == params.SKILL_FILE:
        program = _load_skill(path, text)
    elif path.suffix == ".md":
        program = _load_markdown(path, text)
    else:
        program = _load_dotprompt(path, text)
    problem = dependable.check_program(program.llmos, program.output_schema, program.tools)
    if problem is not None:
        raise ProgramError(f"{path}: {problem}")
    return program


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > params.PROGRAM_MAX_BYTES:
            raise ProgramError(
                f"{path}: program file is too large ({size} bytes, limit"
                f" {params.PROGRAM_MAX_BYTES})"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ProgramError(f"{path}: cannot read program file: {exc.strerror}") from exc
    if b"\0" in raw:
        raise ProgramError(f"{path}: not a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProgramError(f"{path}: not a text file (not UTF-8)") from exc
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ProgramError(f"{path}: program file is empty")
    return text


# --- Internals: front matter ------------------------------------------------------------------


def _parse(path: Path, text: str) -> Any:
    """dotpromptz's parse, with its errors turned into ProgramErrors."""
    from dotpromptz import Dotprompt, FrontmatterError

    try:
        return Dotprompt().parse(text, source_name=str(path))
    except FrontmatterError as exc:
        reason = str(getattr(exc, "reason", "") or "invalid front matter")
        line, column = getattr(exc, "line", None), getattr(exc, "column", None)
        where = f" at line {line}, column {column}" if line else ""
        detail = _yaml_problem(text) if reason == "invalid YAML" else None
        if reason == "invalid recognized field type" and line:
            key = _key_at_line(text, int(line))
            detail = f"'{key}' has the wrong type" if key else None
        extra = f" ({detail})" if detail else ""
        raise ProgramError(f"{path}: malformed front matter{where}: {reason}{extra}") from exc
    except Exception as exc:  # pydantic validation of recognised fields, and the like
        raise ProgramError(f"{path}: malformed front matter: {dotprompt.one_line(exc)}") from exc


def _yaml_problem(text: str) -> str | None:
    """PyYAML's short description of what is wrong (not the quoted source)."""
    match = re.match(
        r"^(?:(?:#[^\n]*|[ \t]*)\n)*---[ \t]*\r?\n([\s\S]*?)\r?\n---[ \t]*$", text, re.M
    )
    if not match:
        return None
    try:
        yaml.safe_load(match.group(1))
    except yaml.MarkedYAMLError as exc:
        return exc.problem
    except yaml.YAMLError:
        return None
    return None


def _key_at_line(text: str, line: int) -> str | None:
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    match = re.match(r"^\s*([\w.-]+)\s*:", lines[line - 1])
    return match.group(1) if match else None


def _has_front_matter(text: str) -> bool:
    first = text.split("\n", 1)[0].rstrip("\r")
    return first.rstrip() == "---"


def _parse_plain(path: Path, text: str) -> tuple[dict[str, Any], str]:
    """Front matter (starting on line 1, or none) and body of a Markdown or SKILL.md file."""
    if not _has_front_matter(text):
        return {}, text.strip()
    parsed = _parse(path, text)
    return dict(parsed.raw or {}), str(parsed.template or "").strip()


# --- Internals: the three formats ---------------------------------------------------------------


def _load_dotprompt(path: Path, text: str) -> Program:
    parsed = _parse(path, text)
    raw: dict[str, Any] = dict(parsed.raw or {})
    template = str(parsed.template or "")
    if not template.strip():
        raise ProgramError(f"{path}: the template (the text after the front matter) is empty")
    llmos = llmos_settings(path, raw)
    config = check_config_at(path, raw.get("config"))
    name = check_str(path, raw, "name") or path.stem
    description = check_str(path, raw, "description") or ""
    model = check_str(path, raw, "model") or None
    tools = check_tools(path, raw.get("tools"), "tools")

    input_cfg = raw.get("input") or {}
    output_cfg = raw.get("output") or {}
    if not isinstance(input_cfg, dict):
        raise ProgramError(f"{path}: 'input' must be a mapping (schema, default)")
    if not isinstance(output_cfg, dict):
        raise ProgramError(f"{path}: 'output' must be a mapping (format, schema)")
    defaults = input_cfg.get("default") or {}
    if not isinstance(defaults, dict):
        raise ProgramError(f"{path}: 'input.default' must be a mapping of input names to values")

    input_schema = dotprompt.compile_schema(path, "input", input_cfg.get("schema"))
    output_schema = dotprompt.compile_schema(path, "output", output_cfg.get("schema"))
    fmt = output_cfg.get("format") or ("json" if output_schema is not None else "text")
    if fmt not in _OUTPUT_FORMATS:
        raise ProgramError(
            f"{path}: 'output.format' must be one of {', '.join(_OUTPUT_FORMATS)}, "
            f"got {as_json(fmt)}"
        )
    if input_schema is not None and defaults:
        check_defaults(path, input_schema, defaults)
    dotprompt.check_template(path, text)

    handled = {"name", "description", "model", "config", "tools", "input", "output", "llmos"}
    return Program(
        name=name,
        description=description,
        kind="dotprompt",
        path=path,
        model=model,
        config=config,
        input_schema=input_schema,
        input_defaults=dict(defaults),
        output_format="json" if fmt == "json" else "text",
        output_schema=output_schema,
        tools=tools,
        llmos=llmos,
        extra={k: v for k, v in raw.items() if k not in handled and not k.startswith("llmos.")},
        template=template.strip(),
        source=text,
    )


def _load_skill(path: Path, text: str) -> Program:
    raw, body = _parse_plain(path, text)
    if not raw:
        raise ProgramError(f"{path}: a skill needs front matter with 'name' and 'description'")
    name = check_str(path, raw, "name")
    folder = path.parent.name
    if not name:
        raise ProgramError(f"{path}: missing required field 'name'")
    if len(name) > params.SKILL_NAME_MAX or not _SKILL_NAME_RE.match(name):
        raise ProgramError(
            f"{path}: 'name' must be 1-{params.SKILL_NAME_MAX} characters of a-z, 0-9 and"
            f" single inner hyphens, got {as_json(name)}"
        )
    if name != folder:
        raise ProgramError(f"{path}: 'name' is '{name}' but the skill folder is '{folder}'")
    description = check_str(path, raw, "description")
    if not description or not description.strip():
        raise ProgramError(f"{path}: missing required field 'description'")
    if len(description) > params.SKILL_DESCRIPTION_MAX:
        raise ProgramError(
            f"{path}: 'description' is {len(description)} characters (limit"
            f" {params.SKILL_DESCRIPTION_MAX})"
        )
    for key in ("license", "compatibility"):
        check_str(path, raw, key)
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ProgramError(f"{path}: 'metadata' must be a mapping")
    tools_raw = raw.get("allowed-tools")
    if isinstance(tools_raw, str):
        tools = [t for t in re.split(r"[\s,]+", tools_raw) if t]
    else:
        tools = check_tools(path, tools_raw, "allowed-tools")
    if not body:
        raise ProgramError(f"{path}: the skill has no instructions (the body is empty)")
    handled = {"name", "description", "allowed-tools", "llmos"}
    return Program(
        name=name,
        description=description.strip(),
        kind="skill",
        path=path,
        tools=tools,
        llmos=llmos_settings(path, raw),
        extra={k: v for k, v in raw.items() if k not in handled and not k.startswith("llmos.")},
        template=body,
        source=text,
    )


def _load_markdown(path: Path, text: str) -> Program:
    raw, body = _parse_plain(path, text)
    if not body:
        raise ProgramError(f"{path}: the program has no text after its front matter")
    handled = {"name", "description", "model", "config", "llmos"}
    return Program(
        name=check_str(path, raw, "name") or path.stem,
        description=check_str(path, raw, "description") or "",
        kind="markdown",
        path=path,
        model=check_str(path, raw, "model") or None,
        config=check_config_at(path, raw.get("config")),
        llmos=llmos_settings(path, raw),
        extra={k: v for k, v in raw.items() if k not in handled and not k.startswith("llmos.")},
        template=body,
        source=text,
    )
