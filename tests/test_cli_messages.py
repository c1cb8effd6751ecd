"""What the ``lorainbox`` command says when a person asks for something it cannot do."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

from lorainbox.pipeline.jobs import JobStore, State

from tests.daemon_proc import lorainbox
from tests.drops import fast_drop


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_version_prints_the_package_version() -> None:
    done = lorainbox("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"lorainbox {version('lorainbox')}"


def test_help_keeps_bracketed_text() -> None:
    done = lorainbox("menubar", "--help")
    assert done.returncode == 0, done.stderr
    assert "lorainbox[menubar]" in done.stdout


def test_an_inbox_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not an inbox\n")
    drop = fast_drop(tmp_path, "good")
    commands = {
        "submit": ("submit", drop, "--inbox", afile),
        "submit under it": ("submit", drop, "--inbox", afile / "inbox"),
        "run": ("run", "--inbox", afile, "--once"),
        "status": ("status", "--inbox", afile),
    }
    for case, args in commands.items():
        done = lorainbox(*args, timeout=120)
        message = one_line(done.stderr)
        assert done.returncode == 1, (case, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, case
        assert f"{afile} is a file, not a folder" in message, (case, message)
        assert "--inbox" in message and "No jobs yet" not in done.stdout, case
    assert afile.read_text() == "not an inbox\n" and drop.is_dir()


def test_status_says_when_the_inbox_does_not_exist_yet(tmp_path: Path) -> None:
    done = lorainbox("status", "--inbox", tmp_path / "nowhere")
    assert done.returncode == 1
    message = one_line(done.stderr)
    assert "does not exist yet" in message and "`lorainbox run`" in message
    assert "No jobs yet" not in done.stdout


def job_store() -> JobStore:
    return JobStore(Path(os.environ["LORAINBOX_STATE_DIR"]) / "jobs.sqlite")


def test_control_commands_refuse_what_cannot_apply_to_a_done_job(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    folder = fast_drop(inbox / "Done", "good")
    store = job_store()
    job = store.add(inbox, "good", folder)
    store.transition(job.id, State.TRAINING)
    store.transition(job.id, State.DONE)
    refusals = {
        "cancel": "is already done; there is nothing to cancel",
        "pause": "is done; only a queued, waiting or training job pauses",
        "resume": "is done, not paused; only a paused job resumes",
        "retry": "is done; only a failed or cancelled job can be retried",
    }
    for action, words in refusals.items():
        done = lorainbox(action, str(job.id), "--inbox", inbox)
        assert done.returncode == 1, (action, done.stdout, done.stderr)
        assert f"job {job.id} good {words}" in one_line(done.stderr), action
        assert "Asked the daemon" not in done.stdout and "is now" not in done.stdout
    assert store.get(job.id).state == State.DONE
    assert store.take_requests() == []  # nothing left for a daemon to act on later


def test_control_commands_still_apply_where_they_can(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    folder = fast_drop(inbox / "Queue", "waiting")
    store = job_store()
    job = store.add(inbox, "waiting", folder)
    paused = lorainbox("pause", "waiting", "--inbox", inbox, timeout=120)
    assert paused.returncode == 0, paused.stderr
    assert f"Job {job.id} waiting is now paused" in one_line(paused.stdout)
    again = lorainbox("pause", "waiting", "--inbox", inbox, timeout=120)
    assert again.returncode == 1 and "already" in again.stderr
    resumed = lorainbox("resume", "waiting", "--inbox", inbox, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert store.get(job.id).state == State.QUEUED


def test_status_shows_each_folder_within_its_inbox(tmp_path: Path) -> None:
    """A second drop of "good" finishes in Done/good-2: the table shows that part, unclipped,
    and `logs` takes the folder's name."""
    inbox = tmp_path / "a-rather-long-inbox-folder-name" / "inbox"
    store = job_store()
    for folder in (inbox / "Done" / "good", inbox / "Done" / "good-2"):
        folder.mkdir(parents=True)
        (folder / "train.log").write_text(f"trained in {folder.name}\n")
        job = store.add(inbox, "good", folder)
        store.transition(job.id, State.DONE)
    shown = lorainbox("status", "--inbox", inbox, columns=80)
    assert shown.returncode == 0, shown.stderr
    assert "Done/good-2" in shown.stdout and "Done/good " in shown.stdout + " "
    logs = lorainbox("logs", "good-2", "--inbox", inbox)
    assert logs.returncode == 0 and "trained in good-2" in logs.stdout, logs.stderr


def test_status_of_one_job_shows_it_whole(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    folder = inbox / "Done" / "good"
    folder.mkdir(parents=True)
    store = job_store()
    job = store.add(inbox, "good", folder, model="good-one")
    store.transition(job.id, State.TRAINING)
    trained = {"steps": 12, "trainer": "mlx", "device": "cpu"}
    store.transition(job.id, State.DONE, result={"registered": True, "trained": trained})
    shown = lorainbox("status", "good-one", "--inbox", inbox, columns=100)
    assert shown.returncode == 0, shown.stderr
    out = one_line(shown.stdout)
    assert f"Job {job.id} good" in out and "state done" in out
    assert "trained 12 steps with mlx on cpu" in out
    assert "model good-one (`ollama run good-one`)" in out
    assert f"log lorainbox logs {job.id}" in out and f"lorainbox retry {job.id}" not in out
    as_json = lorainbox("status", str(job.id), "--json", "--inbox", inbox)
    assert json.loads(as_json.stdout)["model"] == "good-one"
    missing = lorainbox("status", "99", "--inbox", inbox)
    assert missing.returncode == 1 and "no job '99'" in missing.stderr
