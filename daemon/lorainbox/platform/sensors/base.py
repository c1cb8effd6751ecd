"""What the gates need to know about the machine, and how a reading is taken.

Every field may be ``None``: a reading that could not be taken is *unknown*, never a guess.
The gates decide what unknown means for each of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, Protocol

import psutil

from lorainbox.platform.commands import run_command

log = logging.getLogger(__name__)

Thermal = Literal["nominal", "fair", "serious", "critical"]
MemoryPressure = Literal["normal", "warn", "critical"]

THERMAL_LEVELS: tuple[Thermal, ...] = ("nominal", "fair", "serious", "critical")
MEMORY_PRESSURES: tuple[MemoryPressure, ...] = ("normal", "warn", "critical")

CommandRunner = Callable[[Sequence[str]], str | None]
"""Runs argv and returns its output, or ``None`` when the command could not give one."""


@dataclass(frozen=True, kw_only=True)
class Readings:
    idle_seconds: float | None = None
    on_ac_power: bool | None = None
    battery_percent: int | None = None
    """The Mac's own battery; ``None`` when there is none or it can't be read."""
    has_battery: bool | None = None
    low_power_mode: bool | None = None
    thermal: Thermal | None = None
    memory_available_gb: float | None = None
    memory_pressure: MemoryPressure | None = None
    taken_at: datetime


class Sensors(Protocol):
    def read(self) -> Readings: ...


class UnknownSensors:
    """For platforms with no sensors: every reading is unknown, so the gates' defaults decide."""

    def read(self) -> Readings:
        return Readings(memory_available_gb=memory_available_gb(), taken_at=now_utc())


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def memory_available_gb() -> float | None:
    """Memory a new process can take without swapping (psutil's ``available``), in GB."""
    try:
        return psutil.virtual_memory().available / 1e9
    except Exception:  # psutil raises platform-specific errors; any of them means unknown
        log.debug("psutil could not read memory", exc_info=True)
        return None


def run_text(argv: Sequence[str], timeout: float = 5.0) -> str | None:
    """Output (stdout and stderr together) of a command that exits 0; ``None`` on any failure.

    stderr is kept because some tools print part of their answer there (``pmset -g therm``
    writes "CPU Power notify" to stderr).
    """
    done = run_command(argv, timeout)
    if not done.ok:
        log.debug("sensor command %s exited %s: %s", argv, done.returncode, done.output[-300:])
        return None
    return done.output
