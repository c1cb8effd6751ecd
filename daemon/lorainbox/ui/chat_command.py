"""``lorainbox chat``: a terminal conversation with a trained model, streamed as it answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lorainbox.core.config import Settings
from lorainbox.core.errors import DropError
from lorainbox.core.layout import GGUF
from lorainbox.pipeline.jobs import JobStore
from lorainbox.ui.chat import ChatSession


def _prompts(console: Console) -> Iterator[str]:
    while True:
        try:
            text = console.input("[bold cyan]you>[/bold cyan] ")
        except (EOFError, KeyboardInterrupt):
            return
        if text.strip() in ("/bye", "/exit", "/quit"):
            return
        if text.strip():
            yield text


def _job_gguf(target: str, settings: Settings) -> Path | None:
    """The GGUF of the job that ``target`` names (by job, folder or model name), if it has one:
    a recipe's ``name`` names the model, not the folder the GGUF is in."""
    job = JobStore(settings.db_path).find(target.removesuffix(":latest"), settings.inbox)
    gguf = job.folder / GGUF if job is not None else None
    return gguf if gguf is not None and gguf.is_file() else None


def chat_command(target: str, prompt: str | None, settings: Settings, console: Console) -> int:
    session = ChatSession(
        target,
        host=settings.ollama_host,
        results=[settings.inbox / "Done"],
        gguf=_job_gguf(target, settings),
    )
    told: set[str] = set()

    def ask(text: str) -> None:
        answer = session.ask(
            text, on_token=lambda piece: console.print(piece, end="", markup=False)
        )
        console.print()
        note = answer.note or (f"(answered by {answer.via})" if answer.via != "ollama" else None)
        if note and note not in told:
            console.print(f"[dim]{note}[/dim]")
            told.add(note)

    try:
        if prompt is not None:
            ask(prompt)
            return 0
        console.print(f"Chatting with [bold]{target}[/bold]; /bye to leave.")
        for text in _prompts(console):
            ask(text)
    except DropError as e:
        for p in e.problems:  # what and how first: where is the least of it here
            console.print(f"[red]error:[/red] {escape(p.what)}\n{escape(p.fix)}")
        return 1
    return 0
