"""``lorainbox chat``: a terminal conversation with a trained model, streamed as it answers."""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console

from daemon.chat import ChatSession
from daemon.config import Settings
from daemon.errors import DropError


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


def chat_command(target: str, prompt: str | None, settings: Settings, console: Console) -> int:
    session = ChatSession(target, host=settings.ollama_host, results=[settings.inbox / "Done"])
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
        console.print(f"[red]error:[/red] {e}")
        return 1
    return 0
