"""Housekeeping: daily partitions ahead of the data, and history dropped by age.

Per-second readings are dropped a whole day-partition at a time (``DROP TABLE`` is instant
and leaves no bloat, unlike ``DELETE``); the rollups, kept longer, are deleted by bucket.
Run at start and then daily by ``hub/main.py``; the dates come in as arguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from hub.rollup import HOUR, MINUTE

log = logging.getLogger(__name__)

PARTITIONS_AHEAD_DAYS = 2
# Creating or dropping a partition locks ``metrics`` exclusively, and a waiting exclusive
# lock queues every later reader and writer behind it: give up after this long (a long
# export holds its share) and try again at the next round, instead of stalling ingest.
LOCK_TIMEOUT_S = 2.0


class HousekeepingStore(Protocol):
    def ensure_partitions(self, days: set[date], lock_timeout_s: float | None = None) -> None: ...
    def drop_partitions_before(self, day: date,
                               lock_timeout_s: float | None = None) -> list[str]: ...
    def delete_older(self, table: str, column: str, before: datetime) -> int: ...


@dataclass(frozen=True)
class Retention:
    metrics_days: int
    minute_days: int
    hour_days: int


@dataclass(frozen=True)
class HousekeepingResult:
    dropped_partitions: list[str]
    deleted_minute_rows: int
    deleted_hour_rows: int
    deleted_alerts: int


def housekeep(store: HousekeepingStore, retention: Retention, now: datetime) -> HousekeepingResult:
    """Create today's and the next days' partitions; drop and delete what is too old."""
    today = now.date()
    store.ensure_partitions({today + timedelta(days=i) for i in range(PARTITIONS_AHEAD_DAYS + 1)},
                            LOCK_TIMEOUT_S)
    dropped = store.drop_partitions_before(today - timedelta(days=retention.metrics_days),
                                           LOCK_TIMEOUT_S)
    minute = store.delete_older(MINUTE.name, "bucket", now - timedelta(days=retention.minute_days))
    hour = store.delete_older(HOUR.name, "bucket", now - timedelta(days=retention.hour_days))
    alerts = store.delete_older("alerts", "ended_at", now - timedelta(days=retention.hour_days))
    # Agent sessions are kept as long as the hour rollups they explain; a clock offset as
    # long as its session's per-second rows.
    sessions = store.delete_older("device_sessions", "last_received_at",
                                  now - timedelta(days=retention.hour_days))
    store.delete_older("clock_offsets", "decided_at",
                       now - timedelta(days=retention.metrics_days + 1))
    if dropped or minute or hour or alerts or sessions:
        log.info("Retention: dropped %d day partitions (%s), %d minute and %d hour rollup "
                 "rows, %d closed alerts, %d agent sessions.", len(dropped),
                 ", ".join(dropped) or "none", minute, hour, alerts, sessions)
    return HousekeepingResult(dropped, minute, hour, alerts)
