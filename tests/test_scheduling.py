"""The gates through the real daemon: a scripted Mac goes on battery, on power, is left alone,
is used again and is left again, and the job waits, starts, pauses at a checkpoint and resumes
from it. The sensor script is rewritten as the test goes (``LORAINBOX_SENSORS``)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorainbox.pipeline.jobs import Job, JobStore, State

from tests.daemon_proc import ENTRY, DaemonProc, resumed_steps, trained, wait_for
from tests.drops import chat_lines, drop_with

IDLE_RECIPE = """\
extends = "tiny-demo"
trainer = "mlx"

[train]
iters = 120
save_every = 5
steps_per_report = 1
steps_per_eval = 1000
val_batches = 1

[schedule]
when = "idle"
idle_minutes = 1
require_ac_power = true
on_interrupt = "pause"
"""

AWAY = 3600.0


@pytest.fixture
def store(_state_dir: Path) -> Iterator[JobStore]:
    s = JobStore(_state_dir / "jobs.sqlite")
    yield s
    s.close()


class Mac:
    """The sensor script the daemon reads; each change is a new step from the daemon's start."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: list[dict[str, object]] = []
        self.started = time.monotonic()

    def now(self, **readings: object) -> None:
        at = max(0.0, time.monotonic() - self.started - 1.0)  # the daemon started a bit later
        self.steps = [*self.steps, {"at": at, **readings}]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.steps))
        tmp.replace(self.path)


def state_of(store: JobStore, name: str) -> Job | None:
    return store.find(name)


def status_line(env: dict[str, str], inbox: Path) -> str:
    out = subprocess.run(
        [*ENTRY, "status", "--inbox", str(inbox)],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(600)
def test_waits_for_power_and_idle_pauses_for_the_person_and_resumes(
    tmp_path: Path, store: JobStore
) -> None:
    mac = Mac(tmp_path / "sensors.json")
    mac.now(on_ac_power=True, has_battery=True, battery_percent=90)  # idle time unknown
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daemon = DaemonProc(tmp_path, inbox, LORAINBOX_SENSORS=str(mac.path)).start()
    try:
        drop_with(inbox, "nightly", IDLE_RECIPE, {"train.jsonl": chat_lines()})
        unknown = wait_for(
            "a wait on unknown idle time",
            lambda: (j := state_of(store, "nightly")) and j.state == State.WAITING and j,
            daemon=daemon,
        )
        assert "idle time unknown" in (unknown.waiting_for or "")

        mac.now(idle_seconds=AWAY, on_ac_power=False, has_battery=True, battery_percent=42)
        wait_for(
            "a wait on the battery",
            lambda: (j := state_of(store, "nightly")) and j.waiting_for == "on battery (42%)",
            daemon=daemon,
        )
        assert "waiting: on battery (42%)" in status_line(daemon.env, inbox)
        assert state_of(store, "nightly").checkpoint_step in (None, 0)

        mac.now(idle_seconds=AWAY, on_ac_power=True, has_battery=True, battery_percent=43)
        wait_for(
            "training past a checkpoint",
            lambda: (
                (j := state_of(store, "nightly"))
                and j.state == State.TRAINING
                and (j.checkpoint_step or 0) >= 10
            ),
            daemon=daemon,
        )

        mac.now(idle_seconds=3, on_ac_power=True, has_battery=True, battery_percent=44)
        paused = wait_for(
            "a pause for the person",
            lambda: (j := state_of(store, "nightly")) and j.state == State.PAUSED and j,
            daemon=daemon,
        )
        pauses = [d for s, _, d in store.history(paused.id) if s == State.PAUSED.value]
        assert pauses and "user is back (idle 3 s)" in (pauses[0] or ""), pauses
        assert paused.waiting_for == "user active (idle 3 s of 1 min)"
        assert paused.worker_pid is None
        at = paused.checkpoint_step
        assert at and 10 <= at < 120
        time.sleep(2.0)  # still in use: the job stays paused, no worker starts
        assert state_of(store, "nightly").state == State.PAUSED

        mac.now(idle_seconds=AWAY, on_ac_power=True, has_battery=True, battery_percent=45)
        done = wait_for("the job to finish", lambda: trained(store, "nightly"), daemon=daemon)
    finally:
        daemon.stop()
    assert done.state == State.REGISTERING, done.error
    assert resumed_steps(done) == [at]
    states = [s for s, _, _ in store.history(done.id)]
    assert states.count(State.TRAINING.value) == 2, states
    assert (inbox / "Done" / "nightly" / "model.gguf").is_file()
