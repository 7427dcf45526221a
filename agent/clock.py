"""Is this machine's clock synchronised? (Linux ``adjtimex(2)``; unknown elsewhere.)

A Raspberry Pi has no real-time clock: until NTP (systemd-timesyncd, chrony, ntpd) has
set the time, the clock shows the last shutdown time (fake-hwclock) or 1970. The kernel
knows: ``adjtimex`` returns ``TIME_ERROR`` (5) and sets ``STA_UNSYNC`` (0x0040) in the
status until a time daemon has synchronised it (adjtimex(2), "RETURN VALUE"; the kernel's
kernel/time/ntp.c). Reading it changes nothing (``modes`` = 0) and costs one system call.

:func:`decode_adjtimex` is the pure part (tested with given values); :func:`read_clock_synced`
does the call. :func:`boot_clock_s` is a clock NTP never steps, counting suspend, used to
say how long a reading waited before it was sent (hub/clock.py).
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable

TIME_ERROR = 5  # adjtimex return value: clock not synchronised
STA_UNSYNC = 0x0040  # status bit: clock not synchronised
_CLOCK_STATES = range(0, 6)  # TIME_OK .. TIME_ERROR; anything else: the call failed


def decode_adjtimex(result: int, status: int) -> bool | None:
    """Return whether the clock is synchronised, from adjtimex's return value and status.

    None when the call failed (``-1``, or a value that is no clock state).
    """
    if result not in _CLOCK_STATES:
        return None
    return not (result == TIME_ERROR or status & STA_UNSYNC)


class _Timex(ctypes.Structure):
    # struct timex (include/uapi/linux/timex.h): the fields up to ``status``, then room
    # for the rest (the kernel writes the whole structure: 208 bytes on 64-bit Linux,
    # 128 on 32-bit), so a generous tail keeps both safe.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def _adjtimex_function() -> Callable[[], tuple[int, int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's global symbols (the C library's adjtimex, or one preloaded before
        # it, as the tests do to play a Pi that has just booted).
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.adjtimex
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.POINTER(_Timex)]
    function.restype = ctypes.c_int

    timex = _Timex()  # modes stays 0: read only; reused, the kernel rewrites it each call
    pointer = ctypes.byref(timex)

    def call() -> tuple[int, int]:
        return int(function(pointer)), int(timex.status)

    return call


_ADJTIMEX = _adjtimex_function()


def read_clock_synced() -> bool | None:
    """Return True/False on Linux (the kernel's NTP state); None where it cannot tell."""
    if _ADJTIMEX is None:
        return None
    result, status = _ADJTIMEX()
    return decode_adjtimex(result, status)


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def boot_clock_s() -> float:
    """Seconds on a clock that NTP never steps and that counts suspend (Linux boottime)."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()
