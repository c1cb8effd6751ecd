"""The worker's events as lines a person reads in train.log (``lorainbox logs JOB``).

The supervisor reads the worker's JSON lines; the worker's log (its stderr, which is train.log)
gets the same events in words, so the log tells the job's story without the daemon.
"""

from __future__ import annotations

import logging
from typing import Any

from lorainbox.core.humanize import EXPORT_STAGES, duration, loss_text


def _progress(f: dict[str, Any]) -> str:
    parts = [f"step {f.get('step')}/{f.get('total')}"]
    if f.get("train_loss") is not None:
        parts.append(f"loss {loss_text(f['train_loss'], 4)}")
    if f.get("valid_loss") is not None:
        parts.append(f"valid loss {loss_text(f['valid_loss'], 4)}")
    if f.get("learning_rate") is not None:
        parts.append(f"lr {f['learning_rate']:.2e}")
    if f.get("tokens_per_second"):
        parts.append(f"{f['tokens_per_second']:.0f} tok/s")
    if f.get("images_per_second"):
        parts.append(f"{f['images_per_second']:.2f} img/s")
    if f.get("peak_memory_gb") is not None:
        parts.append(f"peak {f['peak_memory_gb']:.2f} GB")
    if f.get("eta_seconds"):
        parts.append(f"{duration(f['eta_seconds'])} left")
    return ", ".join(parts)


def _footprint(f: dict[str, Any]) -> str:
    text = (
        f"memory plan: batch {f.get('batch_size')}, sequences up to {f.get('max_seq_length')}, "
        f"gradient checkpointing {'on' if f.get('grad_checkpoint') else 'off'}"
    )
    if f.get("estimate_gb") is not None and f.get("budget_gb") is not None:
        text += f"; about {f['estimate_gb']} GB of a {f['budget_gb']} GB budget"
    return text + "".join(f"; {change}" for change in f.get("changes") or [])


class Narrator:
    """Logs each event as a line; an export's stages once each, not every percent."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self.export_stage: str | None = None

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if (text := self.line(kind, fields)) is not None:
            self.log.info(text)

    def line(self, kind: str, f: dict[str, Any]) -> str | None:
        match kind:
            case "progress":
                return _progress(f)
            case "export":
                if f.get("stage") == self.export_stage:
                    return None
                self.export_stage = f.get("stage")
                return f"export: {EXPORT_STAGES.get(str(self.export_stage), self.export_stage)}"
            case "footprint":
                return _footprint(f)
            case "stage" if f.get("stage") == "training":
                why = f" ({f['reason']})" if f.get("reason") else ""
                return f"training with {f.get('trainer')}{why}"
            case "stage":
                return str(f.get("stage"))
            case "checkpoint":
                return f"checkpoint saved at step {f.get('step')}"
            case "resumed":
                return f"resumed from the checkpoint at step {f.get('step')}"
            case "trained":
                steps, adapter = f.get("steps"), f.get("adapter")
                return f"training finished after {steps} steps; adapter in {adapter}"
            case "exported":
                return f"wrote {f.get('gguf')}"
            case "paused":
                return f"paused at step {f.get('step')}; it resumes from there"
            case "oom":
                return f"out of memory: {f.get('message')}"
            case "error":
                return "; ".join(f"{p['what']} ({p['where']})" for p in f.get("problems") or [])
            case "crash":
                return f"crashed: {f.get('message')}"
        return None
