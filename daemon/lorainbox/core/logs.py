"""One rotating log file in the state directory, plus the terminal when someone is watching."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FILE = "lorainbox.log"


class KnownNoise(logging.Filter):
    """Drops two harmless lines that read as alarms: watchdog's ERROR when a watch is removed
    while its thread reads (the inbox removes a drop's inner watch as it hands the drop over),
    and APScheduler's skipped tick while the last one still runs (the next tick catches up)."""

    NOISE = ("called when the thread is inactive", "maximum number of running instances reached")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


def setup_logging(log_dir: Path, *, console: bool, level: int = logging.INFO) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_FILE
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=3)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    if console:
        if sys.stderr.isatty():
            from rich.logging import RichHandler

            root.addHandler(RichHandler(show_path=False, rich_tracebacks=True))
        else:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            root.addHandler(stream)
    for handler in root.handlers:  # on handlers: a logger's filter misses its children's lines
        handler.addFilter(KnownNoise())
    for noisy in ("apscheduler", "httpx", "httpcore", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
