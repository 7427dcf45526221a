"""Housekeeping: partitions ahead of the data, compaction into the cold tier, retention per
tier and the storage budget.

Per-second readings live one row each in daily partitions of ``metrics`` (the hot tier)
for ``hot_window_h``, then one row per device-hour in ``metrics_cold`` (hub/cold.py) until
``retention_days``; rollups and quarantine are deleted by age. A partition is dropped
(``DROP TABLE`` is instant and leaves no bloat, unlike ``DELETE``) once past retention; a
day emptied by compaction is kept until then (a late reading may still land in it) and
autovacuum gives its space back. Over ``storage_budget_bytes`` the oldest cold hours go first,
logged as ERROR and counted in the health; never silently.

The decisions are pure functions of sizes, dates and settings; the store does the I/O;
the alerts loop (``hub/watch.py``) runs :func:`housekeep` daily; ``hub/main.py`` starts
:class:`Compactor` in a thread of its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol

from hub import cold
from hub.rollup import HOUR, MINUTE
from shared.errors import PermanentStoreError, StoreError

log = logging.getLogger(__name__)

PARTITIONS_AHEAD_DAYS = 2
# Creating or dropping a partition locks ``metrics`` exclusively, and a waiting exclusive
# lock queues every later reader and writer behind it: give up after this long (a long
# export holds its share) and try again at the next round, instead of stalling ingest.
LOCK_TIMEOUT_S = 2.0
SECONDS_PER_DAY = 86400


class HousekeepingStore(Protocol):
    def ensure_partitions(self, days: set[date], lock_timeout_s: float | None = None) -> None: ...
    def drop_partitions_before(self, day: date,
                               lock_timeout_s: float | None = None) -> list[str]: ...
    def delete_older(self, table: str, column: str, before: datetime) -> int: ...


class ColdStore(Protocol):
    def cold_candidates(self, before: datetime, limit: int) -> list[tuple[str, datetime, int]]: ...
    def compact_hour(self, lay: cold.Layout, device_id: str, hour: datetime,
                     check: bool = True) -> object: ...
    def tier_sizes(self) -> dict[str, int]: ...
    def drop_oldest_cold(self, count: int) -> list[tuple[str, datetime, int]]: ...


@dataclass(frozen=True)
class Retention:
    metrics_days: int  # per-second history, both tiers
    minute_days: int
    hour_days: int
    hot_window_h: float = 24.0
    quarantine_days: int = 30
    process_days: int = 7  # the top processes (table processes), one row per scan
    budget_bytes: int = 0  # 0: none


@dataclass(frozen=True)
class HousekeepingResult:
    dropped_partitions: list[str]
    deleted_minute_rows: int
    deleted_hour_rows: int
    deleted_alerts: int
    deleted_cold_hours: int = 0
    deleted_quarantine: int = 0


def housekeep(store: HousekeepingStore, retention: Retention, now: datetime) -> HousekeepingResult:
    """Create today's and the next days' partitions; drop and delete what is too old."""
    today = now.date()
    store.ensure_partitions({today + timedelta(days=i) for i in range(PARTITIONS_AHEAD_DAYS + 1)},
                            LOCK_TIMEOUT_S)
    dropped = store.drop_partitions_before(today - timedelta(days=retention.metrics_days),
                                           LOCK_TIMEOUT_S)
    cutoff = now - timedelta(days=retention.metrics_days)
    cold_hours = store.delete_older(cold.TABLE, "hour", cutoff - cold.BLOCK)
    minute = store.delete_older(MINUTE.name, "bucket", now - timedelta(days=retention.minute_days))
    hour = store.delete_older(HOUR.name, "bucket", now - timedelta(days=retention.hour_days))
    alerts = store.delete_older("alerts", "ended_at", now - timedelta(days=retention.hour_days))
    quarantine = store.delete_older("quarantine", "received_at",
                                    now - timedelta(days=retention.quarantine_days))
    process_rows = store.delete_older("processes", "ts",
                                      now - timedelta(days=retention.process_days))
    # Agent sessions are kept as long as the hour rollups they explain; a clock offset as
    # long as its session's per-second rows.
    sessions = store.delete_older("device_sessions", "last_received_at",
                                  now - timedelta(days=retention.hour_days))
    store.delete_older("clock_offsets", "decided_at",
                       now - timedelta(days=retention.metrics_days + 1))
    if dropped or minute or hour or alerts or cold_hours or quarantine or sessions or \
            process_rows:
        log.info("Retention: dropped %d day partitions (%s), %d cold device-hours, %d minute "
                 "and %d hour rollup rows, %d closed alerts, %d quarantined messages, %d agent "
                 "sessions, %d process samples.", len(dropped), ", ".join(dropped) or "none",
                 cold_hours, minute, hour, alerts, quarantine, sessions, process_rows)
    return HousekeepingResult(dropped, minute, hour, alerts, cold_hours, quarantine)


# --- sizes and the budget ---------------------------------------------------------------------

def used_bytes(sizes: dict[str, int]) -> int:
    """Bytes the data takes: every tier as stored, the cold one by its live blocks.

    Not ``pg_database_size``: space freed by deleting cold blocks is reused by later ones
    but stays in the files, so the file size would keep the hub dropping data.
    """
    return (sizes["hot"] + sizes["cold_live"] + sizes["minute"] + sizes["hour"]
            + sizes["quarantine"] + sizes.get("processes", 0))


def cold_bytes_per_device_day(sizes: dict[str, int]) -> float | None:
    """Bytes one device's day of per-second readings takes in the cold tier (1 reading/s)."""
    if sizes["cold_readings"] <= 0:
        return None
    return sizes["cold_live"] / sizes["cold_readings"] * SECONDS_PER_DAY


