"""Language-model data: JSON Lines in mlx-lm's formats, every example checked, then normalised.

The formats are chat ``messages``, ``prompt`` + ``completion`` and ``text``, one example a line
and one format a drop. A problem names the line and says how to fix it, including for the
shapes people bring from elsewhere (ShareGPT, Alpaca). What the trainers read holds only the
keys they use, so stray fields never reach a chat template.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from lorainbox.core.atomic import replacing
from lorainbox.drop.files import Problems, contained, data_files, folder_where, read_lines, rel_path
from lorainbox.drop.recipe import DataSpec
from lorainbox.drop.summary import DataKind, DataSummary

LLM_KINDS = ("chat", "completions", "text")
ROLES = ("system", "user", "assistant", "tool")
TRAIN_FILE, VALID_FILE, TEST_FILE = "train.jsonl", "valid.jsonl", "test.jsonl"
VALID_ALIASES = (VALID_FILE, "validation.jsonl", "val.jsonl")
SHAPES = {
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "completions": '{"prompt": "...", "completion": "..."}',
    "text": '{"text": "..."}',
}
ANY_SHAPE = f"{SHAPES['chat']}, {SHAPES['completions']} or {SHAPES['text']}"

_ROLE_HINTS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "developer": "system",
    "function": "tool",
}


@dataclass
class JsonlFiles:
    """The JSON Lines files found: trained on, held out, and passed over (shown in the summary)."""

    train: list[Path]
    valid: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class _Bad(Exception):
    """One example that has the wrong shape: what is wrong with it and how to fix it."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


def find_jsonl(drop: Path, folder: Path, problems: Problems) -> JsonlFiles | None:
    """mlx-lm's layout (train/valid/test.jsonl), else the one .jsonl file there is."""
    files = [p for p in data_files(folder) if p.suffix == ".jsonl"]
    if not files:
        return None
    names = {p.name: p for p in files}
    valid = next((names[n] for n in VALID_ALIASES if n in names), None)
    held = {TRAIN_FILE, TEST_FILE, *VALID_ALIASES}
    others = [p for p in files if p.name not in held]
    train = names.get(TRAIN_FILE)
    if train is None and len(others) == 1:
        train = others[0]
    for p in [train, valid]:
        if p is not None and not contained(drop, p, problems):
            return JsonlFiles([])
    if train is not None:
        ignored = [rel_path(drop, p) for p in files if p not in (train, valid)]
        return JsonlFiles([train], [valid] if valid else [], ignored)
    where = folder_where(drop, folder)
    if others:
        listed = ", ".join(p.name for p in others)
        problems.add(
            f"found several data files and none is named {TRAIN_FILE}: {listed}",
            where,
            f"rename the file to train on to {TRAIN_FILE} (and the held-out one to {VALID_FILE}), "
            f'or name it in recipe.toml: [data] train = "{others[0].name}"',
        )
    else:
        present = ", ".join(p.name for p in files)
        problems.add(
            f"found {present} but no {TRAIN_FILE}",
            where,
            f"add {TRAIN_FILE} with the training examples ({TEST_FILE} is never trained on)",
        )
    return JsonlFiles([])


class _LlmScan:
    """State across all JSONL files of a drop: their one format, counts and lengths."""

    def __init__(self, drop: Path, spec: DataSpec, problems: Problems):
        self.drop, self.problems = drop, problems
        self.declared = spec.format if spec.format in LLM_KINDS else None
        self.kind: str | None = self.declared
        self.first_at = ""
        self.count = self.chars = self.max_chars = 0
        self.longest = ""

    def scan(self, path: Path) -> int:
        """Check every line of ``path``; returns its number of good examples."""
        rel = rel_path(self.drop, path)
        if path.stat().st_size == 0:
            self.problems.add(f"{rel} is empty", rel, f"add examples, one per line: {ANY_SHAPE}")
            return 0
        before = len(self.problems.items)
        examples, first_line = 0, True
        off: list[tuple[int, str]] = []
        for number, text in read_lines(path, rel, self.problems):
            if self.problems.full:
                break
            if text is None or not text.strip():
                continue
            where = f"{rel}, line {number}"
            if first_line and text.strip() in ("[", "{"):
                self.problems.add(
                    f"{rel} looks like formatted JSON spread over many lines, not JSON Lines",
                    where,
                    "put each example on a line of its own, as one JSON object "
                    f"(e.g. `jq -c '.[]' data.json > {TRAIN_FILE}` for a JSON array)",
                )
                return 0
            first_line = False
            try:
                obj = _parse_line(text)
            except json.JSONDecodeError as e:
                what, fix = _json_problem(number, e)
                self.problems.add(what, where, fix)
                continue
            try:
                kind, chars = _classify(obj)
            except _Bad as bad:
                self.problems.add(f"line {number}: {bad.what}", where, bad.fix)
                continue
            if self.kind is None:
                self.kind, self.first_at = kind, where
            elif kind != self.kind:
                off.append((number, kind))
                continue
            examples += 1
            self.chars += chars
            if chars > self.max_chars:
                self.max_chars, self.longest = chars, where
        if off:
            self._report_mix(rel, off)
        if examples == 0 and len(self.problems.items) == before:
            self.problems.add(
                f"{rel} holds no examples (only blank lines)",
                rel,
                f"add examples, one per line: {ANY_SHAPE}",
            )
        self.count += examples
        return examples

    def _report_mix(self, rel: str, off: list[tuple[int, str]]) -> None:
        number, kind = off[0]
        others = f" ({len(off)} lines in all)" if len(off) > 1 else ""
        assert self.kind is not None
        if self.declared:
            self.problems.add(
                f'line {number} is {kind} data, but the recipe says [data] format = "{self.declared}"{others}',
                f"{rel}, line {number}",
                f'set format = "{kind}" (or "auto") in recipe.toml, or write every example as '
                f"{SHAPES[self.declared]}",
            )
        else:
            self.problems.add(
                f"line {number} is {kind} data, but the data starts as {self.kind} "
                f"({self.first_at}){others}; one drop holds one format",
                f"{rel}, line {number}",
                f"write every example as {self.kind}: {SHAPES[self.kind]}",
            )


