"""macOS parsers on real captures (tests/data/macos, see SOURCES.md), and the sensor class
driven by a fake command runner that answers with those captures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest
from lorainbox.platform.sensors.macos import (
    IOREG_IDLE,
    MEMORY_PRESSURE,
    PMSET_BATT,
    PMSET_PS,
    PMSET_SETTINGS,
    PMSET_THERM,
    SYSCTL_MEMORY,
    SYSCTL_PRESSURE,
    MacSensors,
    PowerState,
    SleepTimer,
    parse_ioreg_idle,
    parse_memory_free_percent,
    parse_memorystatus_level,
    parse_pmset_batt,
    parse_pmset_low_power,
    parse_pmset_sleep,
    parse_pmset_therm,
    parse_vm_pressure_level,
    pressure_from_free_percent,
)
from lorainbox.platform.sensors.thermal import (
    read_process_info_thermal_state,
    thermal_from_process_info,
)

DATA = Path(__file__).parent / "data" / "macos"


def capture(name: str) -> str:
    return (DATA / name).read_text()


BATT = {
    "pmset_batt_ac_charged.txt": PowerState("ac", True, True, 100, "charged"),
    "pmset_batt_ac_charging.txt": PowerState("ac", True, True, 36, "charging"),
    "pmset_batt_ac_charging_no_id.txt": PowerState("ac", True, True, 91, "charging"),
    "pmset_batt_ac_charging_spaces.txt": PowerState("ac", True, True, 84, "charging"),
    "pmset_batt_ac_attached_not_charging.txt": PowerState("ac", True, True, 88, "AC attached"),
    "pmset_batt_battery_discharging.txt": PowerState("battery", False, True, 95, "discharging"),
    "pmset_batt_battery_no_estimate.txt": PowerState("battery", False, True, 90, "discharging"),
    "pmset_batt_desktop_no_battery.txt": PowerState("ac", True, False, None, None),
    "pmset_batt_ups_on_ac.txt": PowerState("ac", True, False, None, None),
    "pmset_batt_ups_on_ups_power.txt": PowerState("ups", False, False, None, None),
}
IDLE = {
    "ioreg_hidsystem_mac_mini.txt": 0.040165394,
    "ioreg_hidsystem_grep.txt": 0.031068206,
}
THERM = {
    "pmset_therm_apple_silicon.txt": "nominal",
    "pmset_therm_intel_unthrottled.txt": "nominal",
    "pmset_thermlog_throttled.txt": "critical",
}
LOW_POWER = {
    "pmset_g_lowpowermode_off.txt": False,
    "pmset_g_lowpowermode_on_grep.txt": True,
    "pmset_g_powermode_low.txt": True,
}
PRESSURE = {
    "sysctl_vm_pressure_light_load.txt": "normal",
    "sysctl_vm_pressure_heavy_load.txt": "critical",
    "sysctl_memorystatus_level_loaded.txt": "warn",
}
MEMORY_LEVEL = {"sysctl_memorystatus_level_loaded.txt": 41}
FREE_PERCENT = {"memory_pressure_tail.txt": 49.0}
SLEEP = {"pmset_g_macbook_sleep_1.txt": SleepTimer(1, False, ("sharingd",))}
"""More sleep lines are read in test_keepawake.py (pmset_g_lowpowermode_off.txt has one too)."""
TABLES = [BATT, IDLE, THERM, LOW_POWER, PRESSURE, FREE_PERCENT, SLEEP, MEMORY_LEVEL]
ALL_CAPTURES = sorted({name for table in TABLES for name in table})


def test_every_capture_is_tested_and_has_a_source() -> None:
    on_disk = sorted(p.name for p in DATA.glob("*.txt"))
    assert on_disk == ALL_CAPTURES
    sources = (DATA / "SOURCES.md").read_text()
    assert [name for name in on_disk if f"`{name}`" not in sources] == []


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_every_parser_on_every_capture(name: str) -> None:
    """Each parser reads its own captures and finds nothing in the others'."""
    text = capture(name)
    assert parse_pmset_batt(text) == BATT.get(name, PowerState(None, None, None, None, None))
    assert parse_ioreg_idle(text) == pytest.approx(IDLE.get(name))
    assert parse_pmset_therm(text) == THERM.get(name)
    assert parse_pmset_low_power(text) == LOW_POWER.get(name)
    assert parse_vm_pressure_level(text) == PRESSURE.get(name)
    assert parse_memorystatus_level(text) == MEMORY_LEVEL.get(name)
    if name in SLEEP:
        assert parse_pmset_sleep(text) == SLEEP[name]
    elif not name.startswith("pmset_g_"):  # the other `pmset -g` captures have a sleep line
        assert parse_pmset_sleep(text) is None
    assert parse_memory_free_percent(text) == FREE_PERCENT.get(name)


