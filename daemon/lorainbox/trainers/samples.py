"""Answers to a few of the drop's own questions before and after training, for the report.

A loss curve says the model fit the data; seeing the base model fumble a question and the
trained one answer it says the training did what the person wanted. The "before" answers are
taken once, before the first step (a resumed run keeps them), while the base model is already
in memory, so the report costs two short generations and no second model load.
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
        prompts = pick_prompts(files)
        rows = [
            {"prompt": p, "expected": a, "before": generate(p), "after": None} for p, a in prompts
        ]
    except Exception:
        log.exception("could not sample the base model for the report")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))


def after_training(work_dir: Path, generate: Generate) -> None:
    """Ask the trained model the same questions and write the report's section."""
    path = work_dir / SAMPLES_FILE
    if not path.exists():
        return
    try:
        rows = json.loads(path.read_text())
        for row in rows:
            row["after"] = generate(row["prompt"])
    except Exception:
        log.exception("could not sample the trained model for the report")
        return
    path.write_text(json.dumps(rows, indent=2))
    (work_dir / REPORT_EXTRA).write_text(render(rows))


def render(rows: list[dict]) -> str:
    lines = ["## Answers before and after training\n"]
    if not rows:
        return lines[0] + "\nThe data has no questions to ask (plain text only).\n"
    lines.append(
        "Questions from your data (validation examples first), asked of the base model and of "
        "the trained one, greedy and short; *expected* is the answer the data teaches.\n"
    )
    for row in rows:
        question = row["prompt"][-1]["content"]
        lines += [
            f"**Q:** {question}\n",
            f"- expected: {quote_answer(row['expected'])}",
            f"- before: {quote_answer(row['before'])}",
            f"- after: {quote_answer(row['after'])}\n",
        ]
    return "\n".join(lines) + "\n"


def quote_answer(text: str | None) -> str:
    if text is None:
        return "_(not asked)_"
    flat = " ".join(text.split())
    return f"`{flat.replace('`', '´')}`" if flat else "_(empty)_"
