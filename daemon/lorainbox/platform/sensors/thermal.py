"""The Mac's thermal state as Apple reports it: ``NSProcessInfo.processInfo.thermalState``.

``pmset -g therm`` prints only "No thermal warning level has been recorded" on Apple Silicon,
however hot it runs; ``thermalState`` is what apps are meant to read (Apple, "Respond to
thermal state changes", ProcessInfo.ThermalState: nominal, fair, serious, critical). It is read
with two calls through the Objective-C runtime, by ctypes, so no PyObjC is needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

from lorainbox.platform.sensors.base import THERMAL_LEVELS, Thermal

log = logging.getLogger(__name__)

FOUNDATION = "/System/Library/Frameworks/Foundation.framework/Foundation"

ThermalReader = Callable[[], int | None]


def thermal_from_process_info(value: int | None) -> Thermal | None:
    """``NSProcessInfoThermalState`` 0-3 onto the gates' levels; anything else is unknown."""
    if value is None or not 0 <= value < len(THERMAL_LEVELS):
        return None
    return THERMAL_LEVELS[value]


def read_process_info_thermal_state() -> int | None:
    """``[[NSProcessInfo processInfo] thermalState]``; None where there is no Foundation."""
    try:
        objc = ctypes.cdll.LoadLibrary(ctypes.util.find_library("objc") or "libobjc.dylib")
        ctypes.cdll.LoadLibrary(FOUNDATION)
    except OSError:
        return None
    try:
        objc.objc_getClass.restype = ctypes.c_void_p
        objc.objc_getClass.argtypes = [ctypes.c_char_p]
        objc.sel_registerName.restype = ctypes.c_void_p
        objc.sel_registerName.argtypes = [ctypes.c_char_p]
        address = ctypes.cast(objc.objc_msgSend, ctypes.c_void_p).value
        send_id = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(address)
        send_long = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)(address)
        info = send_id(objc.objc_getClass(b"NSProcessInfo"), objc.sel_registerName(b"processInfo"))
        if not info:
            return None
        return int(send_long(info, objc.sel_registerName(b"thermalState")))
    except (AttributeError, OSError, ValueError) as e:
        log.debug("thermalState could not be read: %s", e)
        return None