def test_a_ups_line_is_not_the_macs_battery() -> None:
    text = capture("pmset_batt_ups_on_ac.txt")
    assert "100%" in text
    assert parse_pmset_batt(text).battery_percent is None


def test_the_state_of_the_internal_battery_decides_when_the_header_is_missing() -> None:
    line = capture("pmset_batt_battery_discharging.txt").splitlines()[1]
    assert parse_pmset_batt(line) == PowerState(None, False, True, 95, "discharging")
    plugged = capture("pmset_batt_ac_charged.txt").splitlines()[1]
    assert parse_pmset_batt(plugged).on_ac_power is True


def test_the_newer_source_wording_for_a_ups() -> None:
    text = "Now drawing from 'UPS Power'\n"
    assert parse_pmset_batt(text).on_ac_power is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pmset.c prints a recorded level as "Thermal Warning Level = %d" (IOPM.h levels).
        ("Thermal Warning Level = 0\n", "nominal"),
        ("Thermal Warning Level = 5\n", "serious"),
        ("Thermal Warning Level = 100\n", "serious"),
        ("Thermal Warning Level = 10\n", "critical"),
        ("Thermal Warning Level = 110\n", "critical"),
        ("Thermal Warning Level = 1\n", "fair"),
        ("Thermal Warning Level = 255\n", None),
        ("\tCPU_Speed_Limit \t= 90\n", "fair"),
        ("\tCPU_Speed_Limit \t= 60\n", "serious"),
        # The worse of the two signals wins.
        ("Thermal Warning Level = 0\n\tCPU_Speed_Limit \t= 40\n", "critical"),
        ("", None),
        ("pmset: command not found", None),
    ],
)
def test_thermal_levels(text: str, expected: str | None) -> None:
    assert parse_pmset_therm(text) == expected


def test_the_last_cpu_notice_wins() -> None:
    recovered = capture("pmset_thermlog_throttled.txt") + capture(
        "pmset_therm_intel_unthrottled.txt"
    )
    assert parse_pmset_therm(recovered) == "nominal"


def test_idle_takes_the_most_recent_input_of_several_entries() -> None:
    text = capture("ioreg_hidsystem_grep.txt") + '  "HIDIdleTime" = 900000000000\n'
    assert parse_ioreg_idle(text) == pytest.approx(0.031068206)


def test_sysctl_n_prints_the_bare_level() -> None:
    assert parse_vm_pressure_level("2\n") == "warn"
    assert parse_vm_pressure_level("3\n") is None


def test_free_percent_maps_to_a_rough_pressure() -> None:
    assert pressure_from_free_percent(49.0) == "normal"
    assert pressure_from_free_percent(12.0) == "warn"
    assert pressure_from_free_percent(3.0) == "critical"


