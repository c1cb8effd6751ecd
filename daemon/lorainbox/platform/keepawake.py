"""Holding off idle sleep on macOS with ``caffeinate -i``.

``-i`` prevents idle *system* sleep only. ``-u`` is not used: it declares the user active,
which would reset the very idle time the idle gate waits for, and wake the display.
``-w PID`` ties the assertion to a process, so it ends with it even if nobody releases it
(caffeinate(8)).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

log = logging.getLogger(__name__)


class SleepAssertion:
    """One ``caffeinate -i -w PID`` at a time; holding again for the same PID keeps it."""

    def __init__(self, program: str | None = None, *, platform: str = sys.platform) -> None:
        if program is None and platform == "darwin":
            program = shutil.which("caffeinate")
        self.program = program
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    @property
    def held_for(self) -> int | None:
        """The PID the assertion is tied to while it is held."""
        if self._proc is not None and self._proc.poll() is None:
            return self._pid
        return None

    def hold(self, pid: int | None = None, why: str = "") -> None:
        """Keep the Mac from idle sleep while ``pid`` (default: this process) lives."""
        pid = os.getpid() if pid is None else pid
        if self.program is None or self.held_for == pid:
            return
        self.release()
        try:
            self._proc = subprocess.Popen(
                [self.program, "-i", "-w", str(pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as e:
            log.warning("could not hold off idle sleep with %s: %s", self.program, e)
            return
        self._pid = pid
        log.info("holding off idle sleep (caffeinate -i)%s", f": {why}" if why else "")

    def release(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        self._pid = None
