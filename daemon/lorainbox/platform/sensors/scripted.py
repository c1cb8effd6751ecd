"""Readings from a JSON script, so tests can drive the real daemon through idle, unplugging
and heat without a Mac (``LORAINBOX_SENSORS=/path/script.json``).

The script is a list of steps, each ``{"at": seconds_since_start, ...reading fields...}``;
fields left out are unknown. A test may rewrite the file while the daemon runs: it is read
again whenever it changes, and the clock keeps counting from the daemon's start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lorainbox.platform.sensors.base import MemoryPressure, Readings, Thermal, now_utc

log = logging.getLogger(__name__)


class ScriptStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(0.0, ge=0)
    idle_seconds: float | None = Field(None, ge=0)
    on_ac_power: bool | None = None
    battery_percent: int | None = Field(None, ge=0, le=100)
    has_battery: bool | None = None
    low_power_mode: bool | None = None
    thermal: Thermal | None = None
    memory_available_gb: float | None = Field(None, ge=0)
    memory_pressure: MemoryPressure | None = None


_SCRIPT = TypeAdapter(list[ScriptStep] | ScriptStep)


class ScriptError(ValueError):
    pass


def parse_script(text: str, where: str = "sensor script") -> list[ScriptStep]:
    """Steps in time order; one object alone is a script of one step."""
    try:
        parsed = _SCRIPT.validate_python(json.loads(text))
    except json.JSONDecodeError as e:
        raise ScriptError(f"{where}: not valid JSON ({e})") from e
    except ValidationError as e:
        raise ScriptError(f"{where}: {e}") from e
    steps = parsed if isinstance(parsed, list) else [parsed]
    if not steps:
        raise ScriptError(f'{where}: the script has no steps; give at least one {{"at": 0}}')
    return sorted(steps, key=lambda s: s.at)


class ScriptedSensors:
    """Plays a sensor script: at each ``read()`` the last step whose ``at`` has passed applies
    (the first step applies before its time too)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._start = clock()
        self._stamp: tuple[int, ...] | None = None
        self._steps: list[ScriptStep] = []
        self._reload(strict=True)

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def read(self) -> Readings:
        self._reload(strict=False)
        elapsed = self.elapsed
        step = self._steps[0]
        for candidate in self._steps:
            if candidate.at <= elapsed:
                step = candidate
        return Readings(**step.model_dump(exclude={"at"}), taken_at=now_utc())

    def _reload(self, *, strict: bool) -> None:
        """Read the script when it changed. A broken rewrite (say, caught half-written) keeps the
        previous steps and is retried on the next read; only a broken first read is an error."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            steps = parse_script(self.path.read_text(), str(self.path))
        except (OSError, ScriptError) as e:
            if strict:
                raise ScriptError(f"can't use the sensor script: {e}") from e
            log.warning("keeping the previous sensor readings: %s", e)
            return
        self._steps, self._stamp = steps, stamp
