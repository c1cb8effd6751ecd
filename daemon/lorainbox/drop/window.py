"""A recipe's time window ("22:00-07:00"): parsed once at intake, asked by the window gate."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time


@dataclass(frozen=True)
class Window:
    start: time
    end: time

    def contains(self, t: time) -> bool:
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def parse_window(text: str) -> Window:
    """``"HH:MM-HH:MM"`` on a 24-hour clock; a start later than the end wraps past midnight."""
    m = _WINDOW.fullmatch(text)
    if not m:
        raise ValueError(
            f'"{text}" is not a time window: it is not HH:MM-HH:MM; '
            'write it on a 24-hour clock, e.g. "22:00-07:00"'
        )
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    for hour, minute in ((h1, m1), (h2, m2)):
        if hour > 23 or minute > 59:
            raise ValueError(
                f'"{text}" is not a time window: {hour:02d}:{minute:02d} is not a time of day '
                "(hours 00-23, minutes 00-59; midnight is 00:00)"
            )
    if (h1, m1) == (h2, m2):
        raise ValueError(
            f'"{text}" is not a time window: it starts and ends at the same time; '
            "leave window out to train at any hour"
        )
    return Window(time(h1, m1), time(h2, m2))
