"""``lorainbox cancel/retry/pause/resume``: a request is written to the job store for the daemon.

A running daemon is woken by a signal to act on it at once (not at its next tick); when none
runs, the request is applied here through the daemon's own ``apply_request``, so the rules are
the daemon's either way."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lorainbox.core.config import Settings
from lorainbox.pipeline.jobs import Job, JobStore


def send_request(settings: Settings, store: JobStore, job: Job, action: str) -> str:
    """Ask for ``action`` on ``job`` (one ``refusal`` allows); what came of it, as a line."""
    from lorainbox.pipeline.service import WAKE_SIGNAL, DaemonLock

    store.request(job.id, action)
    pid = DaemonLock(settings.lock_path).holder()
    if pid:
        with contextlib.suppress(OSError):  # gone meanwhile: its next start takes the request
            os.kill(pid, WAKE_SIGNAL)
        return f"Asked the daemon (pid {pid}) to {action} job {job.id} {job.name}."
    _apply_requests(settings.model_copy(update={"inbox": Path(job.inbox)}), store)
    job = store.get(job.id)
    return f"Job {job.id} {job.name} is now {job.state.value} ({job.folder})."


def _apply_requests(settings: Settings, store: JobStore) -> None:
    """Act on the waiting requests as the daemon would, holding its lock meanwhile."""
    from lorainbox.pipeline.service import Daemon

    daemon = Daemon(settings)
    daemon.lock.acquire()
    try:
        for job_id, action in store.take_requests():
            daemon.apply_request(job_id, action)
    finally:
        daemon.lock.release()
