"""``lorainbox demo``: the whole product, offline, on a tiny model built on the spot.

It puts the example drop ``inbox/tiny-fact`` into a fresh demo inbox, runs the real daemon
until the job ends, registers the model with Ollama if one answers at ``OLLAMA_HOST`` (and says
plainly when none does), then asks the new model the fact it learned.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from daemon.config import load_settings
from daemon.jobs import State
from daemon.progress import ProgressView

EXAMPLE = Path(__file__).resolve().parent.parent / "inbox" / "tiny-fact"
VIA_NAMES = {"ollama": "Ollama", "llama.cpp": "llama.cpp"}


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


def run_demo(directory: Path, console: Console, example: Path = EXAMPLE) -> int:
    from daemon.chat import chat_once
    from daemon.logs import setup_logging
    from daemon.models import resolve_base_model
    from daemon.service import Daemon

    console.rule("[bold]LoRA Inbox demo[/bold]")
    inbox, state = directory / "inbox", directory / "state"
    for d in (inbox, state):  # the demo's own folders, made by the last demo run
        shutil.rmtree(d, ignore_errors=True)
    settings = load_settings(
        None, inbox=inbox, state_dir=state, settle_seconds=0.5, tick_seconds=2.0
    )
    setup_logging(settings.log_dir, console=False)
    console.print(f"Demo inbox: {inbox}\nLog: {settings.log_dir / 'lorainbox.log'}")
    with console.status("Building the tiny base model (once; cached afterwards)…"):
        base = resolve_base_model("lorainbox:tiny-llama", example)
    console.print(f"Base model: {base}")

    daemon = Daemon(settings, once=True)
    daemon.layout.create()
    shutil.copytree(example, inbox / ".tiny-fact.copying")
    (inbox / ".tiny-fact.copying").rename(inbox / example.name)
    console.print(
        f"Dropped [bold]{example.name}[/bold] into the inbox; the daemon takes it from here."
    )

    with ProgressView(daemon.hub, console):
        runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        runner.start()
        runner.join()

    jobs = daemon.store.list(str(inbox))
    if not jobs:
        console.print("[red]The drop never became a job; see the log.[/red]")
        return 1
    job = jobs[-1]
    if job.state != State.DONE:
        error = job.folder / "ERROR.md"
        console.print(f"[red]The job ended {job.state.value}.[/red]")
        if error.exists():
            console.print(error.read_text())
        return 1

    gguf = job.folder / "model.gguf"
    console.print(f"Results: {job.folder}")
    for name in ("model.gguf", "Modelfile", "report.md", "loss.png", "adapters", "train.log"):
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
    answer = chat_once(
        job.model if job.result.get("registered") else gguf,
        question,
        host=settings.ollama_host,
        gguf=gguf,
    )
    learned = expected.strip().lower() in answer.text.strip().lower()
    console.print(
        Panel(
            f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {answer.text.strip()}\n\n"
            f"(answered through {VIA_NAMES[answer.via]}; the drop taught: {expected})",
            title="Asking the new model",
        )
    )
    console.print(
        "[green]It learned the fact.[/green]"
        if learned
        else "[yellow]The answer differs from what the drop taught.[/yellow]"
    )
    return 0
