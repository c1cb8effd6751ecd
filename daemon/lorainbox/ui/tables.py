"""The terminal's views of jobs and recipes: ``lorainbox status`` (every job, or one whole),
``lorainbox run --once``'s summary and ``lorainbox recipes``."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from lorainbox.core.humanize import duration, export_stage, loss_text
from lorainbox.pipeline.jobs import ACTIONS, Job, State, refusal

RECIPE_TABLE_WIDTH = 120
"""Below this many columns the recipes table wraps every cell; blocks read better."""

_STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "cancelled": "dim",
    "training": "cyan",
    "exporting": "cyan",
    "registering": "magenta",
    "waiting": "yellow",
    "paused": "yellow",
}


def print_jobs(console: Console, jobs: list[Job]) -> None:
    if not jobs:
        console.print("No jobs yet. Drop a folder with a recipe.toml and data into the inbox.")
        return
    table = Table(show_lines=False)
    for col in ("id", "name", "state", "progress"):
        table.add_column(col)
    table.add_column("folder", overflow="fold")
    for j in jobs:
        table.add_row(
            str(j.id), escape(j.name), _state_text(j), progress_text(j), escape(_folder_text(j))
        )
    console.print(table)


def print_job(console: Console, j: Job) -> None:
    """One job whole: what the table has no room for."""
    from lorainbox.pipeline.results import trained_text

    def when(at: float | None) -> str | None:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else None

    registered = j.result.get("registered") and j.model
    actions = [a for a in ACTIONS if refusal(j, a) is None]
    rows = {
        "state": _state_text(j),
        "progress": progress_text(j),
        "trained": escape(trained_text(j.result.get("trained", {}))),
        "model": escape(f"{j.model} (`ollama run {j.model}`)" if registered else j.model or ""),
        "answer": escape(_smoke_text(j.result.get("smoke_chat"))),
        "folder": escape(str(j.folder)),
        "error": escape(j.error or "") if j.state == State.FAILED else "",
        "created": when(j.created_at),
        "finished": when(j.finished_at),
        "log": f"lorainbox logs {j.id}",
        "can": escape(", ".join(f"lorainbox {a} {j.id}" for a in actions)),
    }
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows.items():
        if value:
            grid.add_row(key, value)
    console.print(f"[bold]Job {j.id} {escape(j.name)}[/bold]")
    console.print(grid)


def progress_text(j: Job) -> str:
    p = j.progress
    if not p.get("total"):
        return ""
    step, total = int(p.get("step", 0)), int(p["total"])
    width = 16
    filled = int(width * min(step, total) / max(total, 1))
    parts = [f"{'█' * filled}{'░' * (width - filled)} {step}/{total}"]
    if p.get("train_loss") is not None:
        parts.append(f"loss {loss_text(p['train_loss'])}")
    if p.get("tokens_per_second"):
        parts.append(f"{p['tokens_per_second']:.0f} tok/s")
    if p.get("eta_seconds") and j.state == State.TRAINING:
        parts.append(f"ETA {duration(p['eta_seconds'])}")
    if j.state == State.EXPORTING and (stage := export_stage(p)):
        parts.append(stage)
    return "  ".join(parts)


def _state_text(j: Job) -> str:
    style = _STATE_STYLE.get(j.state.value, "white")
    text = f"[{style}]{j.state.value}[/{style}]"
    if j.waiting_for and j.state in (State.WAITING, State.PAUSED, State.REGISTERING):
        text += f": {escape(j.waiting_for)}"
    elif j.state == State.FAILED and j.error:
        text += f": {escape(j.error[:60])}"
    return text


def _smoke_text(smoke: dict[str, str] | None) -> str:
    """The first chat after registering: "Q? -> answer", or why it was not asked."""
    if not smoke:
        return ""
    if "skipped" in smoke:
        return f"not asked: {smoke['skipped']}"
    return f"{smoke['question']} -> {' '.join(smoke['answer'].split())}"


def _folder_text(j: Job) -> str:
    """Where the job's folder is, within its inbox (``Done/good-2``): the part that differs."""
    try:
        return j.folder.relative_to(j.inbox).as_posix()
    except ValueError:
        return _short(j.folder)


def _short(p: Path) -> str:
    try:
        return str(p.relative_to(Path.home()).as_posix()).join(("~/", ""))
    except ValueError:
        return str(p)


def print_recipes(console: Console, inbox: Path) -> None:
    """The recipes a drop in ``inbox`` can extend: a table, or a block each where it is narrow."""
    rows = _recipe_rows(inbox)
    if console.width >= RECIPE_TABLE_WIDTH:
        table = Table()
        for col in ("name", "kind", "base model", "what it is for", "from"):
            table.add_column(col, no_wrap=col in ("name", "kind"), overflow="fold")
        for row in rows:
            table.add_row(*map(escape, row))
        console.print(table)
        return
    for name, kind, base, summary, origin in rows:
        style = "red" if kind == "invalid" else "bold"
        console.print(f"[{style}]{escape(name)}[/{style}] ({escape(kind)}, {escape(origin)})")
        for line in (base, summary):
            if line:
                console.print(Padding(Text(line), (0, 0, 0, 2)), highlight=False)


def _recipe_rows(inbox: Path) -> list[tuple[str, str, str, str, str]]:
    """Name, kind, base model, summary and origin of each recipe, the user's shadowing the
    built-in ones of the same name."""
    from lorainbox.drop.recipe import (
        BUILTIN_RECIPES,
        find_recipe,
        load_recipe,
        recipe_search_dirs,
        recipe_summary,
    )

    dirs = recipe_search_dirs(inbox)
    rows = []
    for name in sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")}):
        path = find_recipe(name, dirs)
        assert path is not None
        origin = "built-in" if path.parent == BUILTIN_RECIPES else _short(path)
        try:
            r = load_recipe(path, search_dirs=dirs, defaults={"name": name})
            rows.append((name, r.kind, r.base_model, recipe_summary(path, r), origin))
        except Exception as e:  # a broken user recipe should not hide the others
            rows.append((name, "invalid", "", str(e), origin))
    return rows
