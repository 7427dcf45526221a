"""The on-disk spool: readings the broker has not acknowledged, kept while it is away.

SQLite in WAL mode under the agent's state directory. Kind to SD cards: the agent writes
here only while the broker is unreachable (or not acknowledging), in one transaction per
``spool_flush_s``, never once per reading; while the broker acknowledges, nothing is
written. Bounded by age and size: the oldest readings go first, and how many were dropped
is counted here (so a restart keeps the count) and reported in the agent's meta.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reading:
    """One encoded reading and its identity (session, seq) and time (epoch seconds)."""

    session_id: str
    seq: int
    epoch_s: float
    payload: bytes

    @property
    def key(self) -> tuple[str, int]:
        return (self.session_id, self.seq)


@dataclass(frozen=True)
class SpooledReading:
    row_id: int
    reading: Reading


class Spool:
    """A bounded FIFO of readings on disk."""

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        # FULL: a committed batch survives a power cut (there are few commits, so it is cheap).
        self._db.execute("pragma synchronous=full")
        self._db.execute("create table if not exists readings (id integer primary key, "
                         "session_id text not null, seq integer not null, epoch_s real not null, "
                         "payload blob not null, unique (session_id, seq))")
        self._db.execute("create table if not exists counters (name text primary key, "
                         "value integer not null)")
        self._db.execute("insert or ignore into counters values ('dropped', 0)")
        self._count = int(self._db.execute("select count(*) from readings").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        # Kept in memory: the agent asks every loop, and count(*) costs ~0.2 ms on a Pi.
        return self._count

    @property
    def dropped(self) -> int:
        """Readings dropped because the spool was full or too old, ever."""
        return int(self._db.execute("select value from counters where name = 'dropped'")
                   .fetchone()[0])

    def add(self, readings: Iterable[Reading], now_epoch_s: float) -> int:
        """Store readings in one transaction, then trim to the bounds; return how many dropped."""
        rows = [(r.session_id, r.seq, r.epoch_s, r.payload) for r in readings]
        if not rows:
            return 0
        with self._transaction():
            inserted = self._db.executemany(
                "insert or ignore into readings (session_id, seq, epoch_s, payload) "
                "values (?, ?, ?, ?)", rows).rowcount
            self._count += inserted
            dropped = self._trim(now_epoch_s)
        return dropped

    def _trim(self, now_epoch_s: float) -> int:
        cutoff = now_epoch_s - self.max_age_s
        dropped = self._db.execute("delete from readings where epoch_s < ?", (cutoff,)).rowcount
        # Size bound by payload bytes (what grows), oldest first.
        total = self._db.execute("select coalesce(sum(length(payload)), 0) from readings"
                                 ).fetchone()[0]
        if total > self.max_bytes:
            excess = total - self.max_bytes
            ids = []
            freed = 0
            for row_id, size in self._db.execute(
                    "select id, length(payload) from readings order by id"):
                if freed >= excess:
                    break
                ids.append((row_id,))
                freed += size
            self._db.executemany("delete from readings where id = ?", ids)
            dropped += len(ids)
        self._count -= dropped
        if dropped:
            self._db.execute("update counters set value = value + ? where name = 'dropped'",
                             (dropped,))
        return dropped

    def oldest(self, limit: int, after_id: int = 0) -> list[SpooledReading]:
        """Return up to ``limit`` readings, oldest first, with row id above ``after_id``."""
        return [SpooledReading(row_id, Reading(s, q, t, bytes(p))) for row_id, s, q, t, p in
                self._db.execute("select id, session_id, seq, epoch_s, payload from readings "
                                 "where id > ? order by id limit ?", (after_id, limit))]

    def remove(self, keys: Iterable[tuple[str, int]]) -> None:
        """Forget readings the broker has acknowledged (one transaction)."""
        keys = list(keys)
        if keys:
            with self._transaction():
                self._count -= self._db.executemany(
                    "delete from readings where session_id = ? and seq = ?", keys).rowcount

    def _transaction(self) -> sqlite3.Connection:
        # isolation_level=None means autocommit; 'with' on a Connection commits or rolls
        # back, so open the transaction explicitly first.
        self._db.execute("begin")
        return self._db