def inspect_jsonl(drop: Path, found: JsonlFiles, spec: DataSpec, problems: Problems) -> DataSummary:
    scan = _LlmScan(drop, spec, problems)
    n_train = sum(scan.scan(p) for p in found.train if not problems.full)
    n_valid = sum(scan.scan(p) for p in found.valid if not problems.full)
    if not found.valid:
        n_valid = valid_count(n_train, spec.valid_fraction)
        n_train -= n_valid
    stats: dict[str, float | int | str] = {
        "format": scan.kind or "unknown",
        "examples": scan.count,
        "mean_chars": round(scan.chars / scan.count, 1) if scan.count else 0,
        "max_chars": scan.max_chars,
        "longest": scan.longest,
        "files": ", ".join(rel_path(drop, p) for p in [*found.train, *found.valid]),
    }
    if found.ignored:
        stats["ignored"] = ", ".join(found.ignored)
    kind = cast(DataKind, scan.kind or "chat")
    return DataSummary(kind, list(found.train), list(found.valid), n_train, n_valid, stats)


def valid_count(total: int, valid_fraction: float) -> int:
    """Examples held out for validation: at least one once there are two, never all."""
    if total < 2 or valid_fraction <= 0:
        return 0
    return min(max(1, round(total * valid_fraction)), total - 1)


def _parse_line(text: str) -> Any:
    """One JSON Lines line without its ending, so an error's column is within this line:
    json counts the newline as a line of its own and a line cut short would read "line 2 column 1".
    """
    return json.loads(text.rstrip("\r\n"))


def _json_problem(number: int, e: json.JSONDecodeError) -> tuple[str, str]:
    """What is wrong with a line that is not JSON, and how to fix it; a line cut short says so,
    since json's "Expecting ',' delimiter" at its end does not tell why."""
    reason = f"{e.msg.removesuffix(' at')} (column {e.colno})"  # "Unterminated string starting at"
    if not e.doc[e.pos :].strip() or e.msg.startswith("Unterminated string"):
        what = f"line {number} ends before its JSON object is complete: {reason}"
        fix = (
            f"line {number} looks cut off: finish the example on that line and close every "
            "quote, ] and }; keep each example on a single line"
        )
        return what, fix
    what = f"line {number} is not valid JSON: {reason}"
    fix = (
        f"make line {number} one complete JSON object; check the quotes and commas "
        f"near column {e.colno}, and keep each example on a single line"
    )
    return what, fix


def _classify(obj: Any) -> tuple[str, int]:
    """The format of one example (mlx-lm's order of checks) and its length in characters."""
    if not isinstance(obj, dict):
        raise _Bad(
            f"the example is a JSON {_json_type(obj)}, not an object",
            f"write each example as one object on its own line: {ANY_SHAPE}",
        )
    if "prompt" in obj and "completion" in obj:
        for key in ("prompt", "completion"):
            _need_string(obj, key)
        if not obj["completion"].strip():
            raise _Bad('"completion" is empty', "write the answer the model should learn")
        _check_tools(obj)
        return "completions", len(obj["prompt"]) + len(obj["completion"])
    if "messages" in obj:
        return "chat", _check_chat(obj)
    if "text" in obj:
        _need_string(obj, "text")
        if not obj["text"].strip():
            raise _Bad('"text" is empty', "write the text to learn, or remove the line")
        return "text", len(obj["text"])
    raise _Bad(*_unknown_shape(obj))


