"""Linux sensors: power supplies from sysfs, idleness from logind, memory from psutil.

Linux has no common thermal or memory-pressure signal that maps onto the macOS levels, so
those stay unknown; Low Power Mode is read from the ACPI platform profile where there is one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lorainbox.platform.sensors.base import (
    CommandRunner,
    Readings,
    memory_available_gb,
    now_utc,
    run_text,
)

POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")
PLATFORM_PROFILE = Path("/sys/firmware/acpi/platform_profile")


@dataclass(frozen=True)
class Supply:
    name: str
    type: str
    online: bool | None
    capacity: int | None
    status: str | None
    scope: str | None


@dataclass(frozen=True)
class LinuxPower:
    on_ac_power: bool | None
    has_battery: bool | None
    battery_percent: int | None


def read_supplies(root: Path) -> list[Supply] | None:
    """Every entry under ``/sys/class/power_supply``; ``None`` when the folder can't be read."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return None
    supplies = []
    for entry in entries:
        online = _attr(entry / "online")
        capacity = _attr(entry / "capacity")
        supplies.append(
            Supply(
                name=entry.name,
                type=_attr(entry / "type") or "Unknown",
                online=None if online is None else online == "1",
                capacity=int(capacity) if capacity and capacity.isdigit() else None,
                status=_attr(entry / "status"),
                scope=_attr(entry / "scope"),
            )
        )
    return supplies


def _attr(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def power_from_supplies(supplies: Sequence[Supply] | None) -> LinuxPower:
    """AC power, battery presence and charge from the kernel's power supplies.

    A mains or USB adapter that is online means wall power. Peripheral batteries (a mouse's,
    ``scope`` = Device) are ignored. A machine with no battery at all runs from the mains.
    Without an adapter to ask, the battery's or UPS's status decides ("Discharging" = not on AC).
    """
    if supplies is None:
        return LinuxPower(None, None, None)
    system = [s for s in supplies if s.scope != "Device"]
    adapters = [s for s in system if s.type == "Mains" or s.type.startswith("USB")]
    batteries = [s for s in system if s.type == "Battery"]
    stores = batteries + [s for s in system if s.type == "UPS"]
    charges = [s.capacity for s in batteries if s.capacity is not None]
    percent = round(sum(charges) / len(charges)) if charges else None

    on_ac: bool | None
    if any(a.online for a in adapters):
        on_ac = True
    elif any(a.online is False for a in adapters):
        on_ac = False
    elif stores:
        statuses = {s.status for s in stores}
        if "Discharging" in statuses:
            on_ac = False
        elif statuses & {"Charging", "Full", "Not charging"}:
            on_ac = True
        else:
            on_ac = None
    else:
        on_ac = True
    return LinuxPower(on_ac, bool(batteries), percent)


def parse_logind_idle(text: str, now: float) -> float | None:
    """Seconds idle from ``loginctl show-… -p IdleHint -p IdleSinceHint`` output.

    ``IdleSinceHint`` is when the hint last changed (µs since the epoch). Zero means no desktop
    has ever reported idleness (a console or SSH login): that is unknown, not "busy forever".
    Desktops set the hint only after their own idle delay, so this undercounts, never over.
    """
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    hint, since = props.get("IdleHint"), props.get("IdleSinceHint", "")
    if hint not in ("yes", "no") or not since.isdigit() or int(since) == 0:
        return None
    if hint == "no":
        return 0.0
    return max(0.0, now - int(since) / 1e6)


def parse_platform_profile(text: str | None) -> bool | None:
    """``low-power`` in ``/sys/firmware/acpi/platform_profile`` is Linux's Low Power Mode."""
    return None if text is None else text.strip() == "low-power"


class LinuxSensors:
    """Reads a Linux machine; the sysfs paths are parameters so tests can build a fake tree."""

    def __init__(
        self,
        sysfs_root: Path = POWER_SUPPLY_ROOT,
        *,
        platform_profile: Path = PLATFORM_PROFILE,
        session_id: str | None = None,
        run: CommandRunner = run_text,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sysfs_root = sysfs_root
        self.platform_profile = platform_profile
        self.session_id = session_id if session_id is not None else os.environ.get("XDG_SESSION_ID")
        self._run = run
        self._clock = clock

    def idle_command(self) -> list[str]:
        """The session's hint when the daemon knows its session, else the user's (a systemd user
        service has no session of its own; logind aggregates the user's sessions)."""
        props = ["-p", "IdleHint", "-p", "IdleSinceHint"]
        if self.session_id:
            return ["loginctl", "show-session", self.session_id, *props]
        return ["loginctl", "show-user", str(os.getuid()), *props]

    def read(self) -> Readings:
        power = power_from_supplies(read_supplies(self.sysfs_root))
        idle_text = self._run(self.idle_command())
        return Readings(
            idle_seconds=parse_logind_idle(idle_text, self._clock()) if idle_text else None,
            on_ac_power=power.on_ac_power,
            battery_percent=power.battery_percent,
            has_battery=power.has_battery,
            low_power_mode=parse_platform_profile(_attr(self.platform_profile)),
            memory_available_gb=memory_available_gb(),
            taken_at=now_utc(),
        )
