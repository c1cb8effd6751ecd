"""Sensors: what the machine says about power, idleness, heat and memory, behind one interface."""

from __future__ import annotations

import sys
from pathlib import Path

from lorainbox.platform.sensors.base import Readings, Sensors, UnknownSensors
from lorainbox.platform.sensors.scripted import ScriptedSensors, ScriptError

__all__ = ["Readings", "ScriptError", "ScriptedSensors", "Sensors", "make_sensors"]


def make_sensors(spec: str, *, platform: str = sys.platform) -> Sensors:
    """``auto`` picks the platform's sensors; anything else is the path of a sensor script."""
    if spec != "auto":
        return ScriptedSensors(Path(spec).expanduser())
    if platform == "darwin":
        from lorainbox.platform.sensors.macos import MacSensors

        return MacSensors()
    if platform.startswith("linux"):
        from lorainbox.platform.sensors.linux import LinuxSensors

        return LinuxSensors()
    return UnknownSensors()
