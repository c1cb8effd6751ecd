"""Linux sensors on fake sysfs trees built in tmp_path, and logind's idle hint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from lorainbox.platform.sensors.base import Readings
from lorainbox.platform.sensors.linux import (
    LinuxPower,
    LinuxSensors,
    parse_logind_idle,
    parse_platform_profile,
    power_from_supplies,
    read_supplies,
)


def supply(root: Path, name: str, **attrs: str | int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for key, value in attrs.items():
        (folder / key).write_text(f"{value}\n")


def power(root: Path) -> LinuxPower:
    return power_from_supplies(read_supplies(root))


def test_no_power_supplies_at_all_is_a_desktop_on_mains(tmp_path: Path) -> None:
    assert power(tmp_path) == LinuxPower(True, False, None)


def test_an_unreadable_sysfs_is_unknown(tmp_path: Path) -> None:
    assert power(tmp_path / "missing") == LinuxPower(None, None, None)


def test_laptop_plugged_in(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online=1)
    supply(tmp_path, "BAT0", type="Battery", capacity=80, status="Charging")
    assert power(tmp_path) == LinuxPower(True, True, 80)


def test_laptop_on_battery(tmp_path: Path) -> None:
    supply(tmp_path, "ADP1", type="Mains", online=0)
    supply(tmp_path, "BAT0", type="Battery", capacity=42, status="Discharging")
    assert power(tmp_path) == LinuxPower(False, True, 42)


def test_usb_c_charger_counts_as_wall_power(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online=0)
    supply(tmp_path, "ucsi-source-psy-USBC000:001", type="USB", online=1)
    supply(tmp_path, "BAT0", type="Battery", capacity=55, status="Charging")
    assert power(tmp_path).on_ac_power is True


@pytest.mark.parametrize(
    ("status", "on_ac"),
    [
        ("Discharging", False),
        ("Charging", True),
        ("Full", True),
        ("Not charging", True),
        ("Unknown", None),
    ],
)
def test_without_an_adapter_the_battery_status_decides(
    tmp_path: Path, status: str, on_ac: bool | None
) -> None:
    supply(tmp_path, "BAT1", type="Battery", capacity=70, status=status)
    assert power(tmp_path) == LinuxPower(on_ac, True, 70)


def test_a_mouse_battery_is_not_the_machines(tmp_path: Path) -> None:
    supply(
        tmp_path,
        "hidpp_battery_0",
        type="Battery",
        scope="Device",
        capacity=5,
        status="Discharging",
    )
    assert power(tmp_path) == LinuxPower(True, False, None)


def test_two_batteries_average_their_charge(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online=1)
    supply(tmp_path, "BAT0", type="Battery", capacity=90, status="Full")
    supply(tmp_path, "BAT1", type="Battery", capacity=41, status="Charging")
    assert power(tmp_path).battery_percent == 66


def test_a_ups_running_on_its_battery(tmp_path: Path) -> None:
    supply(tmp_path, "ups0", type="UPS", capacity=87, status="Discharging")
    assert power(tmp_path) == LinuxPower(False, False, None)


NOW = 1_700_000_600.0


@pytest.mark.parametrize(
    ("text", "idle"),
    [
        ("IdleHint=yes\nIdleSinceHint=1700000000000000\n", 600.0),
        ("IdleHint=no\nIdleSinceHint=1700000500000000\n", 0.0),
        ("IdleHint=no\nIdleSinceHint=0\n", None),
        ("IdleHint=yes\nIdleSinceHint=1700000900000000\n", 0.0),
        ("Failed to get session: No session\n", None),
        ("", None),
    ],
)
def test_logind_idle_hint(text: str, idle: float | None) -> None:
    assert parse_logind_idle(text, NOW) == idle


def test_platform_profile() -> None:
    assert parse_platform_profile("low-power\n") is True
    assert parse_platform_profile("balanced\n") is False
    assert parse_platform_profile(None) is None


class FakeLoginctl:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(list(argv))
        return self.answer


def test_linux_sensors_read(tmp_path: Path) -> None:
    root = tmp_path / "power_supply"
    supply(root, "AC", type="Mains", online=0)
    supply(root, "BAT0", type="Battery", capacity=33, status="Discharging")
    profile = tmp_path / "platform_profile"
    profile.write_text("low-power\n")
    run = FakeLoginctl("IdleHint=yes\nIdleSinceHint=1700000000000000\n")
    sensors = LinuxSensors(
        root, platform_profile=profile, session_id="7", run=run, clock=lambda: NOW
    )
    r = sensors.read()
    assert run.calls == [["loginctl", "show-session", "7", "-p", "IdleHint", "-p", "IdleSinceHint"]]
    assert r.idle_seconds == 600.0
    assert (r.on_ac_power, r.has_battery, r.battery_percent) == (False, True, 33)
    assert r.low_power_mode is True
    assert (r.thermal, r.memory_pressure) == (None, None)
    assert r.memory_available_gb is not None and r.memory_available_gb > 0


def test_without_a_session_the_users_hint_is_asked(tmp_path: Path) -> None:
    run = FakeLoginctl(None)
    r = LinuxSensors(tmp_path, platform_profile=tmp_path / "none", session_id="", run=run).read()
    assert run.calls[0][:2] == ["loginctl", "show-user"]
    assert (r.idle_seconds, r.low_power_mode) == (None, None)


def test_the_real_machine_reads_without_error() -> None:
    r = LinuxSensors().read()
    assert isinstance(r, Readings)
    assert r.taken_at.tzinfo is not None
