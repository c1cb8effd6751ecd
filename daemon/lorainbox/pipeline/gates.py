"""Whether a job may train now: pure functions of its schedule, the sensor readings and the clock.

Each gate gives a check with a reason a person can read ("on battery (42%)"). Unknown readings
are decided per gate, in its docstring. While a job runs (``running=True``) some gates are
looser, so a job that has started doesn't flap between training and paused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from lorainbox.drop.window import parse_window
from lorainbox.platform.sensors.base import Readings

if TYPE_CHECKING:
    from lorainbox.drop.recipe import ScheduleSpec

USER_BACK_SECONDS = 60.0
"""While a job runs, input this recent means the person came back."""


@dataclass(frozen=True)
class GateCheck:
    gate: str
    ok: bool
    reason: str
    unknown: bool = False
    """The reading this gate needs couldn't be taken; ``ok`` says what was decided anyway."""


@dataclass(frozen=True)
class GateResult:
    ok: bool
    waiting_for: str | None
    details: list[GateCheck] = field(default_factory=list)


def evaluate(
    schedule: ScheduleSpec,
    readings: Readings,
    now: datetime,
    *,
    running: bool = False,
    memory_needed_gb: float | None = None,
) -> GateResult:
    """All gates for one job. ``now`` is local wall-clock time (the window is in local time)."""
    checks = [
        check_power(schedule, readings),
        check_idle(schedule, readings, running=running),
        check_window(schedule, now),
        check_thermal(readings, running=running),
        check_low_power(readings),
        check_memory(readings, memory_needed_gb, running=running),
    ]
    failing = [c.reason for c in checks if not c.ok]
    return GateResult(not failing, "; ".join(failing) or None, checks)


def waits_only_for_idle(result: GateResult, r: Readings) -> bool:
    """Whether the one thing keeping a job back is the person's recent input, on AC power.

    Then idle sleep must not come first: with a sleep timer shorter than ``idle_minutes``
    the Mac falls asleep before the idle gate can open. On battery no job trains anyway.
    """
    failing = [c for c in result.details if not c.ok]
    return (
        bool(failing)
        and all(c.gate == "idle" and not c.unknown for c in failing)
        and r.on_ac_power is True
    )


def check_power(schedule: ScheduleSpec, r: Readings) -> GateCheck:
    """Wall power, or with ``require_ac_power = false`` enough battery.

    Unknown power source: allowed (the reason says so). A machine whose power can't be read is
    far more often a desktop than a laptop on battery, and refusing would never train at all.
    Known to be on battery but with an unknown charge, when a minimum is set: waits.
    """
    if r.on_ac_power is None and r.has_battery is False:
        return GateCheck("power", True, "no battery: runs from the wall")
    if not schedule.require_ac_power:
        return _battery_floor(schedule.min_battery_percent, r)
    if r.on_ac_power is None:
        return GateCheck("power", True, "power source unknown; allowed", unknown=True)
    if r.on_ac_power:
        return GateCheck("power", True, "on AC power")
    charge = f" ({r.battery_percent}%)" if r.battery_percent is not None else ""
    return GateCheck("power", False, f"on battery{charge}")


def _battery_floor(minimum: int, r: Readings) -> GateCheck:
    if r.on_ac_power is not False or minimum == 0:
        return GateCheck("power", True, "AC power not required")
    if r.battery_percent is None:
        return GateCheck(
            "power", False, f"on battery, charge unknown (need {minimum}%)", unknown=True
        )
    ok = r.battery_percent >= minimum
    verb = "at" if ok else "below"
    return GateCheck("power", ok, f"on battery ({r.battery_percent}%, {verb} {minimum}%)")


