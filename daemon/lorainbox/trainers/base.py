"""What every trainer gets and gives, so the worker can drive any of them the same way."""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from lorainbox.core.layout import ADAPTERS_DIR, CHECKPOINTS_DIR
from lorainbox.drop.recipe import Recipe, TrainSpec
from lorainbox.trainers.distributed import World

DEFAULT_ITERS = 1000
"""mlx-lm's default when a recipe sets neither ``iters`` nor ``epochs``."""


def total_steps(train: TrainSpec, batches_per_epoch: int) -> int:
    """``iters``, or ``epochs`` worth of batches (every engine counts steps this one way)."""
    if train.iters is not None:
        return train.iters
    if train.epochs is not None:
        return max(1, math.ceil(train.epochs * batches_per_epoch))
    return DEFAULT_ITERS


class Paused(Exception):
    """Raised by a trainer after it saved a checkpoint because a stop was requested."""

    def __init__(self, step: int):
        super().__init__(f"paused at step {step}")
        self.step = step


class OutOfMemory(Exception):
    """The trainer ran out of memory; the worker exits so the supervisor can shrink and retry."""


class StopFlag:
    """Set by SIGTERM; trainers check it at step boundaries and checkpoint before stopping."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


class Emitter:
    """Writes the worker's JSON lines (progress, stages, results) for the supervisor to read."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        metrics_file: Path | None = None,
        narrate: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.stream = stream or sys.stdout
        self.metrics_file = metrics_file
        self.narrate = narrate
        """Also told every event: the worker logs them in words to train.log."""
        self.orphaned = False

    def emit(self, type_: str, **fields: Any) -> None:
        line = json.dumps({"type": type_, **fields}, default=str)
        if not self.orphaned:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                # The daemon died (kill -9): keep training and checkpointing; a restarted
                # daemon finds this worker, stops it at a step boundary and resumes the job.
                self.orphaned = True
        if self.narrate is not None:
            self.narrate(type_, fields)
        if self.metrics_file is not None and type_ in ("progress", "eval"):
            try:
                with open(self.metrics_file, "a") as f:
                    f.write(line + "\n")
            except OSError:  # a full disk: the line went to the daemon, the copy is lost
                self.metrics_file = None

    def progress(self, **fields: Any) -> None:
        self.emit("progress", **fields)


@dataclass
class Footprint:
    """The knobs the memory guard may turn; recorded so a retry and the report know them."""

    batch_size: int
    max_seq_length: int
    grad_checkpoint: bool
    changes: list[str] = field(default_factory=list)


@dataclass
class TrainContext:
    job_dir: Path
    work_dir: Path
    """``<job>/.lorainbox``: checkpoints, prepared data, fused model; hidden from the person."""
    recipe: Recipe
    train_file: Path
    valid_file: Path | None
    footprint: Footprint
    memory_budget_gb: float
    emitter: Emitter
    stop_requested: Callable[[], bool]
    base_model_dir: Path | None = None
    """The base model's local folder, once the worker has resolved (built, downloaded) it."""
    world: World = field(default_factory=World)
    """Data-parallel peers, when the recipe's [distributed] trains in several processes."""

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / CHECKPOINTS_DIR

    @property
    def adapter_dir(self) -> Path:
        return self.job_dir / ADAPTERS_DIR

    @property
    def fused_dir(self) -> Path:
        return self.work_dir / "fused"

    def in_job(self, path: Path) -> Path:
        """A data path of the job spec, which may be relative to the job folder."""
        return path if Path(path).is_absolute() else self.job_dir / path

    @property
    def data_files(self) -> list[Path]:
        """Validation first, then training: where the report's sample questions come from."""
        files = [self.valid_file, self.train_file]
        return [self.in_job(f) for f in files if f is not None]


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    final_train_loss: float | None = None
    final_valid_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer(Protocol):
    name: str

    def train(self, ctx: TrainContext) -> TrainResult:
        """Train from the last checkpoint in ``ctx.checkpoint_dir`` (or from step 0).

        Raises :class:`Paused` after checkpointing when ``ctx.stop_requested()`` turns true,
        :class:`OutOfMemory` when memory runs out, :class:`~lorainbox.core.errors.DropError` for
        problems the person can fix (a corrupt base model, say).
        """
        ...

    def fuse(self, ctx: TrainContext) -> Path:
        """Merge the adapter into the base as a Hugging Face folder in ``ctx.fused_dir``."""
        ...
