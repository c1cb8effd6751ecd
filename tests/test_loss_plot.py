"""loss.png and the loss table of report.md, from metrics written the way the trainers write them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from lorainbox.core.layout import WORK_DIR
from lorainbox.pipeline.results import (
    LOSS_PNG,
    MAX_VALID_ROWS,
    loss_figure,
    loss_series,
    loss_table,
    plot_loss,
    read_metrics,
    y_scale,
)
from lorainbox.trainers.base import Emitter
from PIL import Image

VALID_RGB = (0xDD, 0x6B, 0x20)


def write_run(
    job_dir: Path, first: float, last: float, *, steps: int = 600, report: int = 10, every: int = 50
) -> Path:
    """metrics.jsonl through the trainers' Emitter: train loss every ``report`` steps falling
    geometrically from ``first`` to ``last``, validation (10% higher) every ``every`` steps."""
    (job_dir / WORK_DIR).mkdir(parents=True)
    emitter = Emitter(io.StringIO(), metrics_file=job_dir / WORK_DIR / "metrics.jsonl")
    for step in range(report, steps + 1, report):
        loss = first * (last / first) ** ((step - report) / (steps - report))
        line = {"step": step, "total": steps, "train_loss": round(loss, 5)}
        if step % every == 0:
            line["valid_loss"] = round(loss * 1.1, 5)
        emitter.progress(**line)
    return job_dir


def near(pixel: tuple[int, ...], rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb, strict=False))


def test_a_loss_falling_a_thousandfold_is_plotted_on_a_log_scale(tmp_path: Path) -> None:
    job_dir = write_run(tmp_path / "job", 5.0, 0.0005)
    train, valid = loss_series(read_metrics(job_dir))
    assert (train[0], train[-1], len(valid)) == ((10, 5.0), (600, 0.0005), 12)

    ax = loss_figure(train, valid, "pirate-bot").axes[0]
    assert ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss (log scale)")
    low, high = ax.get_ylim()
    assert low <= 0.0005 and high >= 5.5, "every point, the last validation one included, is shown"
    train_line, valid_line = ax.get_lines()
    assert valid_line.get_marker() == "o" and valid_line.get_zorder() > train_line.get_zorder()

    out = plot_loss(job_dir, "pirate-bot")
    assert out == job_dir / LOSS_PNG
    with Image.open(out) as png:
        png.load()
        assert png.format == "PNG" and png.size == (770, 440)
        colours = png.convert("RGB").getcolors(maxcolors=png.width * png.height)
    orange = sum(count for count, rgb in colours if near(rgb, VALID_RGB))
    assert orange > 300, "the validation markers are drawn"


def test_a_loss_that_falls_a_little_stays_on_a_linear_scale(tmp_path: Path) -> None:
    job_dir = write_run(tmp_path / "job", 2.0, 1.2)
    train, valid = loss_series(read_metrics(job_dir))
    ax = loss_figure(train, valid, "pirate-bot").axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "loss"
    assert plot_loss(job_dir, "pirate-bot") is not None and (job_dir / LOSS_PNG).stat().st_size


def test_no_metrics_no_plot(tmp_path: Path) -> None:
    assert plot_loss(tmp_path, "pirate-bot") is None
    assert not (tmp_path / LOSS_PNG).exists()


@pytest.mark.parametrize(
    ("losses", "scale"),
    [
        ([5.0, 0.25], "linear"),  # a factor of 20 exactly
        ([5.0, 0.2], "log"),
        ([0.001, 0.5, 0.03], "log"),
        ([0.0, 5.0, 0.001], "linear"),  # a zero has no place on a log axis
        ([], "linear"),
    ],
)
def test_y_scale(losses: list[float], scale: str) -> None:
    assert y_scale(losses) == scale


def table_steps(lines: list[str]) -> list[int]:
    return [int(line.split("|")[1]) for line in lines[2:]]


def test_the_loss_table_keeps_every_validation_step(tmp_path: Path) -> None:
    train, valid = loss_series(read_metrics(write_run(tmp_path / "job", 5.0, 0.0005)))
    lines = loss_table(train, valid)
    assert lines[:2] == ["| step | train | valid |", "|---:|---:|---:|"]
    steps = table_steps(lines)
    assert set(range(50, 601, 50)) <= set(steps)
    # The 8 rows left are train-only steps from the first to the last, about 80 steps apart.
    assert [s for s in steps if s % 50] == [10, 90, 180, 260, 340, 420, 510, 590]
    assert len(steps) == 20 and steps == sorted(steps)
    assert lines[2] == "| 10 | 5.0000 |  |"
    assert lines[3] == "| 50 | 2.6778 | 2.9456 |"
    assert lines[-1] == "| 600 | 5.00e-04 | 5.50e-04 |", "a small loss keeps 3 significant figures"


def test_a_short_run_shows_every_step(tmp_path: Path) -> None:
    job_dir = write_run(tmp_path / "job", 2.0, 1.0, steps=100, every=50)
    train, valid = loss_series(read_metrics(job_dir))
    assert table_steps(loss_table(train, valid)) == list(range(10, 101, 10))


def test_a_run_that_validates_every_step_is_thinned_evenly(tmp_path: Path) -> None:
    job_dir = write_run(tmp_path / "job", 5.0, 0.5, steps=1000, report=1, every=1)
    train, valid = loss_series(read_metrics(job_dir))
    steps = table_steps(loss_table(train, valid))
    assert len(steps) == MAX_VALID_ROWS and (steps[0], steps[-1]) == (1, 1000)
    gaps = {b - a for a, b in zip(steps, steps[1:], strict=False)}
    assert gaps <= {20, 21}
