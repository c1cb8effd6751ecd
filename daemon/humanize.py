"""Short human forms of figures that the command line, the progress bars and the menu share."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``: compact enough for a progress line."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
