"""train.log tells a job's story in words: the worker's events, as a person reads them."""

import logging

import pytest
from lorainbox.worker.trainlog import Narrator


@pytest.fixture
def narrator() -> Narrator:
    return Narrator(logging.getLogger("test.trainlog"))


def test_progress_reads_as_one_line_with_small_losses_kept(narrator: Narrator) -> None:
    line = narrator.line(
        "progress",
        {
            "step": 40,
            "total": 120,
            "train_loss": 0.00031,
            "valid_loss": 1.25,
            "learning_rate": 1e-4,
            "tokens_per_second": 1234.5,
            "peak_memory_gb": 0.65,
            "eta_seconds": 95,
        },
    )
    assert line == (
        "step 40/120, loss 3.10e-04, valid loss 1.2500, lr 1.00e-04, 1234 tok/s, "
        "peak 0.65 GB, 1m35s left"
    )


def test_an_export_logs_each_stage_once_not_each_percent(narrator: Narrator) -> None:
    events = [("fusing", None), ("writing", 0.1), ("writing", 0.5), ("writing", 1.0)]
    lines = [narrator.line("export", {"stage": s, "fraction": f}) for s, f in events]
    assert lines == ["export: fusing the adapter", "export: writing the GGUF", None, None]


def test_the_memory_plan_says_what_the_guard_changed(narrator: Narrator) -> None:
    line = narrator.line(
        "footprint",
        {
            "batch_size": 2,
            "max_seq_length": 512,
            "grad_checkpoint": True,
            "changes": ["batch 4 -> 2 to fit"],
            "budget_gb": 8.0,
            "estimate_gb": 6.1,
        },
    )
    assert line is not None
    assert "batch 2" in line and "checkpointing on" in line and "6.1 GB of a 8.0 GB budget" in line
    assert line.endswith("; batch 4 -> 2 to fit")


def test_errors_name_what_and_where(narrator: Narrator) -> None:
    problems = [{"what": "the disk is full", "where": "/tmp/x", "fix": "free 2 GB"}]
    assert narrator.line("error", {"problems": problems}) == "the disk is full (/tmp/x)"
    assert narrator.line("unknown-kind", {}) is None


def test_the_emitter_tells_the_narrator_every_event(caplog: pytest.LogCaptureFixture) -> None:
    import io

    from lorainbox.trainers.base import Emitter

    emitter = Emitter(io.StringIO(), narrate=Narrator(logging.getLogger("test.trainlog")))
    with caplog.at_level(logging.INFO, logger="test.trainlog"):
        emitter.emit("checkpoint", step=40)
    assert caplog.messages == ["checkpoint saved at step 40"]
