"""What the daemon hands a worker (``<job>/.lorainbox/job.json``), read by both sides."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lorainbox.core import atomic
from lorainbox.core.errors import DropError
from lorainbox.core.layout import SPEC_FILE, WORK_DIR
from lorainbox.drop.recipe import Recipe
from lorainbox.trainers.base import Footprint


class JobSpec(BaseModel):
    """What the daemon hands the worker, written to ``<job>/.lorainbox/job.json``."""

    job_id: int
    recipe: Recipe
    train_file: Path
    valid_file: Path | None = None
    memory_budget_gb: float
    footprint: dict[str, Any] | None = None
    """The memory guard's last footprint (batch, sequence, checkpointing) after an OOM retry."""
    oom_retries: int = 0

    @property
    def process_budget_gb(self) -> float:
        """The budget of one training process: the machine's, shared by the recipe's
        ``[distributed] processes`` on it, each of which holds the whole model."""
        return self.memory_budget_gb / self.recipe.distributed.processes

    @classmethod
    def load(cls, job_dir: Path) -> JobSpec:
        return cls.model_validate_json((job_dir / WORK_DIR / SPEC_FILE).read_text())

    def save(self, job_dir: Path) -> None:
        path = job_dir / WORK_DIR / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, self.model_dump_json(indent=2))


def initial_footprint(spec: JobSpec) -> Footprint:
    if spec.footprint:
        return Footprint(**spec.footprint)
    t = spec.recipe.train
    return Footprint(t.batch_size, t.max_seq_length, t.grad_checkpoint)


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(e) or "ENOSPC" in str(e)


def disk_full_while(where: Path, error: BaseException) -> DropError:
    """A full disk met outside the export's own check (a checkpoint, a log, the job's spec)."""
    return DropError.one(
        f"the disk is full ({error})",
        str(where),
        f"free some disk space, then `lorainbox retry {where.name}`",
    )
