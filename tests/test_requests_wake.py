"""A request from the command line reaches a running daemon at once, not at its next tick."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from lorainbox.pipeline.jobs import JobStore, State

from tests.daemon_proc import ENTRY, lorainbox, wait_for
from tests.drops import chat_lines, drop_with

WAITING = 'extends = "tiny-demo"\n[schedule]\nwhen = "idle"\nidle_minutes = 5\n'


def test_cancel_acts_within_seconds_though_the_tick_is_a_minute(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = tmp_path / "daemon.toml"
    config.write_text("settle_seconds = 0.3\ntick_seconds = 60\n")
    sensors = tmp_path / "sensors.json"
    sensors.write_text(json.dumps([{"at": 0, "on_ac_power": True, "idle_seconds": 0}]))
    env = {**os.environ, "LORAINBOX_CONFIG": str(config), "LORAINBOX_SENSORS": str(sensors)}
    store = JobStore(Path(os.environ["LORAINBOX_STATE_DIR"]) / "jobs.sqlite")
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [*ENTRY, "run", "--inbox", str(inbox)], stdout=log, stderr=log, env=env
    )
    try:
        drop_with(inbox, "patient", WAITING, {"train.jsonl": chat_lines()})
        wait_for(
            "the job to wait", lambda: (j := store.find("patient")) and j.state == State.WAITING
        )
        asked = time.monotonic()
        done = lorainbox("cancel", "patient", "--inbox", inbox, LORAINBOX_CONFIG=str(config))
        assert done.returncode == 0 and "Asked the daemon" in done.stdout, done.stderr
        wait_for("the cancel", lambda: store.find("patient").state == State.CANCELLED, timeout=20)
        assert time.monotonic() - asked < 20
        assert (inbox / "Failed" / "patient" / "train.jsonl").is_file()  # nothing deleted
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
