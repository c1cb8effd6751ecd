"""macOS sensors: Apple's own command-line tools, parsed from the text they print, and the
thermal state from Foundation (:mod:`thermal`).

The parsers are pure functions of that text so they can be tested on real captures
(``tests/data/macos/``) on any platform. The class only runs the commands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import psutil

from lorainbox.platform.sensors.base import (
    THERMAL_LEVELS,
    CommandRunner,
    MemoryPressure,
    Readings,
    Thermal,
    memory_available_gb,
    now_utc,
    run_text,
)
from lorainbox.platform.sensors.thermal import (
    ThermalReader,
    read_process_info_thermal_state,
    thermal_from_process_info,
)

IOREG_IDLE = ("/usr/sbin/ioreg", "-r", "-c", "IOHIDSystem", "-d", "1")
PMSET_BATT = ("/usr/bin/pmset", "-g", "batt")
PMSET_PS = ("/usr/bin/pmset", "-g", "ps")
PMSET_THERM = ("/usr/bin/pmset", "-g", "therm")
PMSET_SETTINGS = ("/usr/bin/pmset", "-g")
SYSCTL_PRESSURE = ("/usr/sbin/sysctl", "-n", "kern.memorystatus_vm_pressure_level")
MEMORY_PRESSURE = ("/usr/bin/memory_pressure", "-Q")
SYSCTL_MEMORY = ("/usr/sbin/sysctl", "kern.memorystatus_level", "hw.memsize")

PowerSourceName = Literal["ac", "battery", "ups"]


@dataclass(frozen=True)
class PowerState:
    source: PowerSourceName | None
    on_ac_power: bool | None
    has_battery: bool | None
    battery_percent: int | None
    battery_state: str | None
    """pmset's words: "charging", "discharging", "charged", "AC attached", "finishing charge"."""


UNKNOWN_POWER = PowerState(None, None, None, None, None)

_SOURCE = re.compile(r"drawing from '(AC|Battery|UPS) Power'")
_SOURCES: dict[str, PowerSourceName] = {"AC": "ac", "Battery": "battery", "UPS": "ups"}
_DEVICE = re.compile(
    r"^[ \t]*-(?P<name>\S.*?)[ \t]*(?:\(id=\d+\))?[ \t]+(?P<pct>\d{1,3})%;[ \t]*(?P<state>[^;\n]*)",
    re.M,
)
_PLUGGED_STATES = ("charging", "charged", "AC attached", "finishing charge")


def parse_pmset_batt(text: str) -> PowerState:
    """``pmset -g batt`` (or ``pmset -g ps``, which prints the same).

    The first line says where power comes from: AC, the Mac's battery, or a UPS running on its
    own battery (the wall is out, so not AC). One line per power source follows; the Mac's own
    battery is ``InternalBattery-N``, anything else is a UPS. A desktop prints only the first line.
    """
    source_match = _SOURCE.search(text)
    source = _SOURCES[source_match.group(1)] if source_match else None
    internal = [m for m in _DEVICE.finditer(text) if m.group("name").startswith("InternalBattery")]
    if source is None and not internal:
        return UNKNOWN_POWER
    percent = state = None
    if internal:
        percent = min(int(internal[0].group("pct")), 100)
        state = re.sub(r"\s*present:\s*\w+\s*$", "", internal[0].group("state")).strip() or None
    if source is not None:
        on_ac: bool | None = source == "ac"
    elif state is not None:
        on_ac = True if state in _PLUGGED_STATES else (False if state == "discharging" else None)
    else:
        on_ac = None
    return PowerState(source, on_ac, bool(internal), percent, state)


_IDLE = re.compile(r'"HIDIdleTime"\s*=\s*(\d+)')


def parse_ioreg_idle(text: str) -> float | None:
    """Seconds since the last keyboard, mouse or trackpad input (``HIDIdleTime``, in ns).

    With several IOHIDSystem entries the smallest wins: input on any of them is a person.
    """
    values = [int(v) for v in _IDLE.findall(text)]
    return min(values) / 1e9 if values else None


_WARNING_LEVEL = re.compile(r"Thermal Warning Level\s*[=:]\s*(\d+)", re.I)
_CPU_LIMIT = re.compile(r"CPU_(Speed|Scheduler)_Limit\s*=\s*(\d+)")


