"""MLX's own distributed engine for the MLX trainer: ``mx.distributed`` over the ring backend.

The ranks come from ``mlx.launch`` (TCP between processes of one machine or between machines;
NCCL where MLX has CUDA). Each step sums the losses of the trained tokens over every rank and
divides by the global token count: one process training on the whole batch computes the same
gradient (mlx-lm's trainer averages per-rank means instead, which weighs a token of a short
slice more than one of a long slice). The gradients travel through mlx's
``average_gradients``, which packs them into few large all-reduces.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from lorainbox.drop.recipe import DistributedSpec
from lorainbox.trainers.distributed import World

Example = tuple[list[int], int]


def backend() -> str:
    return "nccl" if mx.cuda.is_available() else "ring"


def join(spec: DistributedSpec) -> World:
    """Join the group ``mlx.launch`` set up (``MLX_RANK``, ``MLX_HOSTFILE``)."""
    chosen = backend()
    group = mx.distributed.init(strict=True, backend=chosen)

    def total(values: list[float]) -> list[float]:
        summed = mx.distributed.all_sum(mx.array(values, mx.float32), group=group, stream=mx.cpu)
        return [float(v) for v in summed.tolist()]

    return World.of(spec, group.rank(), group.size(), f"mlx {chosen}", total)


def summed_loss(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """mlx-lm's ``default_loss`` before its division: the sum over trained tokens, and their
    count (zero for a rank whose share of a batch was empty)."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    steps = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps <= lengths[:, 1:])
    ce = nn.losses.cross_entropy(logits, targets) * mask
    return ce.astype(mx.float32).sum(), mask.sum()


def make_step(
    model: nn.Module, optimizer: optim.Optimizer, world: World
) -> Callable[[mx.array, mx.array], tuple[mx.array, mx.array]]:
    """One data-parallel step: the global batch's mean loss and its token count, as the
    single-process step returns them."""
    loss_and_grad = nn.value_and_grad(model, summed_loss)

    def step(batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        (total, ntoks), grad = loss_and_grad(model, batch, lengths)
        all_ntoks = mx.distributed.all_sum(ntoks).astype(mx.float32)
        scale = world.size / mx.maximum(all_ntoks, 1)
        grad = tree_map(lambda g: g * scale, nn.average_gradients(grad))
        optimizer.update(model, grad)
        return mx.distributed.all_sum(total) / mx.maximum(all_ntoks, 1), all_ntoks

    return step


def shard_rows(world: World, examples: list[Example]) -> Callable[[list[int]], list[int]]:
    """This rank's rows of a global batch (sorted by length already), counting their tokens
    for the report. An empty share (a last batch smaller than the world) takes a blank row
    appended to ``examples``, whose offset past its end masks every target: every rank still
    runs the same step."""
    blank = len(examples)
    examples.append(([0, 0], 2))

    def rows(group: list[int]) -> list[int]:
        mine = world.shard(group)
        world.local_tokens += sum(len(examples[i][0]) for i in mine)
        return mine or [blank]

    return rows
