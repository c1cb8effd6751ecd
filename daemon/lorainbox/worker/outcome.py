"""How a worker run ended, and what that means for its job: one rule for the daemon and for
``lorainbox train``. The worker says it with its exit code (sysexits-style numbers)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

EXIT_OK = 0
EXIT_DROP_ERROR = 65  # EX_DATAERR: the person can fix it; ERROR.md says how
EXIT_OUT_OF_MEMORY = 71  # retried with a smaller footprint
EXIT_PAUSED = 75  # EX_TEMPFAIL: checkpoint saved, resume later


class Verdict(str, Enum):
    TRAINED = "trained"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DROP_ERROR = "drop error"
    """The person can fix it: the worker's problems say what, where and how."""
    OUT_OF_MEMORY = "out of memory"
    CRASHED = "crashed"
    """Anything else: retried from the last checkpoint, a few times."""


@dataclass
class Outcome:
    """How a worker run ended, as the supervisor saw it."""

    job_id: int
    code: int
    stop_reason: str | None
    """Why the supervisor stopped the worker ("cancel", "hold", "shutdown", "gate: …"), if it did."""
    problems: list[dict[str, str]] | None = None
    paused_step: int | None = None
    message: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.stop_reason == "cancel":
            return Verdict.CANCELLED
        if self.code == EXIT_OK:
            return Verdict.TRAINED
        if self.code == EXIT_PAUSED or (self.stop_reason and self.code < 0):
            return Verdict.PAUSED  # stopped by a signal before it could checkpoint
        if self.code == EXIT_DROP_ERROR:
            return Verdict.DROP_ERROR
        if self.code == EXIT_OUT_OF_MEMORY:
            return Verdict.OUT_OF_MEMORY
        return Verdict.CRASHED
