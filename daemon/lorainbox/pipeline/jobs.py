"""The job store: SQLite (WAL) is the truth about jobs; each job folder mirrors it in status.json.

Job states (DESIGN.md): ``queued -> waiting -> training <-> paused -> exporting -> registering
-> done``, and ``failed`` / ``cancelled`` from any of them. Requests from other processes (the
CLI, the status page) go into the ``requests`` table; the daemon applies them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from lorainbox.core import atomic
from lorainbox.core.layout import STATUS_FILE


class State(str, Enum):
    QUEUED = "queued"
    WAITING = "waiting"
    TRAINING = "training"
    PAUSED = "paused"
    EXPORTING = "exporting"
    REGISTERING = "registering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED, State.CANCELLED)

    @property
    def running(self) -> bool:
        """A worker process is (or was, if the daemon died) working on the job."""
        return self in (State.TRAINING, State.EXPORTING)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inbox TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    waiting_for TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    oom_retries INTEGER NOT NULL DEFAULT 0,
    checkpoint_step INTEGER,
    model TEXT,
    result TEXT NOT NULL DEFAULT '{}',
    worker_pid INTEGER,
    held INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_inbox_state ON jobs (inbox, state);
CREATE TABLE IF NOT EXISTS transitions (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    state TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    at REAL NOT NULL,
    done_at REAL
);
"""

ACTIONS = ("cancel", "retry", "pause", "resume")


@dataclass
class Job:
    id: int
    inbox: str
    name: str
    path: str
    state: State
    priority: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    waiting_for: str | None
    progress: dict[str, Any]
    error: str | None
    attempts: int
    oom_retries: int
    checkpoint_step: int | None
    model: str | None
    result: dict[str, Any]
    worker_pid: int | None
    held: bool

    @property
    def folder(self) -> Path:
        return Path(self.path)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        d["state"] = State(d["state"])
        d["progress"] = json.loads(d["progress"] or "{}")
        d["result"] = json.loads(d["result"] or "{}")
        d["held"] = bool(d["held"])
        return cls(**d)