def check_idle(schedule: ScheduleSpec, r: Readings, *, running: bool = False) -> GateCheck:
    """With ``when = "idle"``, no keyboard or mouse input for ``idle_minutes``.

    Unknown idle time before a job starts: waits. A person who asked for "idle" doesn't want
    training under their hands, and the reason points at ``when = "now"`` for machines that
    can't tell (a Linux box with no desktop). Once running, an unknown reading (say one ``ioreg``
    timeout) doesn't stop the job. While running the gate fails only when input is under a
    minute old: the person came back.
    """
    if schedule.when == "now":
        return GateCheck("idle", True, 'not waiting for idle (when = "now")')
    need = schedule.idle_minutes * 60
    idle = r.idle_seconds
    if idle is None:
        if running:
            return GateCheck("idle", True, "idle time unknown; keeps running", unknown=True)
        return GateCheck(
            "idle",
            False,
            'idle time unknown on this machine (set when = "now" to train anyway)',
            unknown=True,
        )
    if running:
        back = min(USER_BACK_SECONDS, need)
        if idle < back:
            return GateCheck("idle", False, f"user is back (idle {_duration(idle)})")
        return GateCheck("idle", True, f"user away (idle {_duration(idle)})")
    if idle >= need:
        return GateCheck("idle", True, f"idle {_duration(idle)}")
    of = f"{schedule.idle_minutes:g}" if idle >= 60 else f"{schedule.idle_minutes:g} min"
    return GateCheck("idle", False, f"user active (idle {_duration(idle)} of {of})")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds // 60:.0f} min"


def check_window(schedule: ScheduleSpec, now: datetime) -> GateCheck:
    """Inside the allowed hours, if a window is set. Never unknown: it only needs the clock.
    A running job stops when the window closes."""
    if schedule.window is None:
        return GateCheck("window", True, "any time of day")
    window = parse_window(schedule.window)
    if window.contains(now.time()):
        return GateCheck("window", True, f"inside window {window}")
    return GateCheck("window", False, f"outside window {window}")


def check_thermal(r: Readings, *, running: bool = False) -> GateCheck:
    """Not too hot: a job starts at nominal or fair and is stopped only at critical, since its
    own heat would otherwise pause and resume it over and over.

    Unknown thermal state: allowed. macOS throttles a hot machine by itself, and most Linux
    machines have no reading at all.
    """
    if r.thermal is None:
        return GateCheck("thermal", True, "thermal state unknown; allowed", unknown=True)
    blocked = ("critical",) if running else ("serious", "critical")
    return GateCheck("thermal", r.thermal not in blocked, f"thermal: {r.thermal}")


def check_low_power(r: Readings) -> GateCheck:
    """Low Power Mode off: a person who turned it on asked the machine to save energy.
    Unknown: allowed (older macOS and most Linux machines have no such mode)."""
    if r.low_power_mode is None:
        return GateCheck("low_power", True, "low-power mode unknown; allowed", unknown=True)
    if r.low_power_mode:
        return GateCheck("low_power", False, "low-power mode")
    return GateCheck("low_power", True, "low-power mode off")


def check_memory(r: Readings, needed_gb: float | None, *, running: bool = False) -> GateCheck:
    """Enough free memory for the job's estimate, and the system not already under critical
    pressure, when the job starts.

    Once running, the job's own use lowers free memory, so this gate passes; the worker's
    memory guard handles running out. Unknown free memory or pressure: allowed (the memory
    guard still limits the job). No estimate: only pressure is checked.
    """
    if running:
        return GateCheck("memory", True, "memory was checked when the job started")
    if r.memory_pressure == "critical":
        return GateCheck("memory", False, "memory pressure: critical")
    if needed_gb is None:
        return GateCheck("memory", True, "no memory estimate for this job")
    if r.memory_available_gb is None:
        return GateCheck("memory", True, "free memory unknown; allowed", unknown=True)
    ok = r.memory_available_gb >= needed_gb
    return GateCheck(
        "memory", ok, f"memory: {r.memory_available_gb:.1f} GB free of {needed_gb:g} needed"
    )
