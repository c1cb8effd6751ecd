"""A rich progress display fed by the hub: used by ``lorainbox train`` and ``lorainbox demo``."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)

from lorainbox.core.events import JobChanged, JobProgress
from lorainbox.core.hub import Hub
from lorainbox.core.humanize import duration, export_stage, loss_text

BAR_WIDTH = 16
WIDE = 100
"""Terminals narrower than this get the loss and the ETA only, so that a line never wraps."""


def detail(p: dict[str, Any], wide: bool) -> str:
    """What follows the bar: loss (and validation loss), speed, then time left or, once
    training is over, where the export is."""
    parts = []
    if p.get("train_loss") is not None:
        parts.append(f"loss {loss_text(p['train_loss'])}")
    if wide and p.get("valid_loss") is not None:
        parts.append(f"val {loss_text(p['valid_loss'])}")
    if wide and p.get("tokens_per_second"):
        parts.append(f"{p['tokens_per_second']:.0f} tok/s")
    if stage := export_stage(p):
        parts.append(stage)
    elif p.get("eta_seconds") and p.get("step") != p.get("total"):
        parts.append(f"ETA {duration(p['eta_seconds'])}")
    return " ".join(parts)


class ProgressView:
    """One bar per job: its state, step of total, loss, speed and time left, as the worker
    reports them (its ETA follows the measured speed; rich's would follow the report cadence)."""

    def __init__(self, hub: Hub, console: Console):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[name]}[/bold] {task.fields[state]}"),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
        )
        self._tasks: dict[int, TaskID] = {}
        self._lock = threading.Lock()
        hub.subscribe(JobChanged, self._on_changed)
        hub.subscribe(JobProgress, self._on_progress)

    def _task(self, job_id: int, name: str = "") -> TaskID:
        with self._lock:
            if job_id not in self._tasks:
                self._tasks[job_id] = self.progress.add_task(
                    "", total=None, name=name or f"job {job_id}", state="", detail=""
                )
            return self._tasks[job_id]

    def _on_changed(self, e: JobChanged) -> None:
        task = self._task(e.job_id, e.name)
        self.progress.update(task, name=e.name, state=e.state)
        if e.state in ("done", "failed", "cancelled"):
            total = self.progress.tasks[task].total
            self.progress.update(task, completed=total or 1, total=total or 1)
            if e.state != "done" and e.detail:
                self.progress.console.print(f"[red]{e.name} {e.state}:[/red] {e.detail}")

    def _on_progress(self, e: JobProgress) -> None:
        p = e.progress
        task = self._task(e.job_id)
        wide = self.progress.console.width >= WIDE
        self.progress.update(
            task, completed=p.get("step", 0), total=p.get("total"), detail=detail(p, wide)
        )

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()