class JobStore:
    """Thread-safe access to the SQLite store (one connection, guarded by a lock)."""

    def __init__(self, db_path: Path):
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db_path = db_path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            db_path, check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(
        self, inbox: Path, name: str, path: Path, *, priority: int = 0, model: str | None = None
    ) -> Job:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (inbox, name, path, state, priority, created_at, updated_at, model)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (str(inbox), name, str(path), State.QUEUED.value, priority, now, now, model),
            )
            job_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO transitions (job_id, state, at) VALUES (?, ?, ?)",
                (job_id, State.QUEUED.value, now),
            )
        job = self.get(job_id)
        write_status_file(job)
        return job

    def get(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job.from_row(row)

    def find(self, ref: str, inbox: Path | None = None) -> Job | None:
        """A job by id, or the newest job of that name, or else of that model name (a recipe's
        ``name`` names the model, the folder names the job), or else of that folder name."""
        if ref.isdigit():
            try:
                return self.get(int(ref))
            except KeyError:
                return None
        sql, args = "SELECT * FROM jobs WHERE (name = ? OR model = ?)", [ref, ref]
        if inbox is not None:
            sql += " AND inbox = ?"
            args.append(str(inbox))
        order = " ORDER BY name = ? DESC, id DESC LIMIT 1"
        with self._lock:
            row = self._db.execute(sql + order, [*args, ref]).fetchone()
        if row is not None:
            return Job.from_row(row)
        # The folder's name: a second drop of "good" finishes in Done/good-2.
        return next((j for j in reversed(self.list(inbox)) if j.folder.name == ref), None)

    def list(self, inbox: Path | None = None, states: tuple[State, ...] | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if inbox is not None:
            sql += " AND inbox = ?"
            args.append(str(inbox))
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(s.value for s in states)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [Job.from_row(r) for r in rows]

    def transition(
        self, job_id: int, state: State, *, detail: str | None = None, **fields: Any
    ) -> Job:
        """Move a job to ``state`` (and set other columns), record it, mirror status.json."""
        now = time.time()
        fields = {**fields, "state": state.value, "updated_at": now}
        if state == State.TRAINING:
            fields.setdefault("started_at", now)
        if state.finished:
            fields.setdefault("finished_at", now)
        with self._tx() as db:
            self._update(db, job_id, fields)
            db.execute(
                "INSERT INTO transitions (job_id, state, at, detail) VALUES (?, ?, ?, ?)",
                (job_id, state.value, now, detail),
            )
        job = self.get(job_id)
        write_status_file(job)
        return job

    def update(self, job_id: int, *, mirror: bool = False, **fields: Any) -> Job:
        """Change columns without a state change (progress, waiting reason, path)."""
        with self._tx() as db:
            self._update(db, job_id, {**fields, "updated_at": time.time()})
        job = self.get(job_id)
        if mirror:
            write_status_file(job)
        return job

    @staticmethod
    def _update(db: sqlite3.Connection, job_id: int, fields: dict[str, Any]) -> None:
        encoded = {
            k: json.dumps(v)
            if k in ("progress", "result")
            else str(v)
            if isinstance(v, Path)
            else v
            for k, v in fields.items()
        }
        cols = ", ".join(f"{k} = ?" for k in encoded)
        db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", [*encoded.values(), job_id])

    def history(self, job_id: int) -> list[tuple[str, float, str | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, at, detail FROM transitions WHERE job_id = ? ORDER BY rowid",
                (job_id,),
            ).fetchall()
        return [(r["state"], r["at"], r["detail"]) for r in rows]

    def request(self, job_id: int, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        with self._tx() as db:
            db.execute(
                "INSERT INTO requests (job_id, action, at) VALUES (?, ?, ?)",
                (job_id, action, time.time()),
            )

    def take_requests(self) -> list[tuple[int, str]]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, job_id, action FROM requests WHERE done_at IS NULL ORDER BY id"
            ).fetchall()
            db.executemany(
                "UPDATE requests SET done_at = ? WHERE id = ?",
                [(time.time(), r["id"]) for r in rows],
            )
        return [(r["job_id"], r["action"]) for r in rows]


def write_status_file(job: Job) -> None:
    """Mirror the job into its folder, so Finder shows the truth too. Never fails the caller."""
    folder = job.folder
    if not folder.is_dir():
        return
    data = {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "waiting_for": job.waiting_for,
        "progress": job.progress,
        "error": job.error,
        "model": job.model,
        "result": job.result,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(job.updated_at)),
    }
    with contextlib.suppress(OSError):  # a missing or full folder: SQLite holds the truth
        atomic.write_text(folder / STATUS_FILE, json.dumps(data, indent=2) + "\n")


_PAUSABLE = (State.QUEUED, State.WAITING, State.TRAINING, State.PAUSED)


def refusal(job: Job, action: str) -> str | None:
    """Why ``action`` doesn't apply to ``job`` in its state, or None when it does.

    The one rule for requests: the daemon acts only on what this allows (``Daemon.apply_request``),
    the API says 409 and the command line refuses at once, instead of a request silently doing
    nothing later.
    """
    s = job.state
    named = f"job {job.id} {job.name}"
    if action == "cancel" and s.finished:
        return f"{named} is already {s.value}; there is nothing to cancel"
    if action == "pause":
        if s == State.PAUSED and job.held:
            return f"{named} is already paused by you; resume it instead"
        if s not in _PAUSABLE:
            return f"{named} is {s.value}; only a queued, waiting or training job pauses"
    if action == "resume" and s != State.PAUSED:
        return f"{named} is {s.value}, not paused; only a paused job resumes"
    if action == "retry" and s not in (State.FAILED, State.CANCELLED):
        return f"{named} is {s.value}; only a failed or cancelled job can be retried"
    return None
