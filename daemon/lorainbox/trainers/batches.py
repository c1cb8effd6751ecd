"""The batches of an epoch, planned one way for every PyTorch trainer.

Both group examples so a batch wastes little (language models by length, images by bucket),
shuffle within each group, cut the groups into batches and shuffle the batches. An epoch is
planned from the seed and its number alone, so a resumed run, a run with a smaller footprint
and every data-parallel rank see the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

GROUP_BATCHES = 32
"""Length grouping sorts within windows of this many batches: little padding, still shuffled."""


def plan_epoch(
    groups: Sequence[Sequence[int]],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    sort_key: Callable[[int], Any] | None = None,
    shuffle_batches: bool = True,
) -> list[list[int]]:
    """Each group shuffled, cut into batches (sorted by ``sort_key`` within windows of
    :data:`GROUP_BATCHES` batches, when given), and the batches of all groups shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    batches: list[list[int]] = []
    for group in groups:
        entries = list(group)
        rng.shuffle(entries)
        window = batch_size * GROUP_BATCHES if sort_key is not None else max(len(entries), 1)
        for start in range(0, len(entries), window):
            part = entries[start : start + window]
            if sort_key is not None:
                part.sort(key=sort_key)
            batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if shuffle_batches:
        rng.shuffle(batches)
    return batches


def by_length(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: bool = True
) -> list[list[int]]:
    """A language model's epoch: shuffled, and sorted by length within windows when grouping
    (the batches are shuffled then too, or the long ones would come last in each window)."""
    everything = [range(len(lengths))]
    if not group:
        return plan_epoch(everything, batch_size, seed, epoch, shuffle_batches=False)
    return plan_epoch(everything, batch_size, seed, epoch, sort_key=lengths.__getitem__)


def by_bucket(
    buckets: Sequence[tuple[int, int]],
    repeats: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """An image model's epoch: every image ``repeats`` times, each batch from a single bucket."""
    members: dict[tuple[int, int], list[int]] = {}
    for i, (bucket, n) in enumerate(zip(buckets, repeats, strict=True)):
        members.setdefault(bucket, []).extend([i] * n)
    return plan_epoch([members[b] for b in sorted(members)], batch_size, seed, epoch)
