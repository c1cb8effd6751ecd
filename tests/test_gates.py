"""Gate decisions and the reasons a person reads, including unknown readings and hysteresis."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pytest
from lorainbox.drop.recipe import ScheduleSpec
from lorainbox.drop.window import Window, parse_window
from lorainbox.pipeline.gates import evaluate
from lorainbox.platform.sensors.base import Readings
from pydantic import ValidationError

NOON = datetime(2026, 3, 4, 12, 0)
TAKEN = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)


def readings(**fields: object) -> Readings:
    """A Mac that is idle, plugged in, cool, with plenty of memory, unless told otherwise."""
    base: dict[str, object] = {
        "idle_seconds": 3600.0,
        "on_ac_power": True,
        "battery_percent": 80,
        "has_battery": True,
        "low_power_mode": False,
        "thermal": "nominal",
        "memory_available_gb": 20.0,
        "memory_pressure": "normal",
    }
    base.update(fields)
    return Readings(**base, taken_at=TAKEN)  # type: ignore[arg-type]


def reasons(result: object) -> dict[str, str]:
    return {c.gate: c.reason for c in result.details}  # type: ignore[attr-defined]


def test_all_clear() -> None:
    result = evaluate(ScheduleSpec(), readings(), NOON)
    assert result.ok and result.waiting_for is None
    assert [c.gate for c in result.details] == [
        "power",
        "idle",
        "window",
        "thermal",
        "low_power",
        "memory",
    ]


def test_schedule_defaults_match_the_recipe_contract() -> None:
    spec = ScheduleSpec()
    assert spec.model_dump() == {
        "when": "idle",
        "idle_minutes": 10.0,
        "require_ac_power": True,
        "min_battery_percent": 0,
        "window": None,
        "on_interrupt": "pause",
        "priority": 0,
    }
    with pytest.raises(ValidationError, match="idle_minuts"):
        ScheduleSpec(idle_minuts=5)  # type: ignore[call-arg]


# --- power -------------------------------------------------------------------------------


def test_on_battery_waits_and_says_the_charge() -> None:
    result = evaluate(ScheduleSpec(), readings(on_ac_power=False, battery_percent=42), NOON)
    assert not result.ok
    assert result.waiting_for == "on battery (42%)"


def test_unknown_power_is_allowed_and_says_so() -> None:
    result = evaluate(ScheduleSpec(), readings(on_ac_power=None, has_battery=None), NOON)
    check = result.details[0]
    assert result.ok and check.unknown
    assert check.reason == "power source unknown; allowed"


def test_a_desktop_with_no_battery_runs_from_the_wall() -> None:
    result = evaluate(ScheduleSpec(), readings(on_ac_power=None, has_battery=False), NOON)
    assert result.ok and not result.details[0].unknown


def test_battery_allowed_above_the_floor() -> None:
    spec = ScheduleSpec(require_ac_power=False, min_battery_percent=30)
    assert evaluate(spec, readings(on_ac_power=False, battery_percent=64), NOON).ok
    low = evaluate(spec, readings(on_ac_power=False, battery_percent=25), NOON)
    assert low.waiting_for == "on battery (25%, below 30%)"
    unknown = evaluate(spec, readings(on_ac_power=False, battery_percent=None), NOON)
    assert not unknown.ok and unknown.details[0].unknown
    assert evaluate(ScheduleSpec(require_ac_power=False), readings(on_ac_power=False), NOON).ok


# --- idle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idle", "reason"),
    [(125.0, "user active (idle 2 min of 10)"), (40.0, "user active (idle 40 s of 10 min)")],
)
def test_user_active(idle: float, reason: str) -> None:
    result = evaluate(ScheduleSpec(), readings(idle_seconds=idle), NOON)
    assert result.waiting_for == reason


def test_idle_long_enough() -> None:
    assert evaluate(ScheduleSpec(idle_minutes=10), readings(idle_seconds=600), NOON).ok


def test_when_now_skips_only_the_idle_gate() -> None:
    spec = ScheduleSpec(when="now")
    assert evaluate(spec, readings(idle_seconds=0), NOON).ok
    assert evaluate(spec, readings(idle_seconds=None), NOON).ok
    assert evaluate(spec, readings(idle_seconds=0, on_ac_power=False), NOON).waiting_for == (
        "on battery (80%)"
    )


def test_unknown_idle_waits_before_start_but_not_while_running() -> None:
    waiting = evaluate(ScheduleSpec(), readings(idle_seconds=None), NOON)
    assert not waiting.ok
    assert 'when = "now"' in (waiting.waiting_for or "")
    assert evaluate(ScheduleSpec(), readings(idle_seconds=None), NOON, running=True).ok


def test_running_job_pauses_only_when_the_person_is_back() -> None:
    spec = ScheduleSpec(idle_minutes=10)
    # Four minutes idle would not start a job, but a running one keeps going.
    assert evaluate(spec, readings(idle_seconds=240), NOON, running=True).ok
    back = evaluate(spec, readings(idle_seconds=5), NOON, running=True)
    assert back.waiting_for == "user is back (idle 5 s)"


def test_short_idle_minutes_shrink_the_return_threshold() -> None:
    spec = ScheduleSpec(idle_minutes=0.5)
    assert evaluate(spec, readings(idle_seconds=45), NOON, running=True).ok
    assert not evaluate(spec, readings(idle_seconds=10), NOON, running=True).ok


# --- window ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "inside"),
    [
        (time(22, 0), True),
        (time(23, 59), True),
        (time(3, 0), True),
        (time(7, 0), False),
        (time(12), False),
    ],
)
def test_window_wrapping_midnight(clock: time, inside: bool) -> None:
    spec = ScheduleSpec(window="22:00-07:00")
    now = datetime.combine(NOON.date(), clock)
    result = evaluate(spec, readings(), now)
    assert result.ok is inside
    if not inside:
        assert result.waiting_for == "outside window 22:00-07:00"


def test_window_during_the_day() -> None:
    spec = ScheduleSpec(window="9:30 - 17:00")
    assert spec.window == "09:30-17:00"
    assert evaluate(spec, readings(), NOON).ok
    assert not evaluate(spec, readings(), datetime(2026, 3, 4, 17, 0)).ok
    assert not evaluate(spec, readings(), NOON.replace(hour=18), running=True).ok


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("10pm-7am", "is not HH:MM-HH:MM"),
        ("22:00", "is not HH:MM-HH:MM"),
        ("25:00-07:00", "25:00 is not a time of day"),
        ("22:00-07:60", "07:60 is not a time of day"),
        ("08:00-08:00", "starts and ends at the same time"),
    ],
)
def test_bad_windows_are_explained(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_window(text)
    with pytest.raises(ValidationError, match=complaint):
        ScheduleSpec(window=text)


def test_window_parts() -> None:
    assert parse_window("22:00-07:00") == Window(time(22), time(7))


# --- thermal, low power, memory ----------------------------------------------------------


def test_thermal_blocks_a_start_at_serious_but_stops_a_job_only_at_critical() -> None:
    assert evaluate(ScheduleSpec(), readings(thermal="fair"), NOON).ok
    serious = evaluate(ScheduleSpec(), readings(thermal="serious"), NOON)
    assert serious.waiting_for == "thermal: serious"
    assert evaluate(ScheduleSpec(), readings(thermal="serious"), NOON, running=True).ok
    critical = evaluate(ScheduleSpec(), readings(thermal="critical"), NOON, running=True)
    assert critical.waiting_for == "thermal: critical"
    unknown = evaluate(ScheduleSpec(), readings(thermal=None), NOON)
    assert unknown.ok and unknown.details[3].unknown


def test_low_power_mode() -> None:
    assert evaluate(ScheduleSpec(), readings(low_power_mode=True), NOON).waiting_for == (
        "low-power mode"
    )
    assert evaluate(ScheduleSpec(), readings(low_power_mode=None), NOON).ok


def test_memory_for_the_estimate() -> None:
    short = evaluate(ScheduleSpec(), readings(memory_available_gb=3.14), NOON, memory_needed_gb=8)
    assert short.waiting_for == "memory: 3.1 GB free of 8 needed"
    assert evaluate(ScheduleSpec(), readings(), NOON, memory_needed_gb=8).ok
    unknown = evaluate(ScheduleSpec(), readings(memory_available_gb=None), NOON, memory_needed_gb=8)
    assert unknown.ok and unknown.details[5].unknown
    running = evaluate(
        ScheduleSpec(), readings(memory_available_gb=1.0), NOON, running=True, memory_needed_gb=8
    )
    assert running.ok


def test_critical_memory_pressure_blocks_a_start() -> None:
    result = evaluate(ScheduleSpec(), readings(memory_pressure="critical"), NOON)
    assert result.waiting_for == "memory pressure: critical"
    assert evaluate(ScheduleSpec(), readings(memory_pressure="warn"), NOON).ok


def test_every_failing_gate_is_named() -> None:
    result = evaluate(
        ScheduleSpec(window="22:00-07:00"),
        readings(on_ac_power=False, battery_percent=42, idle_seconds=125, low_power_mode=True),
        NOON,
    )
    assert result.waiting_for == (
        "on battery (42%); user active (idle 2 min of 10); outside window 22:00-07:00; "
        "low-power mode"
    )
    assert reasons(result)["thermal"] == "thermal: nominal"
