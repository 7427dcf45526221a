"""The clock's synchronisation state from adjtimex(2): decoding given values, and the call."""

from __future__ import annotations

import sys

import pytest

from agent.clock import STA_UNSYNC, TIME_ERROR, boot_clock_s, decode_adjtimex, read_clock_synced

TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT = 0, 1, 2, 3, 4
STA_PLL, STA_NANO = 0x0001, 0x2000


@pytest.mark.parametrize(("result", "status", "synced"), [
    (TIME_OK, STA_PLL | STA_NANO, True),            # chrony / timesyncd have set the clock
    (TIME_INS, STA_PLL, True),                       # a leap second is due: still in sync
    (TIME_WAIT, 0, True),
    (TIME_ERROR, STA_UNSYNC, False),                 # a Pi just booted: 1970 or fake-hwclock
    (TIME_ERROR, 0, False),                          # the return value alone says so
    (TIME_OK, STA_UNSYNC | STA_PLL, False),          # the status bit alone says so
    (-1, 0, None),                                   # the call failed (EPERM, EFAULT...)
    (42, 0, None),                                   # not a clock state at all
])
def test_decode_adjtimex(result: int, status: int, synced: bool | None) -> None:
    assert decode_adjtimex(result, status) is synced


def test_constants_are_the_kernels() -> None:
    # include/uapi/linux/timex.h
    assert (TIME_ERROR, STA_UNSYNC) == (5, 0x0040)


def test_the_real_call_answers_on_linux_and_is_unknown_elsewhere() -> None:
    synced = read_clock_synced()
    if sys.platform.startswith("linux"):
        assert synced in (True, False)
    else:
        assert synced is None


def test_boot_clock_only_goes_forward() -> None:
    first = boot_clock_s()
    assert boot_clock_s() >= first > 0
