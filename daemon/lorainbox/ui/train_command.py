"""``lorainbox train PATH``: one drop, now, in the terminal; no daemon, no gates.

The drop stays where it is and the results are written into it. The job still goes through the
store, the worker process and the registrar, so it behaves exactly as under the daemon; Ctrl-C
pauses it at a checkpoint, and running the command again resumes.
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from lorainbox.core.config import Settings
from lorainbox.core.errors import DropError
from lorainbox.core.events import JobChanged
from lorainbox.core.hub import Hub
from lorainbox.drop.recipe import Recipe
from lorainbox.pipeline.intake import Intake
from lorainbox.pipeline.jobs import Job, JobStore, State
from lorainbox.pipeline.registrar import Registrar
from lorainbox.pipeline.results import write_results
from lorainbox.pipeline.supervisor import (
    Supervisor,
    load_recipe_of,
    problems_error,
    shrink_after_out_of_memory,
)
from lorainbox.pipeline.watcher import InboxLayout
from lorainbox.ui.progress import ProgressView
from lorainbox.worker.outcome import Outcome, Verdict

EXIT_INTERRUPTED = 130
"""Ctrl-C's usual status: the job paused, unfinished, so a script does not read it as done."""


def train_foreground(drop: Path, settings: Settings, console: Console) -> int:
    if not drop.is_dir():
        _error(console, f"{drop} is not a folder")
        return 2
    if drop.parent == settings.inbox.expanduser().resolve():
        _error(
            console,
            f"{drop} is in the inbox, where the daemon takes it in and trains it itself (and "
            "would train it again after this). Move it out of the inbox to train it here now, "
            'or let the daemon run it at once with `[schedule] when = "now"`.',
        )
        return 2
    store = JobStore(settings.db_path)
    hub = Hub()
    intake = Intake(InboxLayout(drop.parent), store, hub)
    try:
        recipe = intake.check(drop, drop.name)
    except DropError as e:
        console.print(problems_text(e.in_folder(drop), "This drop could not be trained", drop))
        return 2
    job = next(
        (j for j in store.list(str(drop.parent)) if j.path == str(drop) and not j.state.finished),
        None,
    ) or store.add(drop.parent, drop.name, drop, model=recipe.ollama_model)

    ended = threading.Event()
    outcome: list[Outcome] = []

    def on_exit(o: Outcome) -> None:
        outcome.append(o)
        ended.set()

    supervisor = Supervisor(store, hub, settings, on_exit)
    with ProgressView(hub, console):
        hub.publish(JobChanged(job.id, job.name, "training", None))
        while True:
            o = _run_once(supervisor, store.get(job.id), ended, outcome, console)
            if o.verdict != Verdict.OUT_OF_MEMORY:
                break
            change = shrink_after_out_of_memory(store.get(job.id), o, settings.max_oom_retries)
            if isinstance(change, DropError):
                o.problems = change.to_json()
                break
            store.update(job.id, oom_retries=store.get(job.id).oom_retries + 1)
            console.print(f"Out of memory; training again with {change}.", markup=False)
        job = _finish(store.get(job.id), o, recipe, store, settings)
        hub.publish(JobChanged(job.id, job.name, job.state.value, None))
    if job.state == State.PAUSED:
        console.print(f"Paused at step {o.paused_step}. Run the same command again to resume.")
        return EXIT_INTERRUPTED
    if job.state == State.FAILED and o.verdict != Verdict.TRAINED:
        console.print(problems_text(_worker_error(o).in_folder(drop), "Training failed", drop))
        return 1
    if job.state == State.FAILED:
        console.print(f"[red]Ollama refused the model:[/red] {escape(job.error or '')}")
        return 1
    console.print(
        f"[green]Done.[/green] Results in {escape(str(drop))} (report.md, loss.png, Modelfile)."
    )
    if job.result.get("registered"):
        console.print(f"Try it: `ollama run {job.model}`", markup=False)
    elif job.model and recipe.export.gguf:
        console.print(
            f"Ollama did not answer, so the model is not registered. Later: "
            f"`lorainbox register {drop / 'model.gguf'} --name {job.model}`",
            markup=False,
        )
    return 0


def _error(console: Console, message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")


def problems_text(error: DropError, title: str, drop: Path) -> Text:
    """What, where and how to fix, for a terminal: ERROR.md's Markdown and its advice to move
    the folder back into the inbox are for the daemon's drops, not for ``lorainbox train``."""
    text = Text(title, style="bold red")
    numbered = len(error.problems) > 1
    for i, p in enumerate(error.problems, 1):
        text.append(f"\n\nProblem {i}" if numbered else "\n")
        for label, value in (("What", p.what), ("Where", p.where), ("How to fix", p.fix)):
            text.append(f"\n  {label}: ", style="bold")
            text.append(value)
    text.append(
        f"\n\nNothing was deleted. Fix it, then run `lorainbox train {shlex.quote(str(drop))}` "
        "again."
    )
    return text


def _worker_error(o: Outcome) -> DropError:
    return problems_error(o.problems, o.message or f"the worker exited with code {o.code}")


def _run_once(
    supervisor: Supervisor,
    job: Job,
    ended: threading.Event,
    outcome: list[Outcome],
    console: Console,
) -> Outcome:
    outcome.clear()
    ended.clear()
    supervisor.start(job)
    try:
        while not ended.wait(0.5):
            pass
    except KeyboardInterrupt:
        console.print("Pausing at the next step (a checkpoint is saved)…")
        supervisor.stop("hold")
        ended.wait()
    return outcome[0]


def _finish(job: Job, o: Outcome, recipe: Recipe, store: JobStore, settings: Settings) -> Job:
    """Record how the worker ended; after training, write the results and register the model."""
    if o.verdict == Verdict.PAUSED:
        store.transition(
            job.id, State.PAUSED, detail="paused by you", checkpoint_step=o.paused_step
        )
        return store.get(job.id)
    if o.verdict != Verdict.TRAINED:
        error = str(_worker_error(o))
        store.transition(job.id, State.FAILED, detail=error, error=error)
        return store.get(job.id)
    write_results(job, recipe, store)
    if recipe.kind == "llm" and recipe.export.gguf and recipe.ollama.enabled:
        store.transition(job.id, State.REGISTERING)
        registrar = Registrar(
            store,
            settings.ollama_host,
            job.inbox,
            0,
            wait_for_ollama=False,
            on_refused=lambda j, e: store.transition(
                j.id, State.FAILED, detail=str(e), error=str(e)
            ),
        )
        registrar.attempt(store.get(job.id))
    else:
        store.transition(job.id, State.DONE)
    job = store.get(job.id)
    write_results(job, load_recipe_of(job), store, final=True)
    return store.get(job.id)
