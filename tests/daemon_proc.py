"""A real ``lorainbox run`` process for the tests, and waiting on what it does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lorainbox.pipeline.jobs import Job, JobStore, State

ENTRY = [sys.executable, "-m", "lorainbox.ui.cli"]


def lorainbox(
    *args: str | Path, timeout: float = 600, columns: int = 200, **env: str
) -> subprocess.CompletedProcess[str]:
    """One ``lorainbox`` command as a person runs it: its own process, a terminal this wide
    (rich wraps tables and bars to it), the test's environment plus ``env``."""
    return subprocess.run(
        [*ENTRY, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": str(columns), **env},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProc:
    """A real ``lorainbox run`` process on an inbox, with fast ticks for the tests."""

    def __init__(self, tmp_path: Path, inbox: Path, **env: str):
        self.inbox = inbox
        self.config = tmp_path / "daemon.toml"
        self.config.write_text(
            "settle_seconds = 0.3\ntick_seconds = 0.5\nregister_retry_max_seconds = 2\n"
        )
        self.env = {**os.environ, "LORAINBOX_CONFIG": str(self.config), **env}
        self.log = tmp_path / f"daemon-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        self.log = self.log.with_name(f"daemon-{time.monotonic_ns()}.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*ENTRY, "run", "--inbox", str(self.inbox)], stdout=out, stderr=out, env=self.env
            )
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=180)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(
    what: str,
    check: Callable[[], object],
    timeout: float = 240,
    *,
    daemon: DaemonProc | None = None,
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited while waiting for {what}:\n{daemon.output()[-3000:]}"
            )
        time.sleep(0.1)
    tail = daemon.output()[-3000:] if daemon else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def job_named(store: JobStore, name: str) -> Job | None:
    return store.find(name)


def training_past(store: JobStore, name: str, step: int) -> Job | None:
    job = store.find(name)
    if (
        job
        and job.state == State.TRAINING
        and (job.checkpoint_step or 0) >= step
        and job.worker_pid
    ):
        return job
    return None


def trained(store: JobStore, name: str) -> Job | None:
    """The job past training and export (no Ollama answers in these tests, so it waits there)."""
    job = store.find(name)
    if job and (job.state.finished or job.state == State.REGISTERING):
        return job
    return None


def resumed_steps(job: Job) -> list[int]:
    return [r["step"] for r in job.result.get("resumes", [])]
