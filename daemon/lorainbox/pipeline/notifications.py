"""Turns job events on the hub into notifications (done, failed, paused, rejected drops).

Each job's news goes to a group of its own: a job's "done" replaces its "paused", and two jobs
never replace each other's.
"""

from __future__ import annotations

from lorainbox.core.events import DropRejected, JobChanged
from lorainbox.core.hub import Hub
from lorainbox.core.layout import APP_NAME
from lorainbox.pipeline.jobs import JobStore
from lorainbox.platform.notifier import Notifier


class NotificationRelay:
    def __init__(self, hub: Hub, store: JobStore, notifier: Notifier | None = None):
        self.store = store
        self.notifier = notifier or Notifier()
        hub.subscribe(JobChanged, self._on_job)
        hub.subscribe(DropRejected, self._on_rejected)

    def _on_job(self, e: JobChanged) -> None:
        if e.state == "done":
            job = self.store.get(e.job_id)
            if job.result.get("registered"):
                msg = f"{job.model} is ready — ollama run {job.model}"
            elif job.model:
                msg = f"{e.name} is trained; model.gguf is in {job.folder} (Ollama not registered)"
            else:
                msg = f"{e.name} is trained; results are in {job.folder}"
            image = job.folder / "samples.png"
            self.notifier.notify(
                APP_NAME, msg, kind="done", image=image if image.exists() else None, group=e.name
            )
        elif e.state == "paused":
            self.notifier.notify(
                APP_NAME, f"{e.name} paused: {e.detail}", kind="paused", group=e.name
            )

    def _on_rejected(self, e: DropRejected) -> None:
        first = e.message.split(";")[0]
        self.notifier.notify(
            APP_NAME,
            f"{e.name} failed: {first}. See ERROR.md in {e.path}",
            kind="failed",
            group=e.name,
        )
