"""The training loop of both PyTorch trainers: the steps, stopping, checkpoints, reports, saving.

A trainer brings what is its own (a :class:`Task`: the batches of an epoch, one step's forward
and backward, its LoRA tensors and adapter files); the :class:`Loop` runs the steps and owns
what must behave alike for every model: a stop request checkpoints and pauses at a step
boundary, a checkpoint holds the data position and resumes exactly, and the progress lines
carry the same fields, speed and time left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lorainbox.trainers.base import Paused, TrainContext
from lorainbox.trainers.pace import Pace, rounded
from lorainbox.trainers.torch_common import (
    MemoryMeter,
    atomic_replace_dir,
    optimizer_step,
    restore_training_state,
    resumable_checkpoint,
    save_checkpoint,
    training_state,
)
from lorainbox.trainers.torch_dist import sum_gradients

log = logging.getLogger(__name__)


@dataclass
class Step:
    """What one optimizer step's forward and backward passes leave for the report."""

    losses: list[torch.Tensor]
    """Each micro-batch's detached loss, on the device: the report reads them at its own pace."""
    weight: int
    """What the step's losses are divided by in the report (trained tokens; 1 for a mean)."""
    units: int
    """Tokens or images the step trained on, the whole batch (all ranks)."""


class Task(Protocol):
    unit: str
    """What the speed counts, ``tokens`` or ``images``: the progress fields' names."""
    rate_digits: int
    """Decimals of the reported speed."""

    def plan(self, epoch: int) -> list[list[int]]:
        """The recipe-sized batches of an epoch, the same for every run with the same seed."""
        ...

    def step(self, batch: list[int]) -> Step:
        """Forward and backward over ``batch``; the loop sums gradients and steps the optimizer."""
        ...

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        """The trained weights a checkpoint keeps."""
        ...

    def load_lora_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def write_adapter(self, folder: Path) -> None:
        """The finished adapter's files, written into a fresh ``folder``."""
        ...


class Loop:
    """One run's position (step, epoch, batches left) and everything that advances it.

    Resumes from the newest checkpoint of the same LoRA setup (``signature``) when made."""

    def __init__(
        self,
        ctx: TrainContext,
        task: Task,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        total: int,
        signature: dict[str, Any],
        device: torch.device,
        *,
        evaluate: Callable[[], float] | None = None,
        defer_sync: bool = True,
        on_step: Callable[[int, int], None] | None = None,
    ):
        self.ctx, self.task, self.params = ctx, task, params
        self.optimizer, self.scheduler = optimizer, scheduler
        self.total, self.signature, self.device = total, signature, device
        self.evaluate, self.defer_sync, self.on_step = evaluate, defer_sync, on_step
        self.meter = MemoryMeter(device, ctx.memory_budget_gb)
        self.step = 0
        self.trained = 0
        """Tokens or images trained on so far, over all ranks and resumes."""
        self.epoch = -1
        """-1 before the first epoch starts."""
        self.remaining: list[list[int]] = []
        """The batches the epoch has still to serve."""
        self.checkpoint_step: int | None = None
        self.last_train_loss: float | None = None
        self.last_valid_loss: float | None = None
        self._resume()

    def _resume(self) -> None:
        ckpt = resumable_checkpoint(self.ctx.checkpoint_dir, self.device, self.signature)
        if ckpt is None:
            return
        self.task.load_lora_tensors(ckpt.tensors)
        restore_training_state(ckpt.state, self.optimizer, self.scheduler)
        self.step = ckpt.step
        self.trained = int(ckpt.meta.get(f"trained_{self.task.unit}", 0))
        self.epoch = int(ckpt.meta["data"]["epoch"])
        self.remaining = ckpt.meta["data"]["remaining"]
        self.checkpoint_step = self.step
        log.info("resuming from %s at step %d of %d", ckpt.path, self.step, self.total)
        self.ctx.emitter.emit("resumed", step=self.step, total=self.total)

    def save_checkpoint(self) -> None:
        state = training_state(self.optimizer, self.scheduler)
        meta = {
            "signature": self.signature,
            f"trained_{self.task.unit}": self.trained,
            "total": self.total,
            "data": {"epoch": self.epoch, "remaining": self.remaining},
        }
        tensors = self.task.lora_tensors()
        if self.ctx.world.writes:
            save_checkpoint(self.ctx.checkpoint_dir, self.step, tensors, state, meta)
        self.checkpoint_step = self.step
        self.ctx.emitter.emit("checkpoint", step=self.step)

    def save_adapter(self) -> None:
        """The task's adapter files into the job's adapters folder, swapped in whole."""
        if self.ctx.world.writes:
            atomic_replace_dir(self.task.write_adapter, self.ctx.adapter_dir)

    def next_batch(self) -> list[int]:
        """The recipe's batch, planned per epoch so a smaller footprint sees the same data."""
        if not self.remaining:
            self.epoch += 1
            self.remaining = self.task.plan(self.epoch)
        return self.remaining.pop(0)

    def run(self) -> None:
        """Train up to ``total`` steps; raises :class:`Paused` after checkpointing on a stop."""
        ctx, t = self.ctx, self.ctx.recipe.train
        pace = Pace(self.step, self.total)
        loss_acc = torch.zeros((), device=self.device)
        weight_acc = 0
        if self.step == 0 and self.evaluate is not None:
            valid = round(self._validate(), 5)
            ctx.emitter.progress(step=0, total=self.total, valid_loss=valid)
        ctx.world.start_clock()
        while self.step < self.total:
            if ctx.stop_requested():
                if self.checkpoint_step != self.step:
                    self.save_checkpoint()
                raise Paused(self.step)
            done = self.task.step(self.next_batch())
            for loss in done.losses:
                loss_acc += loss
            if ctx.world.spread:
                sum_gradients(self.params)
            optimizer_step(self.params, self.optimizer, self.scheduler)
            self.step += 1
            self.trained += done.units
            weight_acc += done.weight
            pace.add(done.units)
            if not self.defer_sync:
                loss_acc.item()
            if self.on_step is not None:
                self.on_step(self.step, done.units)
            last = self.step == self.total
            report = self.step % t.steps_per_report == 0 or last
            evaluate = self.evaluate is not None and (self.step % t.steps_per_eval == 0 or last)
            if report or evaluate:
                summed = ctx.world.sum([float(loss_acc.item())])[0]
                self.last_train_loss = summed / max(weight_acc, 1)
                loss_acc.zero_()
                weight_acc = 0
                self._progress(pace, self._validate() if evaluate else None)
            if self.step % t.save_every == 0 or last:
                self.save_checkpoint()

    def _validate(self) -> float:
        assert self.evaluate is not None
        self.last_valid_loss = self.evaluate()
        return self.last_valid_loss

    def _progress(self, pace: Pace, valid: float | None) -> None:
        rate, eta = pace.report(self.step)
        peak = self.meter.check()
        unit = self.task.unit
        line: dict[str, Any] = {
            "step": self.step,
            "total": self.total,
            "train_loss": None if self.last_train_loss is None else round(self.last_train_loss, 5),
            "learning_rate": self.scheduler.get_last_lr()[0],
            f"{unit}_per_second": round(rate, self.task.rate_digits),
            f"trained_{unit}": self.trained,
            "peak_memory_gb": round(peak, 3),
            "eta_seconds": rounded(eta),
            "epoch": max(self.epoch, 0),
        }
        if valid is not None:
            line["valid_loss"] = round(valid, 5)
        if self.checkpoint_step is not None:
            line["checkpoint_step"] = self.checkpoint_step
        self.ctx.emitter.progress(**line)
