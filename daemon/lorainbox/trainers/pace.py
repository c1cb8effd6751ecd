"""Training speed and the time left, as the progress lines report them.

The time left is measured from the end of the first step on, not from the start: the first step
carries one-off costs the rest never repeat (compiling the model, a minute or more for a 1B model
on CUDA; the first evaluation; warming caches), and a clock that counts them would promise hours
for a job that takes minutes, and stay wrong for most of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pace:
    """Speed between reports and the time left, from the wall clock.

    A trainer that sees every step calls :meth:`add` after each, and the clock for the time left
    starts when the first one is done. One that sees only its reports (mlx-lm's callback) starts
    it at the first report instead."""

    def __init__(self, start_step: int, total: int, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start_step = start_step
        self.total = total
        self.started = self.last_time = clock()
        self.anchor: tuple[int, float] | None = None
        """(step, time) the time left is measured from, once the first step is done."""
        self.units = 0
        self.first_rate: float | None = None

    def add(self, units: int = 0) -> None:
        """One step done, with ``units`` (tokens or images) in it when Pace measures the speed."""
        if self.anchor is None:
            now = self.clock()
            self.anchor = (self.start_step + 1, now)
            self.first_rate = units / max(now - self.started, 1e-9)
            self.last_time = now
            return
        self.units += units

    def eta(self, step: int) -> float | None:
        """Seconds left after ``step``, at the speed since the first step (or so far, before);
        ``None`` before any step is done."""
        if step <= self.start_step:
            return None
        since_step, since = self.anchor or (self.start_step, self.started)
        if step <= since_step:
            since_step, since = self.start_step, self.started
        per_step = (self.clock() - since) / max(step - since_step, 1)
        return per_step * (self.total - step)

    def report(self, step: int) -> tuple[float, float | None]:
        """``(units per second since the last report, seconds left)``, and a new interval."""
        now = self.clock()
        if self.units:
            rate = self.units / max(now - self.last_time, 1e-9)
        else:  # only the first step so far
            rate = self.first_rate or 0.0
        eta = self.eta(step)
        if self.anchor is None:
            self.anchor = (step, now)
        self.last_time, self.units = now, 0
        return rate, eta


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
