"""Answers to a few of the drop's own questions before and after training, for the report.

A loss curve says the model fit the data; seeing the base model fumble a question and the
trained one answer it says the training did what the person wanted. A few general questions
beside the data's show what the model forgot on the way. The "before" answers are taken once,
before the first step (a resumed run keeps them), while the base model is already in memory.
After the export the GGUF answers the same questions through llama.cpp: what a person chats with
in Ollama is that file, not the trainer's model, and a disagreement is called out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from lorainbox.core.layout import SAMPLES_FILE

log = logging.getLogger(__name__)

REPORT_EXTRA = "report-extra.md"
MAX_PROMPTS = 3
MAX_TOKENS = 48
GENERAL_QUESTIONS = ("What is the capital of France?", "How many days are there in a week?")
"""Asked of every language model beside the data's questions: forgetting shows here."""

Messages = list[dict[str, str]]
Generate = Callable[[Messages], str]
"""Greedy reply of the model as it is now to a chat (the assistant turn is left out)."""


def pick_prompts(files: list[Path], limit: int = MAX_PROMPTS) -> list[tuple[Messages, str]]:
    """Distinct prompts from the data (validation first), each with the answer it teaches."""
    picked: list[tuple[Messages, str]] = []
    seen: set[str] = set()
    for file in files:
        if not file.exists():
            continue
        for line in file.read_text(encoding="utf-8").splitlines():
            if len(picked) >= limit:
                return picked
            try:
                prompt, answer = _split(json.loads(line))
            except (ValueError, KeyError, TypeError, IndexError):
                continue
            key = json.dumps(prompt)
            if key not in seen:
                seen.add(key)
                picked.append((prompt, answer))
    return picked


def _split(record: dict) -> tuple[Messages, str]:
    if "messages" in record:
        msgs = record["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return [dict(m) for m in msgs[:last]], str(msgs[last]["content"])
    if "prompt" in record:
        return [{"role": "user", "content": str(record["prompt"])}], str(record["completion"])
    raise ValueError("plain text has no question to ask")


def before_training(work_dir: Path, files: list[Path], generate: Generate) -> None:
    """Ask the base model, once per job; a failure costs the report its table, never the job."""
    path = work_dir / SAMPLES_FILE
    if path.exists():
        return
    try:
        asked = pick_prompts(files)
        general = [[{"role": "user", "content": q}] for q in GENERAL_QUESTIONS]
        rows = [
            {"prompt": p, "expected": a, "before": generate(p), "after": None} for p, a in asked
        ]
        rows += [
            {"prompt": p, "expected": None, "before": generate(p), "after": None, "general": True}
            for p in general
            if json.dumps(p) not in {json.dumps(q) for q, _ in asked}
        ]
    except Exception:
        log.exception("could not sample the base model for the report")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))


def after_training(work_dir: Path, generate: Generate) -> None:
    """Ask the trained model the same questions and write the report's section."""
    _ask_again(work_dir, generate, "after", "the trained model")


def after_export(work_dir: Path, generate: Generate) -> None:
    """Ask the exported GGUF the same questions (through llama.cpp) and write the section again."""
    _ask_again(work_dir, generate, "gguf", "the GGUF")


def _ask_again(work_dir: Path, generate: Generate, column: str, whom: str) -> None:
    path = work_dir / SAMPLES_FILE
    if not path.exists():
        return
    try:
        rows = json.loads(path.read_text())
        for row in rows:
            row[column] = generate(row["prompt"])
    except Exception:
        log.exception("could not ask %s for the report", whom)
        return
    path.write_text(json.dumps(rows, indent=2))
    (work_dir / REPORT_EXTRA).write_text(render(rows))


def disagree(row: dict) -> bool:
    """The GGUF's answer differs from the trained model's (spaces aside)."""
    gguf, after = row.get("gguf"), row.get("after")
    return (
        gguf is not None and after is not None and " ".join(gguf.split()) != " ".join(after.split())
    )


def render(rows: list[dict]) -> str:
    lines = ["## Answers before and after training\n"]
    data = [r for r in rows if not r.get("general")]
    general = [r for r in rows if r.get("general")]
    if not data:
        lines.append("The data has no questions to ask (plain text only).\n")
    else:
        lines.append(
            "Questions from your data (validation examples first), asked of the base model and "
            "of the trained one, greedy and short; *expected* is the answer the data teaches. "
            "*GGUF* is the exported file answering through llama.cpp, as Ollama will.\n"
        )
        lines += _rows(data)
    if general:
        lines.append(
            "### General questions\n\nNot in your data: a changed answer here is something the "
            "model forgot.\n"
        )
        lines += _rows(general)
    if any(disagree(r) for r in rows):
        lines.append(
            "**The GGUF answers differently from the trained model** where marked ⚠: the "
            "export changed the model (a coarse `[export] outtype`, or a tokenizer llama.cpp "
            "reads differently).\n"
        )
    return "\n".join(lines) + "\n"


def _rows(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        lines.append(f"**Q:** {row['prompt'][-1]['content']}\n")
        if row.get("expected") is not None:
            lines.append(f"- expected: {quote_answer(row['expected'])}")
        lines += [
            f"- before: {quote_answer(row['before'])}",
            f"- after: {quote_answer(row['after'])}",
        ]
        if "gguf" in row:
            mark = " ⚠ differs from *after*" if disagree(row) else ""
            lines.append(f"- GGUF: {quote_answer(row['gguf'])}{mark}")
        lines[-1] += "\n"
    return lines


def quote_answer(text: str | None) -> str:
    if text is None:
        return "_(not asked)_"
    flat = " ".join(text.split())
    return f"`{flat.replace('`', '´')}`" if flat else "_(empty)_"
