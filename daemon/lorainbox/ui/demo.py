"""``lorainbox demo``: the whole product, offline, on a real small model.

It puts the example drop ``inbox/lighthouse`` (SmolLM2-135M-Instruct learns a made-up fact; or
``inbox/tiny-fact`` on a tiny model built on the spot) into a fresh demo inbox, runs the real
daemon until the job ends, registers the model with Ollama if one answers at ``OLLAMA_HOST``
(and says plainly when none does), then asks the new model the fact it learned and a general
question it must not have forgotten.

Every run starts over, yet nothing a person put somewhere is deleted: the demo marks the folder
it makes as its own (:data:`MARK`) and clears only a marked one.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from lorainbox.core.config import Settings, load_settings
from lorainbox.core.layout import (
    ADAPTERS_DIR,
    ERROR_FILE,
    GGUF,
    LOSS_PNG,
    MODELFILE,
    REPORT,
    TRAIN_LOG,
)
from lorainbox.core.share import EXAMPLE_DROPS
from lorainbox.pipeline.jobs import Job, State
from lorainbox.pipeline.results import trained_text
from lorainbox.trainers.samples import GENERAL_QUESTIONS
from lorainbox.ui.progress import ProgressView

if TYPE_CHECKING:
    from lorainbox.pipeline.service import Daemon
    from lorainbox.ui.chat import ChatAnswer

EXAMPLES = {name: EXAMPLE_DROPS / name for name in ("lighthouse", "tiny-fact")}
EXAMPLE = EXAMPLES["lighthouse"]
VIA_NAMES = {"ollama": "Ollama", "llama.cpp": "llama.cpp"}
GENERAL_QUESTION = GENERAL_QUESTIONS[0]
MARK = ".lorainbox-demo"
MARK_TEXT = (
    "Made by `lorainbox demo`. Every demo run clears inbox/ and state/ here and starts over.\n"
    "To keep them, delete this file: the demo then refuses to touch this folder.\n"
)


def first_question(drop: Path) -> tuple[str, str]:
    """The first user question in the drop's data, and the answer it teaches."""
    for line in (drop / "train.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        msgs = json.loads(line)["messages"]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        answer = next(m["content"] for m in msgs if m["role"] == "assistant")
        return user, answer
    raise ValueError(f"no example in {drop / 'train.jsonl'}")


def something_in(folder: Path) -> Path | None:
    """The first thing a person may have put in ``folder``: anything but empty folders."""
    try:
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink() or not entry.is_dir():
                return entry
            if found := something_in(entry):
                return found
    except OSError:
        return folder
    return None


def claim(directory: Path, settings: Settings) -> str | None:
    """Make ``directory`` the demo's, clearing what an earlier demo left there; or say why not.

    Only a folder carrying the demo's mark is cleared: an unmarked one with anything in it may
    hold a person's files, and an inbox a daemon is watching is in use.
    """
    from lorainbox.pipeline.service import DaemonLock

    if directory.exists() and not directory.is_dir():
        return f"{directory} is a file, not a folder; choose a folder with `lorainbox demo --dir`"
    if pid := DaemonLock(settings.lock_path).holder():
        return (
            f"a daemon (pid {pid}) is running on {settings.inbox}, perhaps another demo; "
            "let it finish or stop it, or choose another folder (`lorainbox demo --dir NEW`)"
        )
    mark = directory / MARK
    if mark.is_file():
        for d in (settings.inbox, settings.state_dir):
            shutil.rmtree(d, ignore_errors=True)
        return None
    if directory.is_dir() and (found := something_in(directory)):
        return (
            f"{directory} already holds things the demo did not make (such as {found}), and the "
            "demo clears its folder on every run; nothing was touched. Choose another folder "
            "(`lorainbox demo --dir NEW`) or empty this one"
        )
    directory.mkdir(parents=True, exist_ok=True)
    mark.write_text(MARK_TEXT)
    return None


@contextmanager
def stop_on_signals(daemon: Daemon, console: Console) -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM stop the daemon the way they stop ``lorainbox run``: its worker pauses
    at a step boundary and exits with it. The daemon runs in a thread here, where it cannot set
    these handlers itself, and without them its worker trained on, orphaned. Yields the signals
    received."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not received:
            console.print("Stopping: the training pauses at its next step, then the demo exits.")
        received.append(signum)
        daemon.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def next_steps(settings: Settings, job: Job) -> list[str]:
    """Commands that look at the demo's result. The demo keeps its own inbox and state, so
    each names both: with the inbox alone, ``status`` reads the person's own job store."""
    env = (
        f"LORAINBOX_INBOX={shlex.quote(str(settings.inbox))} "
        f"LORAINBOX_STATE_DIR={shlex.quote(str(settings.state_dir))}"
    )
    return [f"{env} lorainbox chat {shlex.quote(job.model)}", f"{env} lorainbox status"]


def _print_check(console: Console, job: Job) -> None:
    check = (job.result.get("gguf_info") or {}).get("self_check") or {}
    if check:
        diff = check.get("max_logit_diff")
        logits = (
            f"; next-token logits within {diff} of the trained model" if diff is not None else ""
        )
        console.print(
            f"The GGUF reads {check.get('examples')} of the drop's chats token for token as "
            f"training did{logits}."
        )


def run_demo(directory: Path, console: Console, example: Path = EXAMPLE) -> int:
    from lorainbox.core.logs import setup_logging
    from lorainbox.drop.recipe import load_recipe, recipe_search_dirs
    from lorainbox.models.base import resolve_base_model
    from lorainbox.pipeline.service import Daemon
    from lorainbox.ui.chat import chat_once

    inbox, state = directory / "inbox", directory / "state"
    settings = load_settings(
        None, inbox=inbox, state_dir=state, settle_seconds=0.5, tick_seconds=2.0
    )
    if refusal := claim(directory, settings):
        Console(stderr=True).print(f"[red]error:[/red] {escape(refusal)}", highlight=False)
        return 1
    console.rule("[bold]LoRA Inbox demo[/bold]")
    setup_logging(settings.log_dir, console=False)
    console.print(f"Demo inbox: {inbox}\nLog: {settings.log_dir / 'lorainbox.log'}")
    recipe = load_recipe(example / "recipe.toml", search_dirs=recipe_search_dirs(None))
    with console.status(f"Building {recipe.base_model} (once; cached afterwards)…"):
        base = resolve_base_model(recipe.base_model, example)
    console.print(f"Base model: {base}")

    daemon = Daemon(settings, once=True)
    daemon.layout.create()
    shutil.copytree(example, inbox / ".tiny-fact.copying")
    (inbox / ".tiny-fact.copying").rename(inbox / example.name)
    console.print(
        f"Dropped [bold]{example.name}[/bold] into the inbox; the daemon takes it from here."
    )

    with ProgressView(daemon.hub, console), stop_on_signals(daemon, console) as received:
        runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        runner.start()
        runner.join()
    if received:
        console.print(
            f"Stopped before the job finished; it waits in {inbox / 'Queue'}. "
            f"`lorainbox demo --dir {shlex.quote(str(directory))}` starts the demo over.",
            markup=False,
        )
        return 128 + received[0]

    jobs = daemon.store.list(str(inbox))
    if not jobs:
        console.print("[red]The drop never became a job; see the log.[/red]")
        return 1
    job = jobs[-1]
    if job.state != State.DONE:
        error = job.folder / ERROR_FILE
        console.print(f"[red]The job ended {job.state.value}.[/red]")
        if error.exists():
            console.print(error.read_text())
        return 1

    gguf = job.folder / GGUF
    console.print(f"Results: {job.folder}")
    trained = job.result.get("trained", {})
    if how := trained_text(trained):
        why = f", because {trained['engine_reason']}" if trained.get("engine_reason") else ""
        console.print(f"Trained: {how}{why}", markup=False)
    for name in (GGUF, MODELFILE, REPORT, LOSS_PNG, ADAPTERS_DIR, TRAIN_LOG):
        mark = "✓" if (job.folder / name).exists() else "✗"
        console.print(f"  {mark} {name}")
    if job.result.get("registered"):
        console.print(f"Registered with Ollama as [bold]{job.result['ollama']['latest']}[/bold].")
    else:
        console.print(
            f"[yellow]No Ollama answered at {settings.ollama_host}[/yellow]: the model was not "
            "registered. The GGUF and a ready Modelfile are kept; once Ollama runs: "
            f"`ollama create {job.model} -f {job.folder / 'Modelfile'}`"
        )

    question, expected = first_question(example)
    target = job.model if job.result.get("registered") else gguf
    greedy = {"temperature": 0, "num_predict": 48, "seed": 0}

    def ask(prompt: str) -> ChatAnswer:
        return chat_once(target, prompt, host=settings.ollama_host, gguf=gguf, options=greedy)

    answer, general = ask(question), ask(GENERAL_QUESTION)
    learned = expected.strip().lower() in answer.text.strip().lower()
    console.print(
        Panel(
            f"[bold]Q:[/bold] {escape(question)}\n[bold]A:[/bold] {escape(answer.text.strip())}\n\n"
            f"[bold]Q:[/bold] {GENERAL_QUESTION}\n[bold]A:[/bold] {escape(general.text.strip())}"
            f"\n\n(answered through {VIA_NAMES[answer.via]}; the drop taught: {escape(expected)})",
            title="Asking the new model",
        )
    )
    console.print(
        "[green]It learned the fact.[/green]"
        if learned
        else "[yellow]The answer differs from what the drop taught.[/yellow]"
    )
    if "paris" in general.text.lower():
        console.print("[green]It still knows the capital of France.[/green]")
    else:
        console.print(
            "[yellow]It no longer says Paris for the capital of France: training made it "
            "forget.[/yellow] See report.md's general questions."
        )
    _print_check(console, job)
    console.print("\nTalk to it, and see the job (the demo keeps its own inbox and state):")
    for command in next_steps(settings, job):
        console.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)
    return 0
