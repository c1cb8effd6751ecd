"""The job store on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from lorainbox.pipeline.jobs import JobStore, State


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def test_add_transition_and_status_file(store: JobStore, tmp_path: Path) -> None:
    folder = tmp_path / "Queue" / "pirate-bot"
    folder.mkdir(parents=True)
    job = store.add(tmp_path, "pirate-bot", folder, priority=2, model="pirate-bot")
    assert job.state == State.QUEUED and job.priority == 2
    assert json.loads((folder / "status.json").read_text())["state"] == "queued"

    store.transition(job.id, State.TRAINING, detail="worker pid 1")
    store.update(job.id, progress={"step": 5, "total": 10}, mirror=True)
    job = store.transition(job.id, State.DONE)
    assert job.started_at is not None and job.finished_at is not None
    assert job.progress == {"step": 5, "total": 10}
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "done" and status["progress"]["step"] == 5
    assert [s for s, _, _ in store.history(job.id)] == ["queued", "training", "done"]


def test_store_uses_wal_and_survives_reopen(store: JobStore, tmp_path: Path) -> None:
    job = store.add(tmp_path, "a", tmp_path / "a")
    store.close()
    again = JobStore(tmp_path / "jobs.sqlite")
    assert again.get(job.id).name == "a"
    mode = sqlite3.connect(tmp_path / "jobs.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_find_by_name_or_id_and_filter(store: JobStore, tmp_path: Path) -> None:
    a = store.add(tmp_path / "in1", "a", tmp_path / "a")
    b = store.add(tmp_path / "in2", "a", tmp_path / "a2")
    assert store.find(str(a.id)).id == a.id
    assert store.find("a").id == b.id  # newest of that name
    assert store.find("a", tmp_path / "in1").id == a.id
    assert store.find("nope") is None and store.find("999") is None
    assert [j.id for j in store.list(tmp_path / "in2")] == [b.id]
    store.transition(a.id, State.FAILED)
    assert [j.id for j in store.list(None, (State.FAILED,))] == [a.id]


def test_find_by_model_name_after_job_names(store: JobStore, tmp_path: Path) -> None:
    """A recipe's ``name`` names the model; the folder names the job."""
    good = store.add(tmp_path, "good", tmp_path / "good", model="good-one")
    other = store.add(tmp_path, "good-one", tmp_path / "good-one", model="x")
    assert store.find("good-one").id == other.id  # a job's own name comes first
    store2 = store.add(tmp_path, "pirates", tmp_path / "pirates", model="pirate-bot")
    assert store.find("pirate-bot").id == store2.id
    assert store.find("good").id == good.id
    again = store.add(tmp_path, "good", tmp_path / "Done" / "good-2", model="good-one")
    assert store.find("good-2").id == again.id  # by its folder's name


def test_requests_are_taken_once(store: JobStore, tmp_path: Path) -> None:
    job = store.add(tmp_path, "a", tmp_path / "a")
    store.request(job.id, "cancel")
    store.request(job.id, "retry")
    assert store.take_requests() == [(job.id, "cancel"), (job.id, "retry")]
    assert store.take_requests() == []
    with pytest.raises(ValueError):
        store.request(job.id, "explode")


def test_status_file_skipped_when_folder_missing(store: JobStore, tmp_path: Path) -> None:
    job = store.add(tmp_path, "gone", tmp_path / "gone")
    assert store.transition(job.id, State.FAILED).state == State.FAILED
    assert not (tmp_path / "gone").exists()