def device_days_fit(sizes: dict[str, int], budget_bytes: int) -> float | None:
    """How many device-days of cold history the budget leaves room for in all (None: no
    budget or nothing cold yet to measure a device-day by)."""
    per_day = cold_bytes_per_device_day(sizes)
    if not budget_bytes or per_day is None:
        return None
    rest = budget_bytes - (used_bytes(sizes) - sizes["cold_live"])
    return max(0.0, rest / per_day)


def tier_summary(sizes: dict[str, int], budget_bytes: int) -> dict[str, object]:
    """Sizes per tier, the budget and the device-days that fit, for status and health."""
    return {"hot_bytes": sizes["hot"], "cold_bytes": sizes["cold_live"],
            "cold_file_bytes": sizes["cold"], "minute_bytes": sizes["minute"],
            "hour_bytes": sizes["hour"], "quarantine_bytes": sizes["quarantine"],
            "processes_bytes": sizes.get("processes", 0),
            "database_bytes": sizes["database"], "used_bytes": used_bytes(sizes),
            "budget_bytes": budget_bytes or None,
            "hot_readings": sizes["hot_readings"], "cold_readings": sizes["cold_readings"],
            "cold_bytes_per_device_day": cold_bytes_per_device_day(sizes),
            "device_days_fit": device_days_fit(sizes, budget_bytes)}


@dataclass
class ColdStats:
    """What compaction and the budget did: shown by the health endpoint."""

    compacted_hours: int = 0
    compacted_readings: int = 0
    duplicates_dropped: int = 0
    budget_dropped_hours: int = 0
    budget_dropped_readings: int = 0
    over_budget_bytes: int = 0  # still over after dropping all it could (0: within)
    failures: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    sized_at: datetime | None = None


