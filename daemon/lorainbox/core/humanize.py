"""Short human forms of figures that the command line, the progress bars and the menu share."""

from __future__ import annotations

from typing import Any

EXPORT_STAGES = {
    "fusing": "fusing the adapter",
    "loading": "loading for GGUF",
    "converting": "converting to GGUF",
    "writing": "writing the GGUF",
    "checking": "checking the GGUF reads chats as training did",
    "done": "GGUF written",
}


def loss_text(value: float, decimals: int = 3) -> str:
    """``0.412``, or ``3.00e-04`` below 0.01: fixed decimals would read a falling loss as 0.000."""
    return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.{decimals}f}"


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``: compact enough for a progress line."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def export_stage(progress: dict[str, Any]) -> str | None:
    """Where the export is, ``writing the GGUF 45%``, once the worker has started it."""
    export = progress.get("export") or {}
    stage = export.get("stage")
    if stage is None:
        return None
    text = EXPORT_STAGES.get(stage, stage)
    fraction = export.get("fraction")
    return text if fraction is None or stage == "done" else f"{text} {fraction:.0%}"
