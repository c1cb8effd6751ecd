"""The terminal's progress bars (``lorainbox train``, ``lorainbox demo``) fed through the hub."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from lorainbox.core.events import JobChanged, JobProgress
from lorainbox.core.hub import Hub
from lorainbox.core.humanize import loss_text
from lorainbox.pipeline.jobs import JobStore, State
from lorainbox.ui.progress import ProgressView
from lorainbox.ui.tables import progress_text
from rich.console import Console

TRAINING = {
    "step": 120,
    "total": 1200,
    "train_loss": 0.412,
    "valid_loss": 0.455,
    "tokens_per_second": 621.3,
    "eta_seconds": 3725,
}


def render(width: int, jobs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    hub = Hub()
    view = ProgressView(hub, console)
    for job_id, (name, state, progress) in enumerate(jobs, 1):
        hub.publish(JobChanged(job_id, name, "training", "queued"))
        hub.publish(JobProgress(job_id, progress))
        if state != "training":
            hub.publish(JobChanged(job_id, name, state, "training"))
    console.print(view.progress.make_tasks_table(view.progress.tasks))
    return [line.rstrip() for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("width", [80, 120])
def test_every_bar_fits_the_terminal_with_its_step_loss_and_time_left(width: int) -> None:
    done = {**TRAINING, "step": 1200, "eta_seconds": 0}
    lines = render(width, [("pirate-bot", "training", TRAINING), ("a-longer-name", "done", done)])
    assert len(lines) == 2 and all(len(line) <= width for line in lines)
    training, finished = lines
    assert "…" not in training and "120/1200" in training
    assert "loss 0.412" in training and "ETA 1h02m" in training
    assert "1200/1200" in finished and "ETA" not in finished and "done" in finished
    wide = width >= 100
    assert ("621 tok/s" in training) is wide and ("val 0.455" in training) is wide


@pytest.mark.parametrize(
    ("loss", "text"),
    [
        (2.4567, "2.457"),
        (0.412, "0.412"),
        (0.01, "0.010"),
        (0.0003, "3.00e-04"),
        (0.000123456, "1.23e-04"),
        (0.0, "0.000"),
    ],
)
def test_small_losses_keep_three_significant_figures(loss: float, text: str) -> None:
    assert loss_text(loss) == text


@pytest.mark.parametrize("width", [80, 120])
def test_a_loss_near_zero_is_not_shown_as_zero(width: int) -> None:
    late = {**TRAINING, "step": 1150, "train_loss": 0.0003, "valid_loss": 0.00041}
    (line,) = render(width, [("pirate-bot", "training", late)])
    assert "loss 3.00e-04" in line and "0.000" not in line and len(line) <= width
    assert ("val 4.10e-04" in line) is (width >= 100)


def test_after_training_the_bar_says_where_the_export_is() -> None:
    exporting = {**TRAINING, "step": 1200, "export": {"stage": "writing", "fraction": 0.45}}
    fusing = {**TRAINING, "step": 1200, "export": {"stage": "fusing", "fraction": None}}
    written = {**TRAINING, "step": 1200, "export": {"stage": "done", "fraction": 1.0}}
    lines = render(
        80,
        [("a", "exporting", exporting), ("b", "exporting", fusing), ("c", "done", written)],
    )
    assert lines[0].endswith("writing the GGUF 45%") and "ETA" not in lines[0]
    assert lines[1].endswith("fusing the adapter")
    assert lines[2].endswith("GGUF written")


def test_status_shows_the_training_then_how_far_the_export_is(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.add(tmp_path, "pirate-bot", tmp_path / "pirate-bot")
    store.transition(job.id, State.TRAINING)
    store.update(job.id, progress=TRAINING)
    text = progress_text(store.get(job.id))
    assert "120/1200" in text and "loss 0.412" in text and text.endswith("ETA 1h02m")
    store.transition(job.id, State.EXPORTING)
    exporting = {**TRAINING, "step": 1200, "export": {"stage": "writing", "fraction": 0.45}}
    store.update(job.id, progress=exporting)
    text = progress_text(store.get(job.id))
    assert "1200/1200" in text and text.endswith("writing the GGUF 45%") and "ETA" not in text
    store.close()
