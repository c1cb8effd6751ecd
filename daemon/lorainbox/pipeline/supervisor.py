"""The supervisor: runs one worker process at a time and turns what it says into job state.

The worker's JSON lines become progress in the store (and on the hub); its exit code decides
what happens next: finished, paused at a checkpoint, failed with the person's problem, out of
memory (retry smaller), or crashed (retry from the checkpoint, a few times).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorainbox.core.config import Settings
from lorainbox.core.errors import DropError
from lorainbox.core.events import JobChanged, JobProgress
from lorainbox.core.hub import Hub
from lorainbox.core.layout import RESOLVED_RECIPE, TRAIN_LOG, WORK_DIR
from lorainbox.drop.recipe import Recipe
from lorainbox.export.ollama import OllamaClient, OllamaError, OllamaUnavailable
from lorainbox.pipeline.jobs import Job, JobStore, State
from lorainbox.trainers.memory import memory_budget_gb, shrink_after_oom
from lorainbox.worker.outcome import EXIT_DROP_ERROR, Outcome
from lorainbox.worker.spec import JobSpec, disk_full_while, initial_footprint, is_disk_full

log = logging.getLogger(__name__)


def load_recipe_of(job: Job) -> Recipe:
    return Recipe.model_validate_json((job.folder / WORK_DIR / RESOLVED_RECIPE).read_text())


def recipe_in(folder: Path) -> Recipe | None:
    """The recipe a job folder was trained with; None for a folder that is not a job's."""
    path = folder / WORK_DIR / RESOLVED_RECIPE
    return Recipe.model_validate_json(path.read_text()) if path.is_file() else None


@dataclass
class _Run:
    job: Job
    proc: subprocess.Popen[str]
    stop_reason: str | None = None
    last: dict[str, Any] = field(default_factory=dict)
    problems: list[dict[str, str]] | None = None
    paused_step: int | None = None
    message: str | None = None