def enforce_budget(store: ColdStore, budget_bytes: int, stats: ColdStats,
                   batch: int = 24) -> int:
    """Drop the oldest cold hours while the data is over ``budget_bytes``; return how many.

    Each drop is logged as ERROR (data is lost) and counted in ``stats``.
    """
    if not budget_bytes:
        return 0
    dropped_total = 0
    while True:
        sizes = store.tier_sizes()
        stats.sizes = sizes
        over = used_bytes(sizes) - budget_bytes
        if over <= 0:
            stats.over_budget_bytes = 0
            return dropped_total
        per_block = sizes["cold_live"] / sizes["cold_blocks"] if sizes["cold_blocks"] else 0
        if per_block <= 0:
            if stats.over_budget_bytes == 0:
                log.error("Storage budget: %s bytes used of %s and no cold history left to "
                          "drop: raise storage_budget_bytes or shorten hot_window_h.",
                          f"{used_bytes(sizes):,}", f"{budget_bytes:,}")
            stats.over_budget_bytes = over
            return dropped_total
        count = max(1, min(batch, int(over / per_block) + 1))
        dropped = store.drop_oldest_cold(count)
        readings = sum(n for _, _, n in dropped)
        stats.budget_dropped_hours += len(dropped)
        stats.budget_dropped_readings += readings
        dropped_total += len(dropped)
        first, last = min(h for _, h, _ in dropped), max(h for _, h, _ in dropped)
        log.error("Storage budget: %s bytes used of %s; dropped the %d oldest cold "
                  "device-hours (%d readings, %s to %s) of per-second history.",
                  f"{used_bytes(sizes):,}", f"{budget_bytes:,}", len(dropped), readings,
                  first.isoformat(), last.isoformat())


class Compactor:
    """Move device-hours older than the hot window into the cold tier, throttled.

    Works at most ``duty`` of the time while catching up (after a block that took t
    seconds it waits t·(1/duty − 1)); idle, it looks again every ``idle_s``.

    Reading a block back in full costs about as much as building it: the first block of
    each run and one in ``check_every`` of the others, drawn at random, are (merged blocks
    and hours with an agent restart always are, see ``Store.compact_hour``).
    """

    def __init__(self, store: ColdStore, retention: Retention, stats: ColdStats, *,
                 duty: float = 0.1, idle_s: float = 60.0, check_every: int = 1,
                 clock: Callable[[], datetime], lay: cold.Layout | None = None) -> None:
        self.store = store
        self.retention = retention
        self.stats = stats
        self.duty = min(1.0, max(0.001, duty))
        self.idle_s = idle_s
        self.clock = clock
        self.lay = lay or cold.layout()
        self.check_every = max(1, check_every)
        self._draw = random.Random()
        # Device-hours whose block did not read back exactly: left hot (nothing is lost),
        # reported once, and passed over so they do not hold up the others.
        self.refused: set[tuple[str, datetime]] = set()

    def round(self, stop: threading.Event | None = None, limit: int = 100) -> int:
        """Compact up to ``limit`` device-hours; return how many were compacted."""
        before = self.clock() - timedelta(hours=self.retention.hot_window_h)
        done = 0
        found = self.store.cold_candidates(cold.hour_of(before), limit + len(self.refused))
        for device_id, hour, _ in found:
            if stop is not None and stop.is_set():
                break
            if (device_id, hour) in self.refused:
                continue
            began = time.monotonic()
            try:
                check = (self.stats.compacted_hours == 0
                         or self._draw.randrange(self.check_every) == 0)
                result = self.store.compact_hour(self.lay, device_id, hour, check)
            except PermanentStoreError as exc:
                self.refused.add((device_id, hour))
                self.stats.failures += 1
                log.error("Not compacting %s at %s: %s. Its readings stay in the hot tier.",
                          device_id, hour.isoformat(), exc)
                continue
            self.stats.compacted_hours += 1
            self.stats.compacted_readings += getattr(result, "moved", 0)
            self.stats.duplicates_dropped += getattr(result, "duplicates", 0)
            done += 1
            if stop is not None:
                spent = time.monotonic() - began
                stop.wait(spent * (1 / self.duty - 1))
        return done

    def run(self, stop: threading.Event) -> None:
        """Compact and keep to the budget until ``stop`` is set."""
        failing = False
        while not stop.is_set():
            try:
                done = self.round(stop)
                enforce_budget(self.store, self.retention.budget_bytes, self.stats)
                self.stats.sizes = self.store.tier_sizes()
                self.stats.sized_at = self.clock()
                if failing:
                    log.warning("Compaction into the cold tier works again.")
                failing = False
            except StoreError as exc:
                self.stats.failures += 1
                if not failing:
                    log.error("Compaction into the cold tier failed: %s. Retrying every "
                              "%g s; the readings stay in the hot tier.", exc, self.idle_s)
                failing = True
                done = 0
            if not done:
                stop.wait(self.idle_s)
