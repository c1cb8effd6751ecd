"""Registration: the finished GGUF goes to Ollama, retried with backoff while Ollama is away.

The job waits in ``registering`` with the GGUF and a ready Modelfile already in Done/<name>/,
so a person can always register by hand; it completes on its own once Ollama answers, and is
done once the registered model has answered one of the drop's questions. Whatever one job's
registration raises fails that job alone (with Ollama's words); the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lorainbox.core.errors import DropError, Problem
from lorainbox.core.layout import GGUF
from lorainbox.export.ollama import (
    OllamaClient,
    OllamaError,
    OllamaUnavailable,
    RegisterResult,
    register_model,
)
from lorainbox.pipeline.jobs import Job, JobStore, State
from lorainbox.pipeline.smoke import smoke_chat
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
    on_refused: Callable[[Job, DropError], None] = lambda job, error: None
    _next: dict[int, tuple[float, float]] = field(default_factory=dict)

    def tick(self) -> None:
        now = time.monotonic()
        for job in self.store.list(self.inbox, (State.REGISTERING,)):
            due, _ = self._next.get(job.id, (0.0, 0.0))
            if now >= due:
                self.attempt(job)

    def attempt(self, job: Job) -> None:
        try:
            self._attempt(job)
        except OllamaUnavailable as e:
            self._unavailable(job, str(e))
        except Exception as e:  # one job's trouble, however odd, must not hold up the others
            self._next.pop(job.id, None)
            if not isinstance(e, (DropError, OllamaError)):
                log.exception("registering job %d failed unexpectedly", job.id)
            self.on_refused(job, registration_error(job, e))

    def _attempt(self, job: Job) -> None:
        recipe = load_recipe_of(job)
        # One version tag per job, however many tries it takes.
        stamp = job.result.get("register_stamp") or datetime.now().isoformat(timespec="seconds")
        if "register_stamp" not in job.result:
            job = self.store.update(job.id, result={**job.result, "register_stamp": stamp})
        with OllamaClient(self.host) as client:
            result = register_model(
                client,
                job.folder / GGUF,
                recipe.ollama_model,
                system=recipe.ollama.system,
                parameters=recipe.ollama.parameters,
                template=recipe.ollama.template,
                quantize=recipe.export.quantize,
                stamp=datetime.fromisoformat(stamp),
            )
            job = self.store.update(
                job.id, result={**job.result, "registered": True, "ollama": result.as_dict()}
            )
            smoke = self._smoke(client, result, job)
        self._next.pop(job.id, None)
        job = self.store.transition(
            job.id,
            State.DONE,
            detail=f"registered as {result.latest}",
            waiting_for=None,
            result={**job.result, "smoke_chat": smoke},
        )
        log.info("job %d registered with Ollama as %s", job.id, result.latest)
        self.on_done(job)

    def _smoke(self, client: OllamaClient, result: RegisterResult, job: Job) -> dict[str, Any]:
        try:
            asked = smoke_chat(client, result.latest, job.folder)
        except OllamaUnavailable as e:
            return {"skipped": f"Ollama stopped answering: {e}"}
        except OllamaError as e:
            raise _CannotAnswer(result.latest, e.message) from e
        return asked or {"skipped": "the data holds no question to ask (plain text only)"}

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


class _CannotAnswer(OllamaError):
    def __init__(self, model: str, message: str):
        self.model = model
        super().__init__(message)


def registration_error(job: Job, error: Exception) -> DropError:
    """What a person reads when registration fails: Ollama's words (or ours), where the GGUF
    is, and that training need not run again."""
    where = str(job.folder / GGUF)
    again = f"then `lorainbox register {where} --name {job.model}` (no training again)"
    kept = "the model trained and converted (model.gguf and Modelfile are kept here)"
    if isinstance(error, _CannotAnswer):
        return DropError.one(
            f"Ollama registered {error.model} but cannot answer with it: {error.message}",
            where,
            f"{kept}; fix the recipe's [ollama] parameters or template, {again}",
        )
    if isinstance(error, DropError):
        return DropError(
            [Problem(p.what, p.where, f"{p.fix}; {kept}: {again}") for p in error.problems]
        )
    said = error.message if isinstance(error, OllamaError) else f"{type(error).__name__}: {error}"
    return DropError.one(
        f"Ollama refused the model: {said}", where, f"{kept}; fix what Ollama says, {again}"
    )
