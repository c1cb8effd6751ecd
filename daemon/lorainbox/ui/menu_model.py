"""What the menu-bar app shows, as pure functions of the status API's jobs JSON.

All the deciding lives here so it is tested anywhere; ``menubar.py`` only draws the result with
rumps on a Mac. Which actions a job allows comes from the API (its ``actions`` list), so the
menu never offers what the daemon would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lorainbox.core.humanize import duration, loss_text

Job = dict[str, Any]

RUNNING = ("training", "exporting", "registering")
WAITING = ("waiting", "paused")
FINISHED = ("done", "failed", "cancelled")
JOB_ACTIONS = ("pause", "resume", "cancel")
MAX_LABEL = 72


@dataclass(frozen=True)
class Item:
    """One menu line. ``action`` names what a click does; a line without one is information."""

    label: str
    action: str | None = None
    job_id: int | None = None
    enabled: bool = True
    children: tuple[Item, ...] = field(default_factory=tuple)

    @property
    def separator(self) -> bool:
        return self.label == SEPARATOR.label and self.action is None


SEPARATOR = Item("---", enabled=False)


@dataclass(frozen=True)
class Menu:
    title: str
    items: tuple[Item, ...]


def build_menu(jobs: Sequence[Job] | None, *, recent: int = 3) -> Menu:
    """The whole menu; ``jobs`` is None when the daemon didn't answer."""
    if jobs is None:
        return Menu(
            "LoRA Inbox: not running",
            (
                info("The daemon is not running: start it with `lorainbox run`"),
                info("or at login with `lorainbox agent install`"),
                SEPARATOR,
                *_app_items(),
            ),
        )
    focus = focus_job(jobs)
    items: list[Item] = []
    if focus is not None:
        items += [info(job_line(focus)), *_action_items(focus, with_name=True)]
    for header, section in (
        ("Queue", [j for j in queue_order(jobs) if j is not focus]),
        ("Recent", finished_jobs(jobs)[:recent]),
    ):
        if section:
            items += [SEPARATOR] if items else []
            items += [info(header), *(_job_submenu(j) for j in section)]
    if not items:
        items.append(info("No jobs. Drop a folder with a recipe.toml into the inbox."))
    return Menu(title(jobs), (*items, SEPARATOR, *_app_items()))


def title(jobs: Sequence[Job]) -> str:
    """The menu-bar text: the running job, else what the next job waits for, else idle."""
    job = focus_job(jobs)
    if job is None:
        return "LoRA Inbox: idle"
    state = job["state"]
    if state == "training":
        pct = percent(job)
        return f"◐ {job['name']} {pct}%" if pct is not None else f"◐ {job['name']}"
    if state in RUNNING:
        return f"◐ {job['name']} {state}"
    if state == "paused" and job.get("held"):
        return f"⏸ paused: {job['name']}"
    if state in WAITING:
        return f"⏸ waiting: {job.get('waiting_for') or state}"
    queued = sum(1 for j in jobs if j["state"] == "queued")
    return f"LoRA Inbox: {queued} queued"


def focus_job(jobs: Sequence[Job]) -> Job | None:
    """The job the title is about: the one running, else the next in line."""
    running = [j for j in jobs if j["state"] in RUNNING]
    if running:
        return running[0]
    line = queue_order(jobs)
    return line[0] if line else None


def queue_order(jobs: Sequence[Job]) -> list[Job]:
    """Unfinished jobs in the scheduler's order (highest priority first, then oldest)."""
    open_jobs = [j for j in jobs if j["state"] not in FINISHED]
    return sorted(
        open_jobs, key=lambda j: (j["state"] not in RUNNING, -j.get("priority", 0), j["id"])
    )


def finished_jobs(jobs: Sequence[Job]) -> list[Job]:
    """Finished jobs, newest first."""
    done = [j for j in jobs if j["state"] in FINISHED]
    return sorted(done, key=lambda j: -((j.get("times") or {}).get("finished") or 0))


def percent(job: Job) -> int | None:
    p = job.get("progress") or {}
    total = p.get("total")
    if not total:
        return None
    return max(0, min(100, int(100 * (p.get("step") or 0) / total)))


def job_line(job: Job) -> str:
    """One job as a line: name, state (with what it waits for) and progress."""
    state = job["state"]
    p = job.get("progress") or {}
    parts = [f"{job['name']} — {state}"]
    if state in WAITING and job.get("waiting_for"):
        reason = job["waiting_for"]
        parts = [f"{job['name']} — {reason if reason.startswith(state) else f'{state}: {reason}'}"]
    elif state == "failed" and job.get("error"):
        parts = [f"{job['name']} — failed: {job['error'].splitlines()[0]}"]
    if state == "exporting" and job.get("export_stage"):
        parts.append(job["export_stage"])
    elif p.get("total") and state not in FINISHED:
        parts.append(f"{p.get('step') or 0}/{p['total']} ({percent(job)}%)")
        if p.get("train_loss") is not None:
            parts.append(f"loss {loss_text(p['train_loss'])}")
        if p.get("eta_seconds") and state == "training":
            parts.append(f"ETA {duration(p['eta_seconds'])}")
    return shorten(" · ".join(parts))


def shorten(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def info(label: str) -> Item:
    return Item(shorten(label), enabled=False)


def _action_items(job: Job, *, with_name: bool) -> list[Item]:
    allowed = job.get("actions") or []
    suffix = f" {job['name']}" if with_name else ""
    return [
        Item(shorten(f"{a.capitalize()}{suffix}"), a, job["id"], a in allowed) for a in JOB_ACTIONS
    ]


def _job_submenu(job: Job) -> Item:
    actions = _action_items(job, with_name=False)
    if "retry" in (job.get("actions") or []):
        actions.append(Item("Retry", "retry", job["id"]))
    shown = tuple(a for a in actions if a.enabled)
    return Item(job_line(job), job_id=job["id"], children=shown)


def _app_items() -> tuple[Item, ...]:
    return (
        Item("Open Inbox", "open_inbox"),
        Item("Open Status Page", "open_page"),
        SEPARATOR,
        Item("Quit (the daemon keeps running)", "quit"),
    )