class FakeMac:
    """Answers each command with a capture; unknown commands fail like a missing tool."""

    def __init__(self, answers: dict[tuple[str, ...], str | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(tuple(argv))
        return self.answers.get(tuple(argv))


def test_mac_sensors_read_every_field() -> None:
    run = FakeMac(
        {
            IOREG_IDLE: capture("ioreg_hidsystem_mac_mini.txt"),
            PMSET_BATT: capture("pmset_batt_battery_discharging.txt"),
            PMSET_THERM: capture("pmset_thermlog_throttled.txt"),
            PMSET_SETTINGS: capture("pmset_g_powermode_low.txt"),
            SYSCTL_PRESSURE: "4\n",
        }
    )
    r = MacSensors(run=run).read()
    assert r.idle_seconds == pytest.approx(0.040165394)
    assert (r.on_ac_power, r.has_battery, r.battery_percent) == (False, True, 95)
    assert r.thermal == "critical"
    assert r.low_power_mode is True
    assert r.memory_pressure == "critical"
    assert r.memory_available_gb is not None and r.memory_available_gb > 0
    assert PMSET_PS not in run.calls
    assert MEMORY_PRESSURE not in run.calls


def test_mac_sensors_fall_back_and_report_unknown() -> None:
    run = FakeMac(
        {
            PMSET_BATT: "",
            PMSET_PS: capture("pmset_batt_desktop_no_battery.txt"),
            MEMORY_PRESSURE: capture("memory_pressure_tail.txt"),
        }
    )
    r = MacSensors(run=run).read()
    assert PMSET_PS in run.calls
    assert (r.on_ac_power, r.has_battery, r.battery_percent) == (True, False, None)
    assert r.memory_pressure == "normal"
    assert (r.idle_seconds, r.thermal, r.low_power_mode) == (None, None, None)


def test_mac_sensors_with_no_tools_at_all() -> None:
    r = MacSensors(run=FakeMac({})).read()
    assert (r.idle_seconds, r.on_ac_power, r.has_battery, r.thermal) == (None, None, None, None)
    assert r.memory_pressure is None


def test_free_memory_is_the_kernels_memorystatus_level() -> None:
    """41 % of a 48 GiB Mac is available by the kernel's count, whatever psutil says."""
    loaded = capture("sysctl_memorystatus_level_loaded.txt") + "hw.memsize: 51539607552\n"
    r = MacSensors(run=FakeMac({SYSCTL_MEMORY: loaded})).read()
    assert r.memory_available_gb == pytest.approx(0.41 * 51539607552 / 1e9)
    without_size = MacSensors(
        run=FakeMac({SYSCTL_MEMORY: capture("sysctl_memorystatus_level_loaded.txt")})
    ).read()
    assert without_size.memory_available_gb == pytest.approx(
        0.41 * psutil.virtual_memory().total / 1e9
    )


@pytest.mark.parametrize(
    ("value", "thermal"),
    [(0, "nominal"), (1, "fair"), (2, "serious"), (3, "critical"), (4, None), (None, None)],
)
def test_process_info_thermal_state_levels(value: int | None, thermal: str | None) -> None:
    """NSProcessInfoThermalState: 0 nominal, 1 fair, 2 serious, 3 critical."""
    assert thermal_from_process_info(value) == thermal


def test_thermal_state_is_read_where_pmset_is_blind() -> None:
    """Apple Silicon's pmset says nothing recorded; thermalState says serious: serious wins."""
    run = FakeMac({PMSET_THERM: capture("pmset_therm_apple_silicon.txt")})
    assert MacSensors(run=run, thermal_state=lambda: 2).read().thermal == "serious"
    assert MacSensors(run=run, thermal_state=lambda: None).read().thermal == "nominal"
    throttled = FakeMac({PMSET_THERM: capture("pmset_thermlog_throttled.txt")})
    assert MacSensors(run=throttled, thermal_state=lambda: 0).read().thermal == "critical"


def test_thermal_state_off_the_mac_is_unknown_not_an_error() -> None:
    assert read_process_info_thermal_state() is None
