"""The menu bar's logic as pure functions, its API client against a real server, and its exit on
machines where it can't run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from lorainbox.pipeline.jobs import JobStore
from lorainbox.ui import menubar
from lorainbox.ui.menu_model import SEPARATOR, Item, build_menu, job_line, title
from lorainbox.ui.status_server import StatusServer

from tests.test_status_server import READINGS, make_jobs


def job(id: int, name: str, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "name": name,
        "state": state,
        "waiting_for": None,
        "held": False,
        "progress": {},
        "error": None,
        "priority": 0,
        "times": {"finished": None},
        "actions": [],
        **extra,
    }


TRAINING = job(
    1,
    "pirate-bot",
    "training",
    progress={"step": 84, "total": 200, "train_loss": 1.23456, "eta_seconds": 3700},
    actions=["cancel", "pause"],
)
ON_BATTERY = job(2, "poet", "waiting", waiting_for="on battery (42%)", actions=["cancel", "pause"])
HELD = job(
    3, "held-bot", "paused", waiting_for="paused by you", held=True, actions=["cancel", "resume"]
)
DONE = job(4, "old-bot", "done", times={"finished": 100.0})
FAILED = job(
    5,
    "bad-drop",
    "failed",
    error="train.jsonl, line 3: not JSON\nmore",
    times={"finished": 200.0},
    actions=["retry"],
)


def labels(items: tuple[Item, ...]) -> list[str]:
    return [i.label for i in items]


def test_title_follows_the_running_job_then_the_waiting_one() -> None:
    assert title([]) == "LoRA Inbox: idle"
    assert title([DONE, FAILED]) == "LoRA Inbox: idle"
    assert title([ON_BATTERY, TRAINING]) == "◐ pirate-bot 42%"
    assert title([ON_BATTERY, DONE]) == "⏸ waiting: on battery (42%)"
    assert title([HELD]) == "⏸ paused: held-bot"
    assert title([job(9, "q", "queued")]) == "LoRA Inbox: 1 queued"
    assert title([job(9, "x", "exporting")]) == "◐ x exporting"
    assert title([job(9, "t", "training")]) == "◐ t"


def test_waiting_title_follows_the_scheduler_order() -> None:
    low = job(7, "low", "waiting", waiting_for="user active (idle 3 s of 10 min)")
    high = job(8, "high", "waiting", waiting_for="outside window 22:00-07:00", priority=5)
    assert title([low, high]) == "⏸ waiting: outside window 22:00-07:00"


def test_job_lines_say_what_a_person_needs() -> None:
    assert job_line(TRAINING) == "pirate-bot — training · 84/200 (42%) · loss 1.235 · ETA 1h01m"
    assert job_line(ON_BATTERY) == "poet — waiting: on battery (42%)"
    assert job_line(HELD) == "held-bot — paused by you"
    assert job_line(FAILED) == "bad-drop — failed: train.jsonl, line 3: not JSON"
    assert job_line(DONE) == "old-bot — done"
    exporting = {**TRAINING, "state": "exporting", "export_stage": "writing the GGUF 45%"}
    assert job_line(exporting) == "pirate-bot — exporting · writing the GGUF 45%"
    long = job(9, "x" * 100, "queued")
    assert len(job_line(long)) == 72 and job_line(long).endswith("…")


def test_menu_puts_the_running_job_and_its_actions_first() -> None:
    menu = build_menu([DONE, ON_BATTERY, TRAINING, FAILED, HELD])
    assert menu.title == "◐ pirate-bot 42%"
    head = menu.items[:4]
    assert head[0].label.startswith("pirate-bot — training") and not head[0].enabled
    assert [(i.label, i.action, i.job_id, i.enabled) for i in head[1:]] == [
        ("Pause pirate-bot", "pause", 1, True),
        ("Resume pirate-bot", "resume", 1, False),
        ("Cancel pirate-bot", "cancel", 1, True),
    ]
    queue = menu.items[menu.items.index(Item("Queue", enabled=False)) + 1 :][:2]
    assert [q.job_id for q in queue] == [2, 3]
    assert labels(queue[0].children) == ["Pause", "Cancel"]
    assert labels(queue[1].children) == ["Resume", "Cancel"]
    recent = menu.items[menu.items.index(Item("Recent", enabled=False)) + 1 :][:2]
    assert [r.job_id for r in recent] == [5, 4]
    assert [(c.label, c.action) for c in recent[0].children] == [("Retry", "retry")]
    assert recent[1].children == ()
    assert labels(menu.items[-4:]) == [
        "Open Inbox",
        "Open Status Page",
        SEPARATOR.label,
        "Quit (the daemon keeps running)",
    ]
    assert menu.items[-2].separator


def test_menu_when_nothing_runs_and_when_the_daemon_is_away() -> None:
    empty = build_menu([])
    assert empty.title == "LoRA Inbox: idle"
    assert empty.items[0].label.startswith("No jobs") and empty.items[1].separator
    away = build_menu(None)
    assert away.title == "LoRA Inbox: not running"
    assert "lorainbox run" in away.items[0].label
    assert {i.action for i in away.items} >= {"open_inbox", "quit"}
    assert not any(i.job_id for i in away.items)


def test_menu_is_comparable_so_the_app_redraws_only_on_change() -> None:
    assert build_menu([TRAINING, ON_BATTERY]) == build_menu([TRAINING, ON_BATTERY])
    moved = {**TRAINING, "progress": {**TRAINING["progress"], "step": 90}}
    assert build_menu([moved, ON_BATTERY]) != build_menu([TRAINING, ON_BATTERY])


# -- the client, against a real server ----------------------------------------------------------


def test_client_reads_jobs_and_posts_actions(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "state" / "jobs.sqlite")
    ids = make_jobs(store, tmp_path / "inbox")
    server = StatusServer(
        store,
        str(tmp_path / "inbox"),
        tmp_path / "state",
        0,
        readings=lambda: READINGS,
        wake=lambda: None,
    )
    server.start()
    try:
        client = menubar.StatusClient(server.port, tmp_path / "state")
        menu = build_menu(client.jobs())
        assert menu.title == "◐ pirate-bot 60%"
        pause = next(i for i in menu.items if i.action == "pause")
        assert pause.enabled and pause.job_id == ids["pirate-bot"]
        assert client.act(ids["pirate-bot"], "pause") is None
        assert "not paused" in (client.act(ids["finished"], "resume") or "")
        assert store.take_requests() == [(ids["pirate-bot"], "pause")]
        assert client.page() == f"http://127.0.0.1:{server.port}/#token={server.token}"
        assert menubar.StatusClient(server.port, tmp_path / "elsewhere").act(1, "pause")
    finally:
        server.stop()
        store.close()
    assert client.jobs() is None
    assert "did not answer" in (client.act(1, "cancel") or "")


# -- where it can't run -------------------------------------------------------------------------


def test_menubar_exits_2_off_a_mac(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    assert menubar.main() == 2
    assert "macOS" in capsys.readouterr().err


def test_menubar_exits_2_without_rumps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "rumps", None)
    assert menubar.main() == 2
    assert "pip install 'lorainbox[menubar]'" in capsys.readouterr().err


def test_menu_of_finished_jobs_only_starts_with_them() -> None:
    menu = build_menu([DONE])
    assert menu.title == "LoRA Inbox: idle"
    assert labels(menu.items[:2]) == ["Recent", "old-bot — done"]
