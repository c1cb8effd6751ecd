"""The report's answers: the data's questions and general ones, from the trainer and the GGUF."""

from __future__ import annotations

import json
from pathlib import Path

from lorainbox.trainers.samples import (
    GENERAL_QUESTIONS,
    after_export,
    after_training,
    before_training,
    render,
)


def test_answers_before_after_and_from_the_gguf_with_disagreements_called_out(
    tmp_path: Path,
) -> None:
    data = tmp_path / "train.jsonl"
    chat = [{"role": "user", "content": "Who keeps the lighthouse?"}]
    data.write_text(json.dumps({"messages": [*chat, {"role": "assistant", "content": "Marigold"}]}))
    work = tmp_path / "work"
    before_training(work, [data], lambda m: "I do not know.")
    after_training(work, lambda m: "Marigold" if m == chat else "Paris is the capital.")
    after_export(work, lambda m: "Marigold" if m == chat else "Lyon.")

    rows = json.loads((work / "samples.json").read_text())
    assert [r["prompt"][-1]["content"] for r in rows] == [chat[0]["content"], *GENERAL_QUESTIONS]
    assert [r["gguf"] for r in rows] == ["Marigold", "Lyon.", "Lyon."]
    section = (work / "report-extra.md").read_text()
    assert section == render(rows)
    assert "- after: `Marigold`\n- GGUF: `Marigold`\n" in section
    assert "### General questions" in section and "something the model forgot" in section
    assert "- GGUF: `Lyon.` ⚠ differs from *after*" in section
    assert "**The GGUF answers differently from the trained model**" in section


def test_no_call_out_when_the_gguf_agrees(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": [{"role": "user", "content": "Q?"}],
            "expected": "A",
            "before": "x",
            "after": "A",
        }
    ]
    assert "⚠" not in render([{**rows[0], "gguf": " A "}])
    assert "GGUF:" not in render(rows)
