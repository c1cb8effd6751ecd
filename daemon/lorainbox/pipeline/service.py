"""The daemon: wires the inbox, job store, scheduler, supervisor, registrar and notifier.

``lorainbox run`` runs this in the foreground (launchd or systemd keeps it alive). It holds a
lock per inbox, so a second daemon on the same inbox exits with a clear message, and on start
it reconciles the store with what it finds: a job that was training when the daemon died goes
back to the queue and resumes from its checkpoint.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import IO

import psutil

from lorainbox.core.config import Settings
from lorainbox.core.errors import DropError
from lorainbox.core.events import DropReady, DropRejected, JobChanged, Wake
from lorainbox.core.hub import Hub
from lorainbox.core.layout import ERROR_FILE, TRAIN_LOG
from lorainbox.pipeline.intake import Intake, write_error_file
from lorainbox.pipeline.jobs import Job, JobStore, State, refusal
from lorainbox.pipeline.notifications import NotificationRelay
from lorainbox.pipeline.registrar import Registrar
from lorainbox.pipeline.results import write_results
from lorainbox.pipeline.scheduler import Scheduler
from lorainbox.pipeline.supervisor import (
    Supervisor,
    load_recipe_of,
    problems_error,
    shrink_after_out_of_memory,
)
from lorainbox.pipeline.watcher import InboxLayout, InboxWatcher
from lorainbox.platform.sensors import Sensors, make_sensors
from lorainbox.ui.status_server import StatusServer, start_status_server
from lorainbox.worker.outcome import Outcome, Verdict

log = logging.getLogger(__name__)

WORKER_STOP_SECONDS = 120.0
"""How long a worker gets to reach a checkpoint; the LaunchAgent's ExitTimeOut is longer."""


class AlreadyRunning(RuntimeError):
    pass