def parse_pmset_therm(text: str) -> Thermal | None:
    """``pmset -g therm``, mapped onto the levels of ``ProcessInfo.thermalState``.

    Two signals, the worse wins: the thermal warning level (IOPM.h: 0 normal, 5 or 100 danger,
    10 or 110 crisis) and the last CPU power notice (the share of full speed the CPU may use).
    "No thermal warning level has been recorded" with no CPU notice, which is all Apple Silicon
    prints, reads as nominal: that is what macOS says, and it never blocks a job anyway.
    """
    found: list[Thermal] = []
    levels = _WARNING_LEVEL.findall(text)
    if levels:
        warning = _thermal_from_warning(int(levels[-1]))
        if warning:
            found.append(warning)
    latest = {kind: int(value) for kind, value in _CPU_LIMIT.findall(text)}
    if latest:
        found.append(_thermal_from_cpu_limit(min(latest.values())))
    if found:
        return max(found, key=THERMAL_LEVELS.index)
    if "No thermal warning level has been recorded" in text:
        return "nominal"
    return None


def _thermal_from_warning(level: int) -> Thermal | None:
    if level == 0:
        return "nominal"
    if level in (10, 110):
        return "critical"
    if level in (5, 100):
        return "serious"
    return None if level == 255 else "fair"


def _thermal_from_cpu_limit(percent: int) -> Thermal:
    if percent >= 100:
        return "nominal"
    if percent >= 80:
        return "fair"
    if percent >= 50:
        return "serious"
    return "critical"


_POWER_MODE = re.compile(r"^[ \t]*(?:lowpowermode|powermode)[ \t]+(\d+)", re.M)


def parse_pmset_low_power(text: str) -> bool | None:
    """Low Power Mode from ``pmset -g``: ``lowpowermode 1``, or ``powermode 1`` on Macs that
    also have a High Power Mode (there ``powermode`` is 0 automatic, 1 low, 2 high)."""
    values = _POWER_MODE.findall(text)
    if not values:
        return None
    return "1" in values


@dataclass(frozen=True)
class SleepTimer:
    """The system sleep timer from ``pmset -g``: what decides whether a Mac left alone sleeps."""

    minutes: int
    """Idle minutes before system sleep; 0 is never (pmset(1))."""
    disabled: bool
    """``SleepDisabled 1`` (``pmset disablesleep 1``): the Mac never sleeps by itself."""
    prevented_by: tuple[str, ...]
    """Who holds an assertion against sleep right now ("sleep prevented by sharingd")."""


_SLEEP = re.compile(r"^[ \t]*sleep[ \t]+(\d+)(?:[ \t]*\(sleep prevented by ([^)]*)\))?", re.M)
_SLEEP_DISABLED = re.compile(r"^[ \t]*SleepDisabled[ \t]+(\d+)", re.M)


def parse_pmset_sleep(text: str) -> SleepTimer | None:
    """The ``sleep`` line of ``pmset -g`` (settings in use for the present power source)."""
    m = _SLEEP.search(text)
    if m is None:
        return None
    disabled = _SLEEP_DISABLED.search(text)
    holders = tuple(dict.fromkeys(h.strip() for h in (m.group(2) or "").split(",") if h.strip()))
    return SleepTimer(int(m.group(1)), bool(disabled and disabled.group(1) == "1"), holders)


def sleep_advice(timer: SleepTimer, idle_minutes: float) -> tuple[bool | None, str]:
    """Whether idle sleep can come before a recipe's ``idle_minutes``, and what to change.

    (True: it can't; None: it can, but the daemon holds it off on AC power while a job
    waits for idle, which is all it needs; the text says how to make sure anyway.)
    """
    if timer.disabled or timer.minutes == 0:
        return True, "system sleep is off"
    if timer.minutes > idle_minutes:
        return True, (
            f"system sleep after {timer.minutes} min idle, later than the {idle_minutes:g} min "
            "a job waits for"
        )
    return None, (
        f"system sleep after {timer.minutes} min idle comes before the {idle_minutes:g} min "
        "idle a job waits for; the daemon holds it off with `caffeinate -i` while a job waits "
        "for idle on AC power. If the Mac still sleeps (the daemon not running, another power "
        'setting), turn on System Settings > Battery > Options > "Prevent automatic sleeping '
        'on power adapter when the display is off" (Energy Saver on a desktop), or run '
        f"`sudo pmset -c sleep {math.ceil(idle_minutes) + 5}`"
    )


