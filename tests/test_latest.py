"""The menu bar's fetches run on a thread of their own: reading never waits for the daemon."""

from __future__ import annotations

import threading
import time

from lorainbox.ui.latest import Latest


def wait_until(check, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_reading_never_waits_for_a_slow_fetch() -> None:
    release = threading.Event()
    calls: list[float] = []

    def slow() -> int:
        calls.append(time.monotonic())
        release.wait(5)
        return len(calls)

    latest = Latest(slow, every=60)
    latest.start()
    try:
        assert wait_until(lambda: calls)
        started = time.monotonic()
        assert latest.value is None and latest.version == 0
        assert time.monotonic() - started < 0.1
        release.set()
        assert wait_until(lambda: latest.version == 1)
        assert latest.value == 1
        latest.refresh_now()
        assert wait_until(lambda: latest.version == 2)
    finally:
        latest.stop()


def test_a_failing_fetch_does_not_stop_the_fetching() -> None:
    answers = iter([["job"], RuntimeError("daemon gone")])

    def fetch() -> list[str]:
        answer = next(answers, ["later"])
        if isinstance(answer, Exception):
            raise answer
        return answer

    latest = Latest(fetch, every=0.01)
    latest.start()
    try:
        assert wait_until(lambda: latest.value == ["later"])
    finally:
        latest.stop()
