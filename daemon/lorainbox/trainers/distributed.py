"""Where a training process stands among its data-parallel peers, for either framework.

Every rank plans the same global batches (the recipe's ``batch_size``) from the same seed and
trains on its own slice of each; gradients are summed across ranks, so one step moves the
adapters as one process training on the whole batch would. Checkpoints therefore hold the
global step and the global data position, and a job may resume with another number of
processes. Only rank 0 writes (checkpoints, JSON lines, metrics, adapters, samples).

The collectives a trainer needs beyond its gradients are sums of a few floats, so a
:class:`World` carries one such function, given by the framework's own module
(``torch_dist`` or ``mlx_dist``): the stop flag, the reported loss and each rank's speed
travel through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lorainbox.drop.recipe import DistributedSpec

T = TypeVar("T")

Sum = Callable[[list[float]], list[float]]


def _alone(values: list[float]) -> list[float]:
    return values


@dataclass
class World:
    """This process's rank among ``size`` and how to sum floats over all of them."""

    rank: int = 0
    size: int = 1
    processes: int = 1
    """Ranks on each machine: rank r runs on ``hosts[r // processes]``."""
    hosts: list[str] = field(default_factory=list)
    backend: str = ""
    sum: Sum = _alone
    started: float = field(default_factory=time.perf_counter)
    local_tokens: int = 0
    """Tokens this rank trained on since it started: its own speed for the report."""

    @classmethod
    def of(cls, spec: DistributedSpec, rank: int, size: int, backend: str, sum: Sum) -> World:
        """A rank of the recipe's ``[distributed]`` run, as its framework's launcher made it."""
        return cls(rank, size, spec.processes, list(spec.hosts), backend, sum)

    @property
    def writes(self) -> bool:
        """Rank 0 keeps the job's files and speaks to the supervisor."""
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.size > 1

    def start_clock(self) -> None:
        """Speeds count from the training loop's start, not from loading the model, and from
        the moment all ranks reach it (rank 0 writes the samples first): a collective."""
        self.sum([0.0])
        self.started = time.perf_counter()
        self.local_tokens = 0

    def shard(self, rows: Sequence[T]) -> list[T]:
        """This rank's part of a global batch: every ``size``-th row, so a batch sorted by
        length gives each rank a like share of the tokens."""
        return list(rows[self.rank :: self.size])

    def agreed(self, local: Callable[[], bool]) -> Callable[[], bool]:
        """A stop flag all ranks read alike: true for all once any rank's is. Trainers read it
        once per step at the same boundary, so every rank stops after the same step."""
        if not self.spread:
            return local
        return lambda: self.sum([1.0 if local() else 0.0])[0] > 0

    def speeds(self) -> list[float]:
        """Every rank's tokens per second since it started (a collective: all ranks call it)."""
        mine = self.local_tokens / max(time.perf_counter() - self.started, 1e-9)
        return self.sum([mine if r == self.rank else 0.0 for r in range(self.size)])

    def summary(self) -> dict[str, Any]:
        """What the report says about the run: processes, machines and each rank's speed."""
        speeds = self.speeds()
        hosts = self.hosts or ["this machine"]
        return {
            "processes": self.size,
            "hosts": hosts,
            "backend": self.backend,
            "ranks": [
                {
                    "rank": r,
                    "host": hosts[min(r // self.processes, len(hosts) - 1)],
                    "tokens_per_second": round(s, 1),
                }
                for r, s in enumerate(speeds)
            ],
        }


def report_line(summary: dict[str, Any] | None) -> str:
    """report.md's line on a data-parallel run: how many processes where, each one's speed."""
    if not summary:
        return ""
    hosts = summary.get("hosts") or ["this machine"]
    where = hosts[0] if len(hosts) == 1 else f"{len(hosts)} machines ({', '.join(hosts)})"
    many = len(hosts) > 1
    speeds = ", ".join(
        f"rank {r['rank']}"
        + (f" ({r['host']})" if many else "")
        + f" {r['tokens_per_second']:,.1f}"
        for r in summary.get("ranks", [])
    )
    return (
        f"- **Data-parallel:** {summary['processes']} processes on {where} "
        f"({summary.get('backend', '?')}); tokens/s of each: {speeds}"
    )
