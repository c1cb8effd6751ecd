"""Idle sleep must not beat the idle gate: ``caffeinate -i`` while a job waits only for idle
on AC power, and what ``pmset -g`` says about the sleep timer (real captures)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from lorainbox.core.hub import Hub
from lorainbox.drop.recipe import ScheduleSpec
from lorainbox.pipeline.gates import evaluate, waits_only_for_idle
from lorainbox.pipeline.jobs import State
from lorainbox.pipeline.scheduler import Scheduler
from lorainbox.platform.keepawake import SleepAssertion
from lorainbox.platform.sensors.base import Readings, now_utc
from lorainbox.platform.sensors.macos import SleepTimer, parse_pmset_sleep, sleep_advice

DATA = Path(__file__).parent / "data" / "macos"
NOON = datetime(2026, 11, 29, 12, 0)


def readings(**kw: object) -> Readings:
    base: dict[str, object] = {"idle_seconds": 30.0, "on_ac_power": True, "taken_at": now_utc()}
    return Readings(**{**base, **kw})  # type: ignore[arg-type]


IDLE = ScheduleSpec(when="idle", idle_minutes=10)


@pytest.mark.parametrize(
    ("schedule", "r", "awake"),
    [
        (IDLE, readings(), True),
        (IDLE, readings(on_ac_power=False, battery_percent=80), False),
        (IDLE, readings(on_ac_power=None), False),
        (IDLE, readings(idle_seconds=None), False),
        (IDLE, readings(idle_seconds=3600.0), False),
        (IDLE, readings(low_power_mode=True), False),
        (ScheduleSpec(when="idle", window="01:00-05:00"), readings(), False),
        (ScheduleSpec(when="now"), readings(), False),
    ],
)
def test_awake_only_while_idle_is_all_that_is_missing(
    schedule: ScheduleSpec, r: Readings, awake: bool
) -> None:
    assert waits_only_for_idle(evaluate(schedule, r, NOON), r) is awake


@pytest.fixture
def caffeinate(tmp_path: Path) -> Path:
    """Stands in for /usr/bin/caffeinate: a process that waits, as it does."""
    tool = tmp_path / "caffeinate"
    tool.write_text("#!/bin/sh\nexec sleep 60\n")
    tool.chmod(0o755)
    return tool


def test_hold_runs_caffeinate_i_once_per_pid_and_release_ends_it(caffeinate: Path) -> None:
    awake = SleepAssertion(str(caffeinate))
    awake.hold()
    first = awake._proc
    assert first is not None and first.args == [str(caffeinate), "-i", "-w", str(os.getpid())]
    awake.hold()
    assert awake._proc is first and awake.held_for == os.getpid()
    awake.hold(1)
    assert first.wait(timeout=5) is not None
    second = awake._proc
    assert second is not None and second.args[1:] == ["-i", "-w", "1"] and awake.held_for == 1
    awake.release()
    assert second.poll() is not None and awake.held_for is None


def test_no_caffeinate_off_the_mac() -> None:
    awake = SleepAssertion(platform="linux")
    awake.hold()
    assert awake.held_for is None


def test_pmset_sleep_timer_from_real_captures() -> None:
    laptop = parse_pmset_sleep((DATA / "pmset_g_macbook_sleep_1.txt").read_text())
    assert laptop == SleepTimer(1, False, ("sharingd",))
    held = parse_pmset_sleep((DATA / "pmset_g_lowpowermode_off.txt").read_text())
    assert held is not None and held.minutes == 1 and held.disabled
    assert "com.bombich.ccchelper" in held.prevented_by and len(set(held.prevented_by)) == len(
        held.prevented_by
    )
    assert parse_pmset_sleep((DATA / "pmset_therm_apple_silicon.txt").read_text()) is None


def test_sleep_advice() -> None:
    text = (DATA / "pmset_g_macbook_sleep_1.txt").read_text()
    timer = parse_pmset_sleep(text)
    assert timer is not None
    ok, advice = sleep_advice(timer, 10)
    assert ok is None
    assert "1 min" in advice and "caffeinate -i" in advice and "sudo pmset -c sleep 15" in advice
    later = parse_pmset_sleep(text.replace(" sleep                1 ", " sleep                30 "))
    assert later is not None and sleep_advice(later, 10)[0] is True
    never = parse_pmset_sleep(text.replace(" sleep                1 ", " sleep                0 "))
    assert never is not None and sleep_advice(never, 10) == (True, "system sleep is off")
    held = parse_pmset_sleep((DATA / "pmset_g_lowpowermode_off.txt").read_text())
    assert held is not None and sleep_advice(held, 10)[0] is True


class _Store:
    """The job store's side the scheduler touches, with one job waiting."""

    def __init__(self) -> None:
        self.job = SimpleNamespace(
            id=1, name="pirate-bot", held=False, priority=0, state=State.WAITING, waiting_for=None
        )

    def take_requests(self) -> list[tuple[int, str]]:
        return []

    def list(self, inbox: object, states: object) -> list[SimpleNamespace]:
        return [self.job]

    def update(self, job_id: int, **fields: object) -> None:
        self.job.waiting_for = fields.get("waiting_for")


class _Sensors:
    def __init__(self) -> None:
        self.readings = readings()

    def read(self) -> Readings:
        return self.readings


def test_the_scheduler_holds_idle_sleep_off_while_a_job_waits_for_idle(caffeinate: Path) -> None:
    """A real tick, a real (stand-in) caffeinate: held while idle is all that is missing on AC,
    let go on battery."""
    sensors = _Sensors()
    supervisor = SimpleNamespace(current_job_id=None, current_pid=None, start=lambda job: None)
    awake = SleepAssertion(str(caffeinate))
    scheduler = Scheduler(
        _Store(),  # type: ignore[arg-type]
        Hub(),
        supervisor,  # type: ignore[arg-type]
        sensors,
        inbox="inbox",
        tick_seconds=3600,
        on_request=lambda job_id, action: None,
        awake=awake,
    )
    scheduler.gates_for = lambda job, running=False: evaluate(IDLE, sensors.readings, NOON)  # type: ignore[method-assign]
    try:
        scheduler.tick()
        assert awake.held_for == os.getpid()
        sensors.readings = readings(on_ac_power=False, battery_percent=80)
        scheduler.tick()
        assert awake.held_for is None
    finally:
        awake.release()
