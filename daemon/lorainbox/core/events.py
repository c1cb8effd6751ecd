"""The events on the hub. Plain frozen dataclasses: easy to log, compare and test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DropReady:
    """A folder in the inbox has settled and can be taken in."""

    path: Path


@dataclass(frozen=True)
class DropRejected:
    name: str
    path: Path
    message: str


@dataclass(frozen=True)
class JobChanged:
    """A job moved to a new state (every transition, see ``jobs.State``)."""

    job_id: int
    name: str
    state: str
    previous: str | None
    detail: str | None = None


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    progress: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Wake:
    """Something happened that may let a job start: the scheduler should look now."""

    reason: str