def _unknown_shape(obj: dict[str, Any]) -> tuple[str, str]:
    keys = set(obj)
    if "conversations" in keys:
        return (
            'the example has "conversations" (ShareGPT style) instead of "messages"',
            'rename "conversations" to "messages", "from" to "role" (human -> user, '
            'gpt -> assistant) and "value" to "content"',
        )
    if {"instruction", "output"} <= keys:
        return (
            'the example has "instruction" and "output" (Alpaca style)',
            'write {"prompt": instruction (plus input, if any), "completion": output}',
        )
    if "prompt" in keys or "completion" in keys:
        have, lack = ("prompt", "completion") if "prompt" in keys else ("completion", "prompt")
        return (
            f'the example has "{have}" but no "{lack}"',
            f'add "{lack}", or write {SHAPES["text"]} for plain text',
        )
    shown = ", ".join(f'"{k}"' for k in sorted(keys)[:6]) or "no keys"
    return (
        f'the example has {shown}, but none of "messages", "prompt" + "completion" or "text"',
        f"write each example as {ANY_SHAPE}",
    )


def _check_chat(obj: dict[str, Any]) -> int:
    messages = obj["messages"]
    shape = 'write "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
    if not isinstance(messages, list):
        raise _Bad(f'"messages" is a {_json_type(messages)}, not a list', shape)
    if not messages:
        raise _Bad('"messages" is an empty list', shape)
    chars, roles, answered = 0, set(), False
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise _Bad(
                f"message {i} is a {_json_type(m)}, not an object",
                'write each message as {"role": "...", "content": "..."}',
            )
        role = m.get("role")
        if role is None:
            raise _Bad(
                f'message {i} has no "role"', 'add "role": "system", "user", "assistant" or "tool"'
            )
        if role not in ROLES:
            hint = _ROLE_HINTS.get(str(role).lower())
            raise _Bad(
                f"message {i} has the role {json.dumps(role)}, which chat templates do not know",
                (f'write "{hint}" instead; ' if hint else "")
                + "the roles are system, user, assistant and tool",
            )
        content, calls = m.get("content"), m.get("tool_calls")
        if content is None and not (role == "assistant" and calls):
            raise _Bad(f'message {i} ({role}) has no "content"', 'add "content": "the text"')
        if content is not None and not isinstance(content, str):
            raise _Bad(
                f"message {i} ({role}) has content that is a {_json_type(content)}, not a string",
                "write the content as one string (join the text parts; images are not supported)",
            )
        chars += len(content or "")
        roles.add(role)
        answered = answered or (role == "assistant" and (bool((content or "").strip()) or calls))
    if "assistant" not in roles:
        raise _Bad(
            'no message has the role "assistant"',
            'add the reply the model should learn: {"role": "assistant", "content": "..."}',
        )
    if not answered:
        raise _Bad("every assistant message is empty", "write the replies the model should learn")
    _check_tools(obj)
    return chars


def _check_tools(obj: dict[str, Any]) -> None:
    tools = obj.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise _Bad(
            '"tools" is not a list of objects',
            'give "tools" as a list of function definitions ({"type": "function", ...}), or leave it out',
        )


def _need_string(obj: dict[str, Any], key: str) -> None:
    if not isinstance(obj[key], str):
        raise _Bad(
            f'"{key}" is a {_json_type(obj[key])}, not a string',
            f'write "{key}" as text in quotes',
        )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "number")


def sniff_kind(path: Path) -> str | None:
    """The format of the first readable example among the first lines, without judging it."""
    quiet = Problems()
    for _, text in itertools.islice(read_lines(path, path.name, quiet), 100):
        try:
            obj = json.loads(text) if text and text.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if "prompt" in obj and "completion" in obj:
                return "completions"
            for key, kind in (("messages", "chat"), ("text", "text")):
                if key in obj:
                    return kind
    return None


def _normalised(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Only the keys the trainers read, so stray fields never reach a chat template."""
    keys = {"chat": ("messages",), "completions": ("prompt", "completion"), "text": ("text",)}
    out = {k: obj[k] for k in keys[kind]}
    if kind != "text" and obj.get("tools") is not None:
        out["tools"] = obj["tools"]
    return out


def _records(kind: str, files: Iterable[Path]) -> Iterator[str]:
    """Normalised lines of already checked files; anything that changed since is an error."""
    for path in files:
        problems = Problems()
        for number, text in read_lines(path, path.name, problems):
            if text is None or not text.strip():
                continue
            try:
                yield json.dumps(_normalised(kind, json.loads(text)), ensure_ascii=False)
            except (json.JSONDecodeError, KeyError, TypeError):
                problems.add(
                    f"line {number} changed after the data was checked",
                    f"{path.name}, line {number}",
                    "leave the drop alone while it is queued; retry it with `lorainbox retry NAME`",
                )
                break
        problems.raise_if_any()


def write_normalised(kind: str, files: list[Path], out: Path) -> int:
    count = 0
    with replacing(out) as f:
        for line in _records(kind, files):
            f.write(line + "\n")
            count += 1
    return count


def write_split(
    kind: str, files: list[Path], train_out: Path, valid_out: Path, held: set[int]
) -> tuple[int, int]:
    counts = [0, 0]
    with ExitStack() as stack:
        outs = [
            stack.enter_context(replacing(train_out)),
            stack.enter_context(replacing(valid_out)),
        ]
        for index, line in enumerate(_records(kind, files)):
            side = int(index in held)
            outs[side].write(line + "\n")
            counts[side] += 1
    return counts[0], counts[1]
