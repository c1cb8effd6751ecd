"""What a real Ollama server refuses, as pure checks that run before anything is trained.

Each rule follows Ollama's own source (github.com/ollama/ollama, v0.32.15; older tags where
they differ) and each check returns :class:`~lorainbox.core.errors.Problem` s (what, where, how
to fix) rather than raising, so one recipe reports all its mistakes at once. ``where`` is the
caller's: the recipe file and line, or a command-line option.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lorainbox.core.errors import Problem

# --- names: types/model/name.go (ParseNameBare, isValidPart, isValidLen) ----------------------

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MISSING = "\0missing"
"""A part that a separator promised but that is empty (``cutPromised``'s ``!MISSING!``)."""
PART_BYTES = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
"""``isValidLen``: Go's ``len``, so bytes, not characters."""
_PART_CHARS = {"host": r"[A-Za-z0-9_.:-]", "namespace": r"[A-Za-z0-9_-]"}
_NAME_CHARS = r"[A-Za-z0-9_.-]"
RESERVED_TAGS = ("cloud", "local")
"""Tag suffixes Ollama 0.18+ strips and routes (internal/modelref/modelref.go parseSourceSuffix)."""


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def shortest(self) -> str:
        """How /api/tags spells it (``Name.DisplayShortest``)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def parse_model_name(name: str) -> tuple[ModelName, bool]:
    """Split like ``ParseName``; the flag says whether the name carried its own tag."""

    def cut(s: str, sep: str) -> tuple[str, str, bool]:
        before, found, after = s.rpartition(sep)
        if not found:
            return s, "", False
        return before or MISSING, after or MISSING, True

    host = namespace = tag = ""
    s = name
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = cut(s, ":")
    s, model, promised = cut(s, "/")
    if not promised:
        model = s
    else:
        s, namespace, promised = cut(s, "/")
        if not promised:
            namespace = s
        else:
            host = s.partition("://")[2] if "://" in s else s
    parsed = ModelName(
        host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG
    )
    return parsed, bool(tag)


def part_problem(kind: str, part: str) -> str | None:
    """Why one part of a name fails ``isValidPart`` (None when it passes)."""
    if part == MISSING:
        return "is empty"
    size, limit = len(part.encode()), PART_BYTES[kind]
    if not 1 <= size <= limit:
        return f"must be 1 to {limit} bytes long (it is {size})"
    if not re.fullmatch(r"[A-Za-z0-9_]", part[0]):
        return f"must start with a letter, a digit or '_', not {part[0]!r}"
    allowed = _PART_CHARS.get(kind, _NAME_CHARS)
    bad = sorted({c for c in part[1:] if not re.fullmatch(allowed, c)})
    if bad:
        extra = "" if kind == "namespace" else " and '.'"
        shown = ", ".join(repr(c) for c in bad)
        return f"may hold only letters, digits, '_', '-'{extra} (not {shown})"
    return None


def suggest_model_name(text: str) -> str:
    """A valid Ollama model name close to ``text`` (for the error's fix)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip()).strip("-.")
    s = re.sub(r"-{2,}", "-", s)[: PART_BYTES["model"]].rstrip("-.")
    return s or "my-model"


def name_problems(name: str, where: str, *, allow_tag: bool = True) -> list[Problem]:
    """A model name that /api/create would answer 400 ``invalid model name``."""
    if not name or not name.strip():
        return [Problem("the Ollama model name is empty", where, 'set a name such as "pirate-bot"')]
    parsed, tagged = parse_model_name(name)
    if tagged and not allow_tag:
        base = name[: name.rfind(":")]
        return [
            Problem(
                f"the Ollama model name {name!r} carries a tag",
                where,
                f"use {base!r}: each version is tagged with its date and time, and the newest "
                "also as 'latest'",
            )
        ]
    for kind in ("host", "namespace", "model", "tag"):
        if problem := part_problem(kind, getattr(parsed, kind)):
            return [
                Problem(
                    f"the {kind} part of the Ollama model name {name!r} {problem}",
                    where,
                    f"use a name like {suggest_model_name(name.split(':')[0])!r}: letters, "
                    "digits, '_', '-' and '.', starting with a letter or digit, at most 80 bytes",
                )
            ]
    if tagged and (parsed.tag.lower() in RESERVED_TAGS or parsed.tag.lower().endswith("-cloud")):
        return [
            Problem(
                f"the tag {parsed.tag!r} is one Ollama reserves (it routes ':cloud' and "
                "'-cloud' to ollama.com and strips ':local')",
                where,
                "choose another tag",
            )
        ]
    return []


# --- quantize: fs/ggml/type.go ParseFileType; server/create.go createModel --------------------

QUANTIZE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_K_S", "Q4_K_M")
"""What ``ParseFileType`` accepts since v0.7.0 (and earlier ones too), ``Q4_K`` meaning Q4_K_M."""
QUANTIZABLE_SOURCES = ("F16", "BF16")
"""Source types ``createModel`` quantizes. F32 is on Ollama's list, but an F32 GGUF carries
``general.file_type = 0``, which ``KV.FileType`` (fs/ggml/ggml.go) reads as "unknown"."""
BF16_SINCE = (0, 22, 0)
"""Before v0.22.0 the check said "only supported for F16 and F32 models": BF16 was refused."""
OUTTYPE_FILE_TYPE = {"f16": "F16", "bf16": "BF16", "f32": "F32", "q8_0": "Q8_0"}


def quantize_type(quantize: str | None) -> str | None:
    """Ollama's spelling of a quantize setting (upper case, ``Q4_K`` -> ``Q4_K_M``); None
    for none; ValueError for a type Ollama does not know."""
    if not quantize or quantize.strip().lower() == "none":
        return None
    q = quantize.strip().upper()
    q = "Q4_K_M" if q == "Q4_K" else q
    if q not in QUANTIZE_TYPES:
        raise ValueError(q)
    return q


def quantize_problems(quantize: str | None, where: str) -> list[Problem]:
    """A type /api/create refuses with ``unsupported quantization type``."""
    try:
        quantize_type(quantize)
    except ValueError:
        return [
            Problem(
                f"Ollama cannot quantize to {quantize!r}",
                where,
                f'use one of {", ".join(QUANTIZE_TYPES)} (any case), or "none" to keep the '
                "GGUF as it is",
            )
        ]
    return []


def quantize_source_problem(
    source: str, want: str | None, version: tuple[int, int, int] | None = None
) -> str | None:
    """Why Ollama (of ``version``, when known) would refuse to quantize a ``source`` GGUF to
    ``want``; None when it would not (or there is nothing to do: ``ft == want``)."""
    if want is None or (source == want and source != "F32"):
        return None
    if source == "F32":
        return (
            "Ollama cannot quantize an F32 GGUF: its general.file_type 0 reads as 'unknown' "
            "(fs/ggml/ggml.go KV.FileType)"
        )
    if source == "BF16" and version is not None and version < BF16_SINCE:
        shown = ".".join(map(str, version))
        return f"Ollama {shown} quantizes only F16 and F32 models (BF16 since 0.22.0)"
    if source not in QUANTIZABLE_SOURCES:
        return f"the GGUF is already {source}, and Ollama only quantizes F16, BF16 and F32 models"
    return None


def export_problems(
    outtype: str, quantize: str | None, where_outtype: str, where_quantize: str
) -> list[Problem]:
    """``[export]`` settings that make Ollama refuse: an unknown type, or an ``outtype`` that
    Ollama cannot quantize from."""
    problems = quantize_problems(quantize, where_quantize)
    if problems:
        return problems
    want = quantize_type(quantize)
    source = OUTTYPE_FILE_TYPE.get(outtype.lower(), outtype.upper())
    why = quantize_source_problem(source, want)
    if why is None:
        return []
    return [
        Problem(
            f'outtype = "{outtype}" with quantize = "{quantize}": {why}',
            f"{where_outtype}; {where_quantize}",
            f'set outtype = "f16" (Ollama then quantizes it to {want}), or quantize = "none" '
            f"to keep the {source} GGUF as it is",
        )
    ]


# --- parameters: api/types.go Options, Runner, Options.FromMap -------------------------------

INT, FLOAT, BOOL, STRINGS = "integer", "float32", "boolean", "array"
PARAMETERS: dict[str, str] = {
    # Options
    "num_keep": INT,
    "seed": INT,
    "num_predict": INT,
    "top_k": INT,
    "top_p": FLOAT,
    "min_p": FLOAT,
    "typical_p": FLOAT,
    "repeat_last_n": INT,
    "temperature": FLOAT,
    "repeat_penalty": FLOAT,
    "presence_penalty": FLOAT,
    "frequency_penalty": FLOAT,
    "stop": STRINGS,
    # Runner
    "num_ctx": INT,
    "num_batch": INT,
    "num_gpu": INT,
    "main_gpu": INT,
    "use_mmap": BOOL,
    "num_thread": INT,
    "draft_num_predict": INT,
}
"""Every option of v0.32.15 with the type ``FromMap`` demands (its JSON name: Go type)."""
REMOVED_PARAMETERS = (
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
)
"""Options Ollama dropped in v0.7.0; newer servers ignore them with a warning in their log."""
_EXAMPLES = {INT: "4096", FLOAT: "0.7"}


def parameter_problems(parameters: Mapping[str, Any], where: str) -> list[Problem]:
    """Parameters that Ollama stores at create without a check and then refuses with HTTP 500
    at the first chat (``option "stop" must be of type array``), or silently ignores (an
    unknown name: ``FromMap`` only logs "invalid option provided")."""
    problems = []
    for key, value in parameters.items():
        here = f"{where}, `{key}`"
        kind = PARAMETERS.get(key)
        if kind is None:
            problems.append(_unknown_parameter(key, here))
        elif wrong := _type_problem(kind, value):
            problems.append(
                Problem(f"parameter `{key}` = {value!r} {wrong}", here, _example(key, kind, value))
            )
    return problems


def _example(key: str, kind: str, value: Any) -> str:
    if kind == STRINGS:
        items = value if isinstance(value, list) else [value]
        return f"write it as a list of strings: {key} = [{', '.join(_quoted(v) for v in items)}]"
    if kind == BOOL:
        return f"write {key} = true or {key} = false, without quotes"
    shown = value.strip() if isinstance(value, str) else value
    if kind == INT and isinstance(value, float):
        shown = round(value)
    ok = isinstance(shown, int) or re.fullmatch(r"-?\d+(\.\d+)?", str(shown))
    return f"write it without quotes: {key} = {shown if ok else _EXAMPLES[kind]}"


def _quoted(v: Any) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unknown_parameter(key: str, where: str) -> Problem:
    if key in REMOVED_PARAMETERS:
        return Problem(
            f"parameter `{key}` was removed in Ollama 0.7.0; newer versions ignore it",
            where,
            "delete it",
        )
    close = difflib.get_close_matches(key, list(PARAMETERS), n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return Problem(
        f"unknown parameter `{key}` (Ollama would ignore it without a word)",
        where,
        f"{hint}valid parameters: {', '.join(PARAMETERS)}",
    )


def _type_problem(kind: str, value: Any) -> str | None:
    """What is wrong with ``value``, in FromMap's words where it refuses it."""
    refused = f"is not of type {kind}: Ollama stores it, then refuses every chat with HTTP 500"
    if value is None:
        return None
    if kind == STRINGS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else f"{refused} (it must be a list of strings)"
    if kind == BOOL:
        return None if isinstance(value, bool) else refused
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return refused
    if kind == INT and isinstance(value, float) and not value.is_integer():
        return "is not a whole number (Ollama would cut it silently)"
    return None


# --- templates: template/template.go Parse (Go text/template) --------------------------------

GO_FUNCTIONS = frozenset(
    [
        "and",
        "call",
        "html",
        "index",
        "slice",
        "js",
        "len",
        "not",
        "or",
        "print",
        "printf",
        "println",
        "urlquery",
        "eq",
        "ge",
        "gt",
        "le",
        "lt",
        "ne",
        "json",
        "currentDate",
        "yesterdayDate",
        "toTypeScriptType",
    ]
)
"""Go's built-ins plus the ``funcs`` template.go adds."""
_KEYWORDS = frozenset(
    [
        "if",
        "else",
        "end",
        "range",
        "with",
        "define",
        "template",
        "block",
        "break",
        "continue",
        "nil",
        "true",
        "false",
    ]
)
_OPENERS = frozenset({"if", "range", "with", "define", "block"})
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "root": frozenset(
        [
            "System",
            "Prompt",
            "Response",
            "Suffix",
            "Messages",
            "Tools",
            "Think",
            "ThinkLevel",
            "IsThinkSet",
        ]
    ),
    "message": frozenset(
        ["Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName", "ToolCallID"]
    ),
    "tool": frozenset({"Type", "Function"}),
}
"""What ``Template.Execute`` hands a template: the top level, one of ``.Messages``, one of
``.Tools``. An unknown top-level field renders "<no value>"; an unknown message field fails
every chat with HTTP 500 (``can't evaluate field``)."""
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"|`[^`]*`|\'(?:\\.|[^\'\\])*\''  # strings and characters
    r"|\d[\w.+-]*"  # numbers: 1.5, 0x1F, 1e3
    r"|(?P<var>\$\w*)(?P<vfields>(?:\.\w+)*)"
    r"|(?P<fields>(?:\.\w+)+)"
    r"|(?P<ident>[A-Za-z_]\w*)(?:\.\w+)*"
    r"|\S"
)


class _TemplateError(Exception):
    pass


def template_problems(template: str, where: str) -> list[Problem]:
    """A TEMPLATE Ollama refuses at create (``template error: ...``: unclosed action,
    unexpected EOF or ``{{end}}``, undefined function) or that fails or misleads at chat time
    (unknown fields)."""
    fix = (
        "write a Go template (not Jinja): actions in {{ }}, each if/range/with closed by "
        "{{ end }}; fields .System .Prompt .Response .Messages .Tools, and in "
        "{{ range .Messages }} .Role .Content; or leave `template` out so Ollama detects it"
    )
    try:
        _check_template(template)
    except _TemplateError as e:
        return [Problem(f"the template is not one Ollama can use: {e}", where, fix)]
    return []


def _actions(text: str) -> Iterator[tuple[int, str]]:
    """(line, inside) of each ``{{ }}`` action, trim markers and comments dropped."""
    pos = 0
    while (start := text.find("{{", pos)) >= 0:
        line = text.count("\n", 0, start) + 1
        i = start + 2
        while True:
            if i >= len(text):
                raise _TemplateError(f"line {line}: unclosed action (a {{{{ without }}}})")
            ch = text[i]
            if ch in "\"`'":
                close = text.find(ch, i + 1) if ch == "`" else _string_end(text, i)
                if close < 0:
                    raise _TemplateError(f"line {line}: unterminated quoted string")
                i = close + 1
            elif text.startswith("}}", i):
                break
            else:
                i += 1
        inside = text[start + 2 : i].strip()
        inside = inside.removeprefix("-").removesuffix("-").strip()
        pos = i + 2
        if not inside.startswith("/*"):
            yield line, inside


def _string_end(text: str, i: int) -> int:
    j = i + 1
    while j < len(text) and text[j] != text[i]:
        if text[j] == "\n":
            return -1
        j += 2 if text[j] == "\\" else 1
    return j if j < len(text) else -1


def _check_template(text: str) -> None:
    stack: list[tuple[str, str, str]] = []  # (keyword, dot inside, dot outside)
    dot = "root"
    for line, action in _actions(text):
        if not action:
            raise _TemplateError(f"line {line}: missing value for command (an empty {{{{ }}}})")
        tokens = list(_TOKEN.finditer(action))
        first = tokens[0]["ident"] if tokens else None
        if first == "end":
            if not stack:
                raise _TemplateError(f"line {line}: unexpected {{{{end}}}}")
            dot = stack.pop()[2]
        elif first == "else":
            if not stack or stack[-1][0] not in ("if", "range", "with"):
                raise _TemplateError(f"line {line}: unexpected {{{{else}}}}")
            dot = stack[-1][2] if stack[-1][0] != "if" else dot
        for token in tokens:
            _check_token(token, dot, line)
        if first in _OPENERS:
            stack.append((first, _dot_inside(first, action, dot), dot))
            dot = stack[-1][1]
    if stack:
        raise _TemplateError(
            f"unexpected EOF: {{{{ {stack[-1][0]} }}}} is never closed by {{{{ end }}}}"
        )


def _dot_inside(keyword: str, action: str, dot: str) -> str:
    if keyword == "if":
        return dot
    if keyword == "range" and dot == "root":
        ranged = re.search(r"(?:^range|[\s=])\$?\.(\w+)\s*$", action)
        if ranged:
            return {"Messages": "message", "Tools": "tool"}.get(ranged[1], "unknown")
    return "unknown"


def _check_token(token: re.Match[str], dot: str, line: int) -> None:
    if (name := token["ident"]) is not None:
        if name not in _KEYWORDS and name not in GO_FUNCTIONS:
            raise _TemplateError(f'line {line}: function "{name}" not defined')
        return
    if token["fields"] is not None:
        _check_field(token["fields"].split(".")[1], dot, line)
    elif token["var"] == "$" and token["vfields"]:
        _check_field(token["vfields"].split(".")[1], "root", line)


def _check_field(field: str, dot: str, line: int) -> None:
    known = TEMPLATE_FIELDS.get(dot)
    if known is None or field in known:
        return
    close = [k for k in known if k.lower() == field.lower()] or difflib.get_close_matches(
        field, list(known), n=1
    )
    hint = f" (did you mean .{close[0]}?)" if close else ""
    scope = {"root": "the top level", "message": "a message", "tool": "a tool"}[dot]
    raise _TemplateError(
        f"line {line}: .{field} is not a field of {scope}{hint}; "
        f"known: {', '.join('.' + k for k in sorted(known))}"
    )
