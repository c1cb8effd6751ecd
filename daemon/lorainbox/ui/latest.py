"""The newest result of a slow call, fetched on a thread of its own.

A menu-bar app's main thread runs the menu: an HTTP call there (up to its timeout when the
daemon is busy or gone) freezes the menu. So the fetching happens here, and the main thread
only reads :attr:`Latest.value`, which never waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Latest(Generic[T]):
    """Calls ``fetch`` every ``every`` seconds (and at once on :meth:`refresh_now`)."""

    def __init__(self, fetch: Callable[[], T], every: float) -> None:
        self._fetch = fetch
        self._every = every
        self._lock = threading.Lock()
        self._value: T | None = None
        self._version = 0
        self._asked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latest", daemon=True)

    @property
    def value(self) -> T | None:
        with self._lock:
            return self._value

    @property
    def version(self) -> int:
        """How many fetches have finished: the reader redraws when it changes."""
        with self._lock:
            return self._version

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._asked.set()

    def refresh_now(self) -> None:
        self._asked.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self._fetch()
            except Exception:  # a failed fetch keeps the last value; the next one may work
                log.exception("fetch failed")
            else:
                with self._lock:
                    self._value = value
                    self._version += 1
            self._asked.wait(self._every)
            self._asked.clear()
