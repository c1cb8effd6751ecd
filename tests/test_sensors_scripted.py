"""Scripted sensors: readings that change over time and when the script file is rewritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lorainbox.platform.sensors import make_sensors
from lorainbox.platform.sensors.base import UnknownSensors
from lorainbox.platform.sensors.linux import LinuxSensors
from lorainbox.platform.sensors.macos import MacSensors
from lorainbox.platform.sensors.scripted import ScriptedSensors, ScriptError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, script: object) -> Path:
    path.write_text(json.dumps(script))
    return path


def test_steps_apply_as_time_passes(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.json",
        [
            {"at": 0, "on_ac_power": True, "idle_seconds": 30},
            {"at": 60, "on_ac_power": True, "idle_seconds": 900, "thermal": "fair"},
            {"at": 120, "on_ac_power": False, "battery_percent": 64},
        ],
    )
    clock = Clock()
    sensors = ScriptedSensors(script, clock=clock)
    first = sensors.read()
    assert (first.on_ac_power, first.idle_seconds, first.thermal) == (True, 30, None)
    clock.now += 61
    assert sensors.read().idle_seconds == 900
    clock.now += 60
    last = sensors.read()
    assert (last.on_ac_power, last.battery_percent, last.idle_seconds) == (False, 64, None)


def test_the_first_step_applies_before_its_time(tmp_path: Path) -> None:
    script = write(tmp_path / "s.json", [{"at": 30, "low_power_mode": True}])
    assert ScriptedSensors(script, clock=Clock()).read().low_power_mode is True


def test_steps_out_of_order_are_sorted(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.json", [{"at": 10, "idle_seconds": 5}, {"at": 0, "idle_seconds": 1}]
    )
    clock = Clock()
    sensors = ScriptedSensors(script, clock=clock)
    assert sensors.read().idle_seconds == 1
    clock.now += 10
    assert sensors.read().idle_seconds == 5


def test_rewriting_the_file_changes_the_readings(tmp_path: Path) -> None:
    script = write(tmp_path / "s.json", [{"at": 0, "on_ac_power": True}])
    clock = Clock()
    sensors = ScriptedSensors(script, clock=clock)
    assert sensors.read().on_ac_power is True
    clock.now += 5
    write(script, [{"at": 0, "on_ac_power": False, "battery_percent": 40}])
    r = sensors.read()
    assert (r.on_ac_power, r.battery_percent) == (False, 40)


def test_a_rewrite_replaced_atomically_is_seen(tmp_path: Path) -> None:
    script = write(tmp_path / "s.json", {"idle_seconds": 1})
    sensors = ScriptedSensors(script, clock=Clock())
    assert sensors.read().idle_seconds == 1
    tmp = write(tmp_path / "s.json.tmp", {"idle_seconds": 2})
    os.replace(tmp, script)
    assert sensors.read().idle_seconds == 2


def test_a_broken_rewrite_keeps_the_last_readings_until_fixed(tmp_path: Path) -> None:
    script = write(tmp_path / "s.json", [{"at": 0, "thermal": "nominal"}])
    sensors = ScriptedSensors(script, clock=Clock())
    assert sensors.read().thermal == "nominal"
    script.write_text('[{"at": 0, "thermal": "ser')
    assert sensors.read().thermal == "nominal"
    write(script, [{"at": 0, "thermal": "serious"}])
    assert sensors.read().thermal == "serious"


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("not json", "not valid JSON"),
        ('[{"at": 0, "on_ac": true}]', "on_ac"),
        ('[{"at": 0, "thermal": "hot"}]', "thermal"),
        ('[{"at": -1}]', "at"),
        ("[]", "no steps"),
    ],
)
def test_a_bad_script_says_what_is_wrong(tmp_path: Path, content: str, complaint: str) -> None:
    script = tmp_path / "bad.json"
    script.write_text(content)
    with pytest.raises(ScriptError, match=complaint) as e:
        ScriptedSensors(script)
    assert str(script) in str(e.value)


def test_a_missing_script_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="No such file"):
        ScriptedSensors(tmp_path / "nope.json")


def test_make_sensors_picks_by_platform_or_path(tmp_path: Path) -> None:
    assert isinstance(make_sensors("auto", platform="darwin"), MacSensors)
    assert isinstance(make_sensors("auto", platform="linux"), LinuxSensors)
    assert isinstance(make_sensors("auto", platform="win32"), UnknownSensors)
    script = write(tmp_path / "s.json", [{"at": 0, "idle_seconds": 3}])
    scripted = make_sensors(str(script))
    assert isinstance(scripted, ScriptedSensors)
    assert scripted.read().idle_seconds == 3


def test_unknown_sensors_know_only_memory() -> None:
    r = UnknownSensors().read()
    assert (r.idle_seconds, r.on_ac_power, r.thermal) == (None, None, None)
