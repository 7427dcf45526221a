"""Turn two cumulative readings into per-second rates and CPU percentages (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class CoreTimes(NamedTuple):
    """CPU time of one core: busy seconds and total seconds since boot."""

    # A NamedTuple, not a dataclass: one is made per core each second, and a frozen
    # dataclass's __init__ (object.__setattr__ per field) takes ~1.7× as long.
    busy_s: float
    total_s: float


def rate(prev: float | None, cur: float | None, dt_s: float) -> float | None:
    """Return (cur - prev) / dt_s, or None when unknown.

    None when either value is missing, the interval is not positive, or the counter went
    backwards (reboot, interface re-created, 32-bit wrap): a reset gives no rate for that
    interval rather than a negative or absurd one.
    """
    if prev is None or cur is None or dt_s <= 0 or cur < prev:
        return None
    return round((cur - prev) / dt_s, 3)


def busy_percent(prev: CoreTimes, cur: CoreTimes) -> float | None:
    """Return the share of time a CPU was busy between two readings, in percent."""
    total = cur.total_s - prev.total_s
    if total <= 0:
        return None
    # Linux's per-CPU idle and iowait counters can step back a little (NO_HZ accounting;
    # psutil clamps the same way), so a small negative busy time means "idle", not unknown.
    busy = max(0.0, cur.busy_s - prev.busy_s)
    return round(min(100.0, 100.0 * busy / total), 2)


def cpu_percent(prev: Sequence[CoreTimes] | None,
                cur: Sequence[CoreTimes]) -> tuple[float | None, list[float]]:
    """Return (total %, per-core %) between two readings of every core.

    With no previous reading, or a different number of cores (CPU hot-plug), the total is
    None and the per-core list is empty.
    """
    if prev is None or len(prev) != len(cur) or not cur:
        return None, []
    per_core = [p for p in map(busy_percent, prev, cur) if p is not None]
    if len(per_core) != len(cur):  # a core whose time did not advance
        return None, []
    total = busy_percent(CoreTimes(sum([t.busy_s for t in prev]), sum([t.total_s for t in prev])),
                         CoreTimes(sum([t.busy_s for t in cur]), sum([t.total_s for t in cur])))
    return total, per_core