class Supervisor:
    def __init__(
        self,
        store: JobStore,
        hub: Hub,
        settings: Settings,
        on_exit: Callable[[Outcome], None],
    ):
        self.store = store
        self.hub = hub
        self.settings = settings
        self.on_exit = on_exit
        self._run: _Run | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._run is not None

    @property
    def current_job_id(self) -> int | None:
        run = self._run
        return run.job.id if run else None

    @property
    def current_pid(self) -> int | None:
        run = self._run
        return run.proc.pid if run else None

    def start(self, job: Job) -> None:
        """Write the job's spec and start its worker; resumes from a checkpoint if one exists."""
        recipe = load_recipe_of(job)
        data = job.folder / WORK_DIR / "data"
        valid = data / "valid.jsonl"
        old = _old_spec(job.folder)
        spec = JobSpec(
            job_id=job.id,
            recipe=recipe,
            train_file=data / ("images.jsonl" if recipe.kind == "diffusion" else "train.jsonl"),
            valid_file=valid if valid.exists() else None,
            memory_budget_gb=memory_budget_gb(recipe, self.settings.memory_fraction),
            footprint=old.footprint if old else None,
            oom_retries=job.oom_retries,
        )
        if recipe.memory.unload_ollama:
            self._free_ollama(job)
        try:
            proc = self._spawn(job, spec)
        except OSError as e:  # a full disk or a folder gone read-only: say so once, not per tick
            log.error("could not start the worker of job %d %s: %s", job.id, job.name, e)
            self.on_exit(Outcome(job.id, EXIT_DROP_ERROR, None, cannot_start(job, e).to_json()))
            return
        job = self.store.transition(
            job.id,
            State.TRAINING,
            detail=f"worker pid {proc.pid}",
            waiting_for=None,
            worker_pid=proc.pid,
        )
        self.hub.publish(JobChanged(job.id, job.name, State.TRAINING.value, None))
        run = _Run(job, proc)
        with self._lock:
            self._run = run
        threading.Thread(
            target=self._read, args=(run,), name=f"worker-{job.id}", daemon=True
        ).start()
        log.info("started worker %d for job %d %s", proc.pid, job.id, job.name)

    def _free_ollama(self, job: Job) -> None:
        """Unload what Ollama holds (/api/ps, then ``keep_alive: 0`` each); Ollama away or
        refusing is no reason not to train."""
        try:
            with OllamaClient(self.settings.ollama_host, timeout=5.0) as client:
                names = client.loaded()
                for name in names:
                    client.unload(name)
        except OllamaUnavailable:
            log.debug("job %d: Ollama not answering; nothing to unload", job.id)
            return
        except OllamaError as e:
            log.warning("job %d: could not unload Ollama's models: %s", job.id, e)
            return
        if names:
            log.info(
                "job %d: asked Ollama to unload %s, to free memory for training",
                job.id,
                ", ".join(names),
            )

    def stop(self, reason: str) -> None:
        """Ask the worker to checkpoint and exit (SIGTERM); ``reason`` decides what follows."""
        run = self._run
        if run is None or run.proc.poll() is not None:
            return
        run.stop_reason = reason
        log.info("asking worker %d to stop (%s)", run.proc.pid, reason)
        with contextlib.suppress(ProcessLookupError):
            run.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        run = self._run
        if run is not None and run.proc.poll() is None:
            run.proc.kill()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._run is not None:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _spawn(self, job: Job, spec: JobSpec) -> subprocess.Popen[str]:
        spec.save(job.folder)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTORCH_ENABLE_MPS_FALLBACK": "1"}
        with open(job.folder / TRAIN_LOG, "a") as log_file:
            log_file.write(f"\n--- worker started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            log_file.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "lorainbox.worker", str(job.folder)],
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                start_new_session=True,
            )

    def _read(self, run: _Run) -> None:
        assert run.proc.stdout is not None
        log_path = run.job.folder / TRAIN_LOG
        for line in run.proc.stdout:
            msg = _parse(line)
            if msg is None:
                with open(log_path, "a") as f:
                    f.write(line)
                continue
            try:
                self._handle(run, msg)
            except Exception:
                log.exception("could not handle worker line %r", line[:200])
        code = run.proc.wait()
        with self._lock:
            self._run = None
        outcome = Outcome(
            run.job.id, code, run.stop_reason, run.problems, run.paused_step, run.message
        )
        log.info("worker for job %d exited with %d", run.job.id, code)
        try:
            self.on_exit(outcome)
        except Exception:
            log.exception("handling the end of job %d failed", run.job.id)

    def _handle(self, run: _Run, msg: dict[str, Any]) -> None:
        kind = msg.pop("type", None)
        job_id = run.job.id
        if kind == "progress":
            run.last.update(msg)
            self.store.update(
                job_id, progress=run.last, checkpoint_step=run.last.get("checkpoint_step")
            )
            self.hub.publish(JobProgress(job_id, dict(run.last)))
        elif kind == "export":
            run.last["export"] = {"stage": msg.get("stage"), "fraction": msg.get("fraction")}
            self.store.update(job_id, progress=run.last)
            self.hub.publish(JobProgress(job_id, dict(run.last)))
        elif kind == "checkpoint":
            self.store.update(job_id, checkpoint_step=msg.get("step"))
        elif kind == "stage" and msg.get("stage") == "exporting":
            self.store.transition(job_id, State.EXPORTING, progress=run.last)
            self.hub.publish(
                JobChanged(job_id, run.job.name, State.EXPORTING.value, State.TRAINING.value)
            )
        elif kind == "footprint":
            self._add_result(job_id, footprint=msg)
        elif kind == "trained":
            keep = ("steps", "trainer", "device", "compiled", "distributed", "engine_reason")
            how = {k: msg[k] for k in keep if k in msg}
            self._add_result(job_id, trained=how)
        elif kind == "exported":
            self._add_result(job_id, gguf=msg.get("gguf"), gguf_info=msg.get("info"))
        elif kind == "resumed":
            resumes = self.store.get(job_id).result.get("resumes", [])
            self._add_result(
                job_id, resumes=[*resumes, {"step": msg.get("step"), "at": time.time()}]
            )
        elif kind == "paused":
            run.paused_step = msg.get("step")
            self.store.update(job_id, checkpoint_step=run.paused_step)
        elif kind == "error":
            run.problems = msg.get("problems")
        elif kind in ("crash", "oom"):
            run.message = msg.get("message")

    def _add_result(self, job_id: int, **fields: Any) -> None:
        self.store.update(job_id, result={**self.store.get(job_id).result, **fields})


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) and "type" in msg else None


def _old_spec(job_dir: Path) -> JobSpec | None:
    try:
        return JobSpec.load(job_dir)
    except (OSError, ValueError):
        return None


def cannot_start(job: Job, error: OSError) -> DropError:
    if is_disk_full(error):
        return disk_full_while(job.folder, error)
    return DropError.one(
        f"the job's worker could not be started: {error}",
        str(job.folder),
        f"make the folder writable again, then `lorainbox retry {job.name}`",
    )


def problems_error(problems: list[dict[str, str]] | None, fallback: str) -> DropError:
    if problems:
        return DropError.from_json(problems)
    return DropError.one(fallback, TRAIN_LOG, "see train.log in this folder for details")


def shrink_after_out_of_memory(job: Job, o: Outcome, max_retries: int) -> str | DropError:
    """After an out-of-memory exit: save a smaller footprint in the job's spec for its next run
    and say what changed, or the error to fail with once nothing smaller is left."""
    spec = JobSpec.load(job.folder)
    smaller = shrink_after_oom(initial_footprint(spec))
    if smaller is None or job.oom_retries >= max_retries:
        return DropError.one(
            f"training ran out of memory {job.oom_retries + 1} times, even after shrinking "
            f"the batch and sequence length ({o.message or 'no message'})",
            "recipe.toml, [memory] and [train]",
            "lower [train] batch_size or max_seq_length, turn on grad_checkpoint, "
            "pick a smaller base model, or close other apps and retry",
        )
    spec.footprint = {
        "batch_size": smaller.batch_size,
        "max_seq_length": smaller.max_seq_length,
        "grad_checkpoint": smaller.grad_checkpoint,
        "changes": smaller.changes,
    }
    spec.save(job.folder)
    return smaller.changes[-1] if smaller.changes else "smaller footprint"
