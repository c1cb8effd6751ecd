"""The scheduler: decides which job trains, and when it must step aside.

APScheduler ticks every ``tick_seconds``; any event on the hub (a new job, a finished worker, a
request from the CLI) wakes it at once. On each tick: apply requests, check the running job's
gates (pause it if they fail and its recipe says so), else start the next job whose gates hold:
one at a time, highest priority first, then oldest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler

from lorainbox.core.events import JobChanged, Wake
from lorainbox.core.hub import Hub
from lorainbox.pipeline.gates import GateResult, evaluate, waits_only_for_idle
from lorainbox.pipeline.jobs import Job, JobStore, State
from lorainbox.pipeline.supervisor import Supervisor, load_recipe_of
from lorainbox.platform.keepawake import SleepAssertion
from lorainbox.platform.sensors import Readings, Sensors

log = logging.getLogger(__name__)

CANDIDATES = (State.QUEUED, State.WAITING, State.PAUSED)


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        hub: Hub,
        supervisor: Supervisor,
        sensors: Sensors,
        *,
        inbox: str,
        tick_seconds: float,
        on_request: Callable[[int, str], None],
        extra_tick: Callable[[], None] = lambda: None,
        awake: SleepAssertion | None = None,
    ):
        self.store = store
        self.hub = hub
        self.supervisor = supervisor
        self.sensors = sensors
        self.inbox = inbox
        self.on_request = on_request
        self.extra_tick = extra_tick
        self.last_readings: Readings | None = None
        self._tick_lock = threading.Lock()
        self.awake = awake or SleepAssertion()
        self._aps = BackgroundScheduler(daemon=True)
        self._aps.add_job(
            self.tick, "interval", seconds=tick_seconds, id="tick", max_instances=1, coalesce=True
        )
        hub.subscribe(Wake, lambda e: self.wake())
        hub.subscribe(JobChanged, lambda e: self.wake())

    def start(self) -> None:
        self._aps.start()
        self.wake()

    def shutdown(self) -> None:
        self._aps.shutdown(wait=False)
        with self._tick_lock:  # a tick under way finishes (and may start a worker) first
            self._release_sleep()

    def wake(self) -> None:
        """Tick now (on APScheduler's thread, so ticks never overlap)."""
        if self._aps.running:
            self._aps.add_job(self.tick, id="wake", replace_existing=True, max_instances=1)

    def tick(self) -> None:
        with self._tick_lock:
            try:
                self._tick()
            except Exception:
                log.exception("scheduler tick failed")

    def _tick(self) -> None:
        for job_id, action in self.store.take_requests():
            self.on_request(job_id, action)
        self.last_readings = self.sensors.read()
        running_id = self.supervisor.current_job_id
        if running_id is not None:
            self._check_running(self.store.get(running_id))
        else:
            self._start_next()
        self.extra_tick()

    def gates_for(self, job: Job, running: bool = False) -> GateResult:
        recipe = load_recipe_of(job)
        assert self.last_readings is not None
        estimate = (job.result.get("footprint") or {}).get("estimate_gb")
        return evaluate(
            recipe.schedule,
            self.last_readings,
            datetime.now(),
            running=running,
            memory_needed_gb=estimate or recipe.memory.max_gb,
        )

    def _check_running(self, job: Job) -> None:
        if job.state != State.TRAINING:
            return  # exporting finishes on its own; stopping it would only waste the work
        result = self.gates_for(job, running=True)
        if result.ok:
            return
        recipe = load_recipe_of(job)
        if recipe.schedule.on_interrupt == "pause":
            log.info("pausing job %d %s: %s", job.id, job.name, result.waiting_for)
            self.store.update(job.id, waiting_for=result.waiting_for)
            self.supervisor.stop(f"gate: {result.waiting_for}")

    def _start_next(self) -> None:
        """Start the first job whose gates hold; while none does and one waits only for the
        person to leave (on AC), keep idle sleep off so the idle gate can open first."""
        jobs = [j for j in self.store.list(self.inbox, CANDIDATES) if not j.held]
        jobs.sort(key=lambda j: (-j.priority, j.id))
        waiting_for_idle = None
        for job in jobs:
            try:
                result = self.gates_for(job)
            except (OSError, ValueError) as e:
                log.error("job %d %s has no readable recipe: %s", job.id, job.name, e)
                continue
            if result.ok:
                self.supervisor.start(job)
                self._keep_awake()
                return
            assert self.last_readings is not None
            if waiting_for_idle is None and waits_only_for_idle(result, self.last_readings):
                waiting_for_idle = job.name
            if job.state in (State.WAITING, State.PAUSED):
                if job.waiting_for != result.waiting_for:
                    self.store.update(job.id, waiting_for=result.waiting_for, mirror=True)
            else:
                self.store.transition(
                    job.id, State.WAITING, detail=result.waiting_for, waiting_for=result.waiting_for
                )
            # Later jobs may have laxer gates (when = "now"): keep looking.
        if waiting_for_idle is None:
            self.awake.release()
        else:
            self.awake.hold(why=f"{waiting_for_idle} waits only for the Mac to be left idle")

    def _keep_awake(self) -> None:
        """Hold off idle sleep while the worker runs (tied to its PID)."""
        pid = self.supervisor.current_pid
        if pid is None:
            self.awake.release()
        else:
            self.awake.hold(pid, why="training")

    def _release_sleep(self) -> None:
        self.awake.release()