class DaemonLock:
    """One daemon per inbox: an exclusive ``flock`` that the OS frees if we die."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise AlreadyRunning(pid) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def holder(self) -> int | None:
        """The pid of the running daemon, or None when the lock is free."""
        if not self.path.exists():
            return None
        with open(self.path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                text = f.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(f, fcntl.LOCK_UN)
        return None


class Daemon:
    status_server: StatusServer | None = None
    status_url: str | None = None

    def __init__(self, settings: Settings, *, once: bool = False, sensors: Sensors | None = None):
        self.settings = settings
        self.once = once
        self.layout = InboxLayout(settings.inbox)
        self.hub = Hub()
        self.store = JobStore(settings.db_path)
        self.inbox_key = str(self.layout.root)
        self.lock = DaemonLock(settings.lock_path)
        self.intake = Intake(self.layout, self.store, self.hub)
        self.watcher = InboxWatcher(
            self.layout,
            lambda p: self.hub.publish(DropReady(p)),
            settle_seconds=settings.settle_seconds,
        )
        self.supervisor = Supervisor(self.store, self.hub, settings, self._worker_exited)
        self.registrar = Registrar(
            self.store,
            settings.ollama_host,
            self.inbox_key,
            settings.register_retry_max_seconds,
            wait_for_ollama=not once,
            on_done=self._finished,
            on_refused=self._fail,
        )
        self.scheduler = Scheduler(
            self.store,
            self.hub,
            self.supervisor,
            sensors or make_sensors(settings.sensors),
            inbox=self.inbox_key,
            tick_seconds=settings.tick_seconds,
            on_request=self.apply_request,
            extra_tick=self.registrar.tick,
        )
        self.notifications = NotificationRelay(self.hub, self.store)
        self._stop = threading.Event()
        self._wake_asked = threading.Event()
        """Set by SIGUSR1 (``lorainbox cancel`` and the like): tick now, not at the next tick."""
        self._intake_lock = threading.Lock()
        self.hub.subscribe(DropReady, self._on_drop)

    # -- life cycle -------------------------------------------------------------------------

    def run(self) -> int:
        self.lock.acquire()
        self._install_signals()  # first: a SIGTERM during start-up still stops a worker cleanly
        try:
            self.layout.create()
            self.reconcile()
            self.watcher.start()
            self.scheduler.start()
            self.status_server = start_status_server(
                self.settings,
                self.store,
                self.inbox_key,
                readings=lambda: self.scheduler.last_readings,
                wake=self.scheduler.wake,
            )
            self.status_url = self.status_server.url if self.status_server else None
            log.info("watching %s", self.layout.root)
            while not self._stop.wait(0.5):
                if self._wake_asked.is_set():
                    self._wake_asked.clear()
                    self.scheduler.wake()
                if self.once and self._all_ended():
                    break
            return 0
        finally:
            self.shutdown()
            self.lock.release()

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        if self.status_server is not None:
            self.status_server.stop()
        self.watcher.stop()
        self.scheduler.shutdown()  # first, so no tick starts a worker while the last one stops
        if self.supervisor.busy:
            self.supervisor.stop("shutdown")
            if not self.supervisor.wait(timeout=WORKER_STOP_SECONDS):
                log.warning(
                    "worker did not stop in time; killing it (it resumes from its checkpoint)"
                )
                self.supervisor.kill()
                self.supervisor.wait(timeout=10)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        signal.signal(WAKE_SIGNAL, lambda *_: self._wake_asked.set())

    def _all_ended(self) -> bool:
        if self.watcher.pending or self.layout.drop_candidates() or self.supervisor.busy:
            return False
        jobs = self.store.list(self.inbox_key)
        if not all(j.state.finished for j in jobs):
            return False
        # A drop that intake has moved into Queue/ but not yet checked has no job yet.
        known = {j.path for j in jobs}
        queue = self.layout.queue
        waiting = (
            [f for f in queue.iterdir() if not f.name.startswith(".")] if queue.is_dir() else []
        )
        return all(str(f) in known for f in waiting)

    # -- start-up ---------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the store and the folders agree after a crash or a restart."""
        for job in self.store.list(self.inbox_key):
            if job.state.running:
                _stop_orphan(job.worker_pid)
                step = job.checkpoint_step
                self.store.transition(
                    job.id,
                    State.QUEUED,
                    detail=f"daemon restarted; resumes from checkpoint step {step or 0}",
                    worker_pid=None,
                )
            elif not job.state.finished and not job.folder.exists():
                self.store.transition(
                    job.id, State.FAILED, detail="folder gone", error=f"{job.folder} was removed"
                )
        known = {j.path for j in self.store.list(self.inbox_key) if not j.state.finished}
        for folder in sorted(self.layout.queue.iterdir()) if self.layout.queue.is_dir() else []:
            if folder.is_dir() and str(folder) not in known and not folder.name.startswith("."):
                log.info("adopting %s, found in Queue/ without a job", folder.name)
                self._adopt(folder)

    def _adopt(self, folder: Path) -> None:
        with self._intake_lock:
            self.intake.adopt(folder)

    # -- events -----------------------------------------------------------------------------

    def _on_drop(self, event: DropReady) -> None:
        with self._intake_lock:
            self.intake.take(event.path)

    def _worker_exited(self, o: Outcome) -> None:
        job = self.store.get(o.job_id)
        self.store.update(job.id, worker_pid=None)
        match o.verdict:
            case Verdict.CANCELLED:
                self._cancelled(job)
            case Verdict.TRAINED:
                self._trained(job)
            case Verdict.PAUSED:
                self._paused(job, o)
            case Verdict.DROP_ERROR:
                self._fail(job, problems_error(o.problems, "the worker reported a problem"))
            case Verdict.OUT_OF_MEMORY:
                self._out_of_memory(job, o)
            case Verdict.CRASHED:
                self._crashed(job, o)
        self.hub.publish(Wake(f"worker of job {job.id} exited"))

    def _trained(self, job: Job) -> None:
        recipe = load_recipe_of(job)
        write_results(job, recipe, self.store)
        done_dir = self.layout.move(job.folder, self.layout.done)
        job = self.store.update(job.id, path=str(done_dir))
        if recipe.kind == "llm" and recipe.export.gguf and recipe.ollama.enabled:
            self.store.transition(job.id, State.REGISTERING, detail="exported", waiting_for=None)
            self.hub.publish(
                JobChanged(job.id, job.name, State.REGISTERING.value, State.EXPORTING.value)
            )
        else:
            job = self.store.transition(job.id, State.DONE, detail="finished", waiting_for=None)
            self._finished(job)

    def _finished(self, job: Job) -> None:
        write_results(job, load_recipe_of(job), self.store, final=True)
        self.hub.publish(JobChanged(job.id, job.name, State.DONE.value, None))

    def _paused(self, job: Job, o: Outcome) -> None:
        held = o.stop_reason == "hold"
        reason = {
            "hold": "paused by you",
            "shutdown": "daemon stopped; resumes when it starts",
        }.get(o.stop_reason or "", (o.stop_reason or "interrupted").removeprefix("gate: "))
        job = self.store.transition(
            job.id,
            State.PAUSED,
            detail=reason,
            waiting_for=reason,
            held=int(held),
            checkpoint_step=o.paused_step if o.paused_step is not None else job.checkpoint_step,
        )
        self.hub.publish(
            JobChanged(job.id, job.name, State.PAUSED.value, State.TRAINING.value, reason)
        )

    def _out_of_memory(self, job: Job, o: Outcome) -> None:
        change = shrink_after_out_of_memory(job, o, self.settings.max_oom_retries)
        if isinstance(change, DropError):
            self._fail(job, change)
            return
        self.store.transition(
            job.id,
            State.QUEUED,
            detail=f"out of memory; retrying with {change}",
            oom_retries=job.oom_retries + 1,
        )

    def _crashed(self, job: Job, o: Outcome) -> None:
        attempts = job.attempts + 1
        what = f"the worker stopped unexpectedly (exit code {o.code}): {o.message or 'no message'}"
        if attempts > self.settings.max_crash_retries:
            self._fail(
                job,
                DropError.one(
                    f"{what}; gave up after {attempts} tries",
                    str(job.folder / TRAIN_LOG),
                    "read the end of train.log; then `lorainbox retry NAME` resumes from the "
                    "last checkpoint",
                ),
            )
            return
        self.store.transition(
            job.id,
            State.QUEUED,
            detail=f"{what}; retry {attempts} from checkpoint",
            attempts=attempts,
            error=what,
        )

    def _fail(self, job: Job, error: DropError) -> None:
        folder = job.folder
        area = self.layout.failed
        if folder.parent != area:
            folder = self.layout.move(folder, area)
            error = error.moved(job.folder, folder)
        error = error.in_folder(folder)
        write_error_file(folder, error.markdown("This job failed"))
        job = self.store.transition(
            job.id, State.FAILED, detail=str(error), error=str(error), path=str(folder)
        )
        self.hub.publish(JobChanged(job.id, job.name, State.FAILED.value, None, str(error)))
        self.hub.publish(DropRejected(job.name, folder, str(error)))

    def _cancelled(self, job: Job) -> None:
        folder = job.folder
        if folder.exists() and folder.parent != self.layout.failed:
            folder = self.layout.move(folder, self.layout.failed)
        write_error_file(
            folder,
            "# Cancelled\n\nYou cancelled this job. Nothing was deleted; `lorainbox retry "
            f"{job.name}` puts it back in the queue (it resumes from its last checkpoint).\n",
        )
        job = self.store.transition(job.id, State.CANCELLED, detail="cancelled", path=str(folder))
        log.info("cancelled job %d %s; its folder is %s", job.id, job.name, folder)
        self.hub.publish(JobChanged(job.id, job.name, State.CANCELLED.value, None))

    # -- requests from the CLI and the status page --------------------------------------------

    def apply_request(self, job_id: int, action: str) -> None:
        """Act on a request from the command line or the status page. What applies to which
        state is :func:`~lorainbox.pipeline.jobs.refusal`'s rule; this only says how."""
        try:
            job = self.store.get(job_id)
        except KeyError:
            return
        if refusal(job, action) is not None:
            return
        running = self.supervisor.current_job_id == job_id
        if action == "cancel":
            if running:
                self.supervisor.stop("cancel")
            else:
                self._cancelled(job)
        elif action == "pause":
            if running:
                self.supervisor.stop("hold")
            else:
                self.store.transition(
                    job.id,
                    State.PAUSED,
                    detail="paused by you",
                    held=1,
                    waiting_for="paused by you",
                )
        elif action == "resume":
            self.store.transition(
                job.id, State.QUEUED, detail="resumed by you", held=0, waiting_for=None
            )
        elif action == "retry":
            self._retry(job)

    def _retry(self, job: Job) -> None:
        with self._intake_lock:
            folder = self.layout.move(job.folder, self.layout.queue, job.name)
            (folder / ERROR_FILE).unlink(missing_ok=True)
            try:
                self.intake.check(folder, job.name)
            except DropError as e:
                self.store.update(job.id, path=str(folder))
                self._fail(self.store.get(job.id), e)
                return
            self.store.transition(
                job.id,
                State.QUEUED,
                detail="retried by you",
                path=str(folder),
                attempts=0,
                oom_retries=0,
                error=None,
                held=0,
            )


WAKE_SIGNAL = signal.SIGUSR1
"""What the command line sends the daemon after writing a request, so it acts within a second."""


def _stop_orphan(pid: int | None) -> None:
    """A worker outlives a daemon killed with -9 (its own session): stop it at a checkpoint."""
    if not pid:
        return
    try:
        proc = psutil.Process(pid)
        if "lorainbox.worker" not in " ".join(proc.cmdline()):
            return
        proc.terminate()
        proc.wait(timeout=WORKER_STOP_SECONDS)
    except psutil.TimeoutExpired:
        proc.kill()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return
    time.sleep(0.1)


__all__ = ["AlreadyRunning", "Daemon", "DaemonLock", "JobStore"]
