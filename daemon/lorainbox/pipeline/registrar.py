"""Registration: the finished GGUF goes to Ollama, retried with backoff while Ollama is away.

The job waits in ``registering`` with the GGUF and a ready Modelfile already in Done/<name>/,
so a person can always register by hand; it completes on its own once Ollama answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lorainbox.core.layout import GGUF
from lorainbox.export.ollama import OllamaClient, OllamaError, OllamaUnavailable, register_model
from lorainbox.pipeline.jobs import Job, JobStore, State
from lorainbox.pipeline.supervisor import load_recipe_of

log = logging.getLogger(__name__)

FIRST_DELAY = 5.0


@dataclass
class Registrar:
    store: JobStore
    host: str
    inbox: str
    max_delay: float
    wait_for_ollama: bool = True
    """False (``run --once``, the demo): one try, then finish without registering."""
    on_done: Callable[[Job], None] = lambda job: None
    on_refused: Callable[[Job, str], None] = lambda job, message: None
    _next: dict[int, tuple[float, float]] = field(default_factory=dict)

    def tick(self) -> None:
        now = time.monotonic()
        for job in self.store.list(self.inbox, (State.REGISTERING,)):
            due, _ = self._next.get(job.id, (0.0, 0.0))
            if now >= due:
                self.attempt(job)

    def attempt(self, job: Job) -> None:
        recipe = load_recipe_of(job)
        gguf = Path(job.folder) / GGUF
        # One version tag per job, however many tries it takes.
        stamp = job.result.get("register_stamp") or datetime.now().isoformat(timespec="seconds")
        if "register_stamp" not in job.result:
            job = self.store.update(job.id, result={**job.result, "register_stamp": stamp})
        try:
            with OllamaClient(self.host) as client:
                result = register_model(
                    client,
                    gguf,
                    recipe.ollama_model,
                    system=recipe.ollama.system,
                    parameters=recipe.ollama.parameters,
                    template=recipe.ollama.template,
                    quantize=recipe.export.quantize,
                    stamp=datetime.fromisoformat(stamp),
                )
        except OllamaUnavailable as e:
            self._unavailable(job, str(e))
            return
        except OllamaError as e:
            self._next.pop(job.id, None)
            self.on_refused(job, str(e))
            return
        self._next.pop(job.id, None)
        job = self.store.transition(
            job.id,
            State.DONE,
            detail=f"registered as {result.latest}",
            waiting_for=None,
            result={**job.result, "registered": True, "ollama": result.as_dict()},
        )
        log.info("job %d registered with Ollama as %s", job.id, result.latest)
        self.on_done(job)

    def _unavailable(self, job: Job, message: str) -> None:
        if not self.wait_for_ollama:
            job = self.store.transition(
                job.id,
                State.DONE,
                detail="Ollama not answering; not registered",
                waiting_for=None,
                result={**job.result, "registered": False, "ollama_error": message},
            )
            self.on_done(job)
            return
        _, delay = self._next.get(job.id, (0.0, FIRST_DELAY / 2))
        delay = min(self.max_delay, delay * 2)
        self._next[job.id] = (time.monotonic() + delay, delay)
        reason = f"Ollama not answering at {self.host}; next try in {int(delay)} s"
        self.store.update(job.id, waiting_for=reason, mirror=True)
        log.info("job %d: %s; next try in %d s", job.id, message, int(delay))
