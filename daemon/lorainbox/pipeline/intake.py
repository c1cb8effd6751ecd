"""Intake: a settled drop becomes a queued job, or lands in Failed/ with an ERROR.md.

The drop is claimed first (moved into Queue/, so nothing else picks it up), then checked there:
recipe (with what Ollama would refuse), data, base model. Whatever is wrong is written to ERROR.md in the drop, which moves to
Failed/ whole; nothing is ever deleted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lorainbox.core import atomic
from lorainbox.core.errors import DropError
from lorainbox.core.events import DropRejected, JobChanged, Wake
from lorainbox.core.hub import Hub
from lorainbox.core.layout import ERROR_FILE, RECIPE_FILE, RESOLVED_RECIPE, WORK_DIR
from lorainbox.drop.datasets import detect_kind, inspect_data, prepare_split
from lorainbox.drop.recipe import Recipe, default_recipe, load_recipe, recipe_search_dirs
from lorainbox.pipeline.jobs import Job, JobStore, State
from lorainbox.pipeline.ollama_checks import ollama_problems
from lorainbox.pipeline.watcher import InboxLayout

log = logging.getLogger(__name__)


def write_error_file(folder: Path, text: str) -> None:
    """ERROR.md, whole or not at all: on a full disk the error still reaches status and the
    menu, and the folder holds no empty ERROR.md to puzzle over."""
    try:
        atomic.write_text(folder / ERROR_FILE, text)
    except OSError as e:
        log.warning("could not write %s: %s", folder / ERROR_FILE, e)


@dataclass
class Intake:
    layout: InboxLayout
    store: JobStore
    hub: Hub

    def take(self, drop: Path) -> Job | None:
        """Claim ``drop``; return its queued job, or None when it was rejected."""
        if not drop.exists() and not drop.is_symlink():
            return None
        if drop.is_symlink() or not drop.is_dir():
            return self._reject_file(drop)
        name = drop.name
        active = self._active_job(name)
        claimed = self.layout.move(drop, self.layout.queue)
        if active is not None:
            return self._reject(
                claimed,
                name,
                DropError.one(
                    f'a job named "{name}" is already {active.state.value}',
                    f"{self.layout.queue / name}",
                    f"wait for it to finish, cancel it (`lorainbox cancel {name}`), "
                    "or rename this folder and drop it again",
                ),
            )
        return self._queue(claimed, name)

    def adopt(self, folder: Path) -> Job | None:
        """Queue a folder found in Queue/ without a job (the daemon died while claiming it)."""
        return self._queue(folder, folder.name)

    def _queue(self, claimed: Path, name: str) -> Job | None:
        try:
            recipe = self.check(claimed, name)
        except DropError as e:
            return self._reject(claimed, name, e)
        except Exception as e:  # a bug of ours must not lose the drop either
            log.exception("unexpected error taking in %s", claimed)
            return self._reject(
                claimed,
                name,
                DropError.one(
                    f"LoRA Inbox hit an internal error: {type(e).__name__}: {e}",
                    str(claimed),
                    "this is a bug; the log has details. Retry with `lorainbox retry NAME`",
                ),
            )
        job = self.store.add(
            self.layout.root,
            name,
            claimed,
            priority=recipe.schedule.priority,
            model=recipe.ollama_model if recipe.kind == "llm" else None,
        )
        log.info("queued job %d %s (%s)", job.id, name, claimed)
        self.hub.publish(JobChanged(job.id, name, State.QUEUED.value, None))
        self.hub.publish(Wake(f"queued {name}"))
        return job

    def check(self, drop: Path, name: str) -> Recipe:
        """Validate the drop in place and write what the worker reads into ``.lorainbox/``."""
        recipe = self.recipe_for(drop, name)
        if problems := ollama_problems(recipe, drop):
            raise DropError(problems)
        summary = inspect_data(drop, recipe.data, kind=recipe.kind)
        _check_base_model(recipe, drop)
        work = drop / WORK_DIR
        work.mkdir(exist_ok=True)
        prepare_split(
            summary,
            work / "data",
            valid_fraction=recipe.data.valid_fraction,
            seed=recipe.train.seed,
        )
        (work / RESOLVED_RECIPE).write_text(recipe.model_dump_json(indent=2))
        (work / "data-summary.json").write_text(
            json.dumps(
                {
                    "kind": summary.kind,
                    "train_examples": summary.train_examples,
                    "valid_examples": summary.valid_examples,
                    "stats": summary.stats,
                },
                indent=2,
                default=str,
            )
        )
        return recipe

    def recipe_for(self, drop: Path, name: str) -> Recipe:
        dirs = recipe_search_dirs(self.layout.root)
        path = drop / RECIPE_FILE
        if path.is_file():
            return load_recipe(path, search_dirs=dirs, defaults={"name": name})
        kind = detect_kind(drop)
        if kind is None:
            raise DropError.one(
                "no recipe.toml and no training data found",
                str(drop),
                "add a recipe.toml, and a train.jsonl (chat, completions or text) or images "
                "with captions; see the README's recipe reference",
            )
        return default_recipe(kind, name, search_dirs=dirs, where=str(drop))

    def _active_job(self, name: str) -> Job | None:
        for job in self.store.list(self.layout.root):
            if job.name == name and not job.state.finished:
                return job
        return None

    def _reject(self, drop: Path, name: str, error: DropError) -> None:
        """Move the drop to Failed/ with its ERROR.md, and keep it as a failed job, so that
        ``lorainbox status`` lists it and ``lorainbox retry NAME`` takes it in again."""
        failed = self.layout.move(drop, self.layout.failed)
        error = error.moved(drop, failed).in_folder(failed)
        write_error_file(failed, error.markdown())
        log.warning("rejected %s -> %s: %s", name, failed, error)
        # Named as its folder in Failed/: a second "good" refused while "good" trains is
        # "good-2", so `lorainbox cancel good` still means the one training.
        job = self.store.add(self.layout.root, failed.name, failed)
        self.store.transition(job.id, State.FAILED, detail=str(error), error=str(error))
        self.hub.publish(JobChanged(job.id, job.name, State.FAILED.value, None, str(error)))
        self.hub.publish(DropRejected(name, failed, str(error)))
        return None

    def _reject_file(self, path: Path) -> None:
        """A loose file (or link) is not a drop: wrap it in a folder so ERROR.md can sit beside it."""
        name = path.name.split(".")[0] or "drop"
        self.layout.failed.mkdir(parents=True, exist_ok=True)
        wrapper = Path(tempfile.mkdtemp(prefix=".wrap-", dir=self.layout.failed))
        os.rename(path, wrapper / path.name)
        target = self.layout.move(wrapper, self.layout.failed, name)
        error = DropError.one(
            f'"{path.name}" is a file (or a link), not a folder',
            str(path),
            "put the recipe.toml and the data in a folder and drop the folder; "
            f"the file is kept in {target}",
        )
        write_error_file(target, error.markdown())
        log.warning("rejected %s: not a folder", path)
        self.hub.publish(DropRejected(name, target, str(error)))
        return None


def _check_base_model(recipe: Recipe, drop: Path) -> None:
    """Catch a missing local base model now, not after the job waited hours for idle time."""
    spec = recipe.base_model
    if spec.startswith("lorainbox:"):
        return
    local = spec.startswith(("/", "~", ".")) or (drop / spec).exists()
    if not local:
        return
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else drop / path
    if not path.exists():
        raise DropError.one(
            f'the base model folder "{spec}" does not exist',
            f"{drop / RECIPE_FILE}, `base_model`",
            "give the path of a model folder (absolute, or relative to the drop), "
            'or a Hugging Face id such as "mlx-community/Qwen2.5-0.5B-Instruct-4bit"',
        )
