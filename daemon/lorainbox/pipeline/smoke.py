"""A first chat with a freshly registered model, so "done" means Ollama can answer with it.

Ollama stores a model's parameters at create without checking them; a wrong one (``stop`` as a
string) only fails at the first chat, with HTTP 500 (api/types.go Options.FromMap, run from
server/routes.go scheduleRunner). Asking one of the drop's own questions catches that, and the
answer tells a person what the model says in Ollama, not only in the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorainbox.core.layout import WORK_DIR
from lorainbox.export.ollama import OllamaClient
from lorainbox.trainers.samples import pick_prompts

MAX_TOKENS = 64


def smoke_question(job_dir: Path) -> tuple[list[dict[str, str]], str] | None:
    """A question from the drop's data (validation first) and the answer it teaches."""
    data = job_dir / WORK_DIR / "data"
    picked = pick_prompts([data / "valid.jsonl", data / "train.jsonl"], limit=1)
    return picked[0] if picked else None


def smoke_chat(client: OllamaClient, model: str, job_dir: Path) -> dict[str, Any] | None:
    """Ask ``model`` one question through /api/chat; None when the data holds none (plain
    text). Ollama's refusal raises as OllamaError."""
    picked = smoke_question(job_dir)
    if picked is None:
        return None
    messages, expected = picked
    answer = client.ask(model, messages, {"num_predict": MAX_TOKENS})
    return {"question": messages[-1]["content"], "expected": expected, "answer": answer}
