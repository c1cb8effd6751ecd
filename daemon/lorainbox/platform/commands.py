"""Running the operating system's programs (launchctl, pmset, ioreg, …): the one place the
platform code starts one, so a missing program or a hang is an exit status, never an exception."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def why(self) -> str:
        if self.returncode == 127:
            return f"{self.argv[0]} is not installed"
        last = self.output.strip().splitlines()[-1:] or [f"exit status {self.returncode}"]
        return last[0]


def run_command(argv: Sequence[str], timeout: float = 30.0) -> CommandResult:
    """Run ``argv`` (stdout and stderr together); a missing program is exit status 127."""
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return CommandResult(tuple(argv), 127, f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, f"{argv[0]} did not finish in {timeout:g} s")
    except OSError as e:
        return CommandResult(tuple(argv), 126, str(e))
    return CommandResult(tuple(argv), done.returncode, done.stdout)
