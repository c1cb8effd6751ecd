"""The daemon's log keeps what matters and drops two known harmless alarms."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorainbox.core.logs import setup_logging


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    path = setup_logging(tmp_path, console=False)
    yield path
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_known_noise_is_dropped_and_real_errors_kept(log_file: Path) -> None:
    logging.getLogger("watchdog.observers.inotify").error(
        "InotifyEmitter.queue_events() called when the thread is inactive"
    )
    logging.getLogger("apscheduler.scheduler").warning(
        'Execution of job "tick" skipped: maximum number of running instances reached (1)'
    )
    logging.getLogger("watchdog.observers.inotify").error("inotify watch limit reached")
    logging.getLogger("lorainbox.pipeline.service").info("queued job 1 good")
    text = log_file.read_text()
    assert "thread is inactive" not in text and "maximum number of running" not in text
    assert "inotify watch limit reached" in text and "queued job 1 good" in text


def test_a_mac_logs_where_console_looks(tmp_path: Path) -> None:
    from lorainbox.core.config import default_state_dir, log_dir_for

    assert log_dir_for(default_state_dir(), "darwin") == Path.home() / "Library/Logs/lorainbox"
    assert log_dir_for(tmp_path, "darwin") == tmp_path / "logs"  # a moved state folder
    assert log_dir_for(default_state_dir(), "linux") == default_state_dir() / "logs"


def test_the_agent_logs_once_to_the_rotated_file(tmp_path: Path) -> None:
    """Under launchd stderr is agent.err.log, never rotated: `--log-file-only` keeps the lines
    out of it, so each is written once, to the rotated log."""
    import os

    from tests.daemon_proc import lorainbox

    inbox = tmp_path / "inbox"
    done = lorainbox("run", "--once", "--log-file-only", "--inbox", inbox, timeout=120)
    assert done.returncode == 0, done.stderr
    log = Path(os.environ["LORAINBOX_STATE_DIR"]) / "logs" / "lorainbox.log"
    assert f"watching {inbox}" in log.read_text()
    assert "watching" not in done.stderr + done.stdout