_PRESSURE_LEVELS: dict[int, MemoryPressure] = {1: "normal", 2: "warn", 4: "critical"}


def parse_vm_pressure_level(text: str) -> MemoryPressure | None:
    """``sysctl [-n] kern.memorystatus_vm_pressure_level``: 1 normal, 2 warn, 4 critical."""
    m = re.search(r"kern\.memorystatus_vm_pressure_level\s*[:=]\s*(\d+)", text) or re.fullmatch(
        r"\s*(\d+)\s*", text
    )
    return _PRESSURE_LEVELS.get(int(m.group(1))) if m else None


def parse_memorystatus_level(text: str) -> int | None:
    """``kern.memorystatus_level``: the share of memory (0-100) the kernel counts as
    available, free pages and what it can drop or compress, as Activity Monitor's memory
    pressure graph does (psutil's ``available`` leaves out compressible memory)."""
    m = re.search(r"kern\.memorystatus_level\s*[:=]\s*(\d+)", text)
    return min(int(m.group(1)), 100) if m else None


def parse_memsize(text: str) -> int | None:
    m = re.search(r"hw\.memsize\s*[:=]\s*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_memory_free_percent(text: str) -> float | None:
    """The last line of ``memory_pressure``: "System-wide memory free percentage: 42%"."""
    m = re.search(r"System-wide memory free percentage:\s*(\d+(?:\.\d+)?)%", text)
    return float(m.group(1)) if m else None


def pressure_from_free_percent(percent: float) -> MemoryPressure:
    """A rough level for when the kernel's own level can't be read; the thresholds are ours."""
    if percent <= 5:
        return "critical"
    if percent <= 15:
        return "warn"
    return "normal"


T = TypeVar("T")


class MacSensors:
    """Reads the Mac through ``ioreg``, ``pmset``, ``sysctl`` and the Objective-C runtime;
    each failure is unknown."""

    def __init__(
        self,
        run: CommandRunner = run_text,
        thermal_state: ThermalReader = read_process_info_thermal_state,
    ) -> None:
        self._run = run
        self._thermal_state = thermal_state

    def read(self) -> Readings:
        power = self._parse(PMSET_BATT, parse_pmset_batt) or UNKNOWN_POWER
        if power.on_ac_power is None:
            power = self._parse(PMSET_PS, parse_pmset_batt) or UNKNOWN_POWER
        return Readings(
            idle_seconds=self._parse(IOREG_IDLE, parse_ioreg_idle),
            on_ac_power=power.on_ac_power,
            battery_percent=power.battery_percent,
            has_battery=power.has_battery,
            low_power_mode=self._parse(PMSET_SETTINGS, parse_pmset_low_power),
            thermal=self._thermal(),
            memory_available_gb=self._memory_available_gb(),
            memory_pressure=self._memory_pressure(),
            taken_at=now_utc(),
        )

    def _thermal(self) -> Thermal | None:
        """The worse of ``thermalState`` and ``pmset -g therm``; pmset alone says nothing on
        Apple Silicon, and ``thermalState`` needs Foundation, which is always there on a Mac."""
        found = [
            t
            for t in (
                thermal_from_process_info(self._thermal_state()),
                self._parse(PMSET_THERM, parse_pmset_therm),
            )
            if t is not None
        ]
        return max(found, key=THERMAL_LEVELS.index) if found else None

    def _memory_available_gb(self) -> float | None:
        """``kern.memorystatus_level`` of the memory; psutil's figure when it can't be read."""
        text = self._run(SYSCTL_MEMORY)
        level = parse_memorystatus_level(text) if text is not None else None
        if level is None:
            return memory_available_gb()
        total = parse_memsize(text or "") or psutil.virtual_memory().total
        return level / 100 * total / 1e9

    def _memory_pressure(self) -> MemoryPressure | None:
        level = self._parse(SYSCTL_PRESSURE, parse_vm_pressure_level)
        if level is not None:
            return level
        free = self._parse(MEMORY_PRESSURE, parse_memory_free_percent)
        return pressure_from_free_percent(free) if free is not None else None

    def _parse(self, argv: Sequence[str], parser: Callable[[str], T]) -> T | None:
        text = self._run(argv)
        return parser(text) if text is not None else None
