"""The on-disk spool: readings the broker has not acknowledged, kept while it is away.

SQLite in WAL mode under the agent's state directory. Kind to SD cards: the agent writes
here only while the broker is unreachable (or not acknowledging), in one transaction per
``spool_flush_s``, never once per reading; while the broker acknowledges, nothing is
written. Bounded by age and size: the oldest readings go first, and how many were dropped
is counted here (so a restart keeps the count) and reported in the agent's meta.

SQLite is loaded only once there is something to keep (or a spool left by an earlier run),
and an empty spool's file is removed at a clean stop: an agent whose broker never went away
saves the ~1.5 MB of memory the sqlite3 module costs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3


@dataclass(frozen=True)
class EncodedReading:
    """One encoded reading and its identity (session, seq) and time (epoch seconds)."""

    session_id: str
    seq: int
    epoch_s: float
    payload: bytes
    # Boot-clock time it was taken at, when the wall clock was not synchronised (then
    # the agent tells the hub how long it waited: agent/publish.py); else None.
    unsynced_boot_s: float | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.session_id, self.seq)


@dataclass(frozen=True)
class SpooledReading:
    row_id: int
    reading: EncodedReading


class Spool:
    """A bounded FIFO of readings on disk."""

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._db: sqlite3.Connection | None = None
        # Both kept in memory: the agent asks every loop, and a query costs ~0.2 ms on a Pi.
        self._count = 0
        self._dropped = 0
        if path.exists():
            self._open()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            import sqlite3  # here, not at the top: see the module's docstring

            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("pragma journal_mode=wal")
            # FULL: a committed batch survives a power cut (there are few commits: cheap).
            db.execute("pragma synchronous=full")
            db.execute("create table if not exists readings (id integer primary key, "
                       "session_id text not null, seq integer not null, "
                       "epoch_s real not null, payload blob not null, unique (session_id, seq))")
            columns = {row[1] for row in db.execute("pragma table_info(readings)")}
            if "unsynced_boot_s" not in columns:  # a spool left by an older agent
                db.execute("alter table readings add column unsynced_boot_s real")
            db.execute("create table if not exists counters (name text primary key, "
                       "value integer not null)")
            db.execute("insert or ignore into counters values ('dropped', 0)")
            self._count = int(db.execute("select count(*) from readings").fetchone()[0])
            self._dropped = int(db.execute("select value from counters where name = 'dropped'")
                                .fetchone()[0])
            self._db = db
        return self._db

    def close(self) -> None:
        """Close the database; remove its file when it keeps nothing (no readings, no count)."""
        if self._db is None:
            return
        self._db.close()
        self._db = None
        if self._count == 0 and self._dropped == 0:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def __len__(self) -> int:
        return self._count

    @property
    def dropped(self) -> int:
        """Readings dropped because the spool was full or too old, ever."""
        return self._dropped

    def add(self, readings: Iterable[EncodedReading], now_epoch_s: float) -> int:
        """Store readings in one transaction, then trim to the bounds; return how many dropped."""
        rows = [(r.session_id, r.seq, r.epoch_s, r.payload, r.unsynced_boot_s)
                for r in readings]
        if not rows:
            return 0
        with self._transaction() as db:
            inserted = db.executemany(
                "insert or ignore into readings (session_id, seq, epoch_s, payload, "
                "unsynced_boot_s) values (?, ?, ?, ?, ?)", rows).rowcount
            self._count += inserted
            dropped = self._trim(now_epoch_s)
        return dropped

    def _trim(self, now_epoch_s: float) -> int:
        db = self._open()
        cutoff = now_epoch_s - self.max_age_s
        dropped = db.execute("delete from readings where epoch_s < ?", (cutoff,)).rowcount
        # Size bound by payload bytes (what grows), oldest first.
        total = db.execute("select coalesce(sum(length(payload)), 0) from readings"
                                 ).fetchone()[0]
        if total > self.max_bytes:
            excess = total - self.max_bytes
            ids = []
            freed = 0
            for row_id, size in db.execute(
                    "select id, length(payload) from readings order by id"):
                if freed >= excess:
                    break
                ids.append((row_id,))
                freed += size
            db.executemany("delete from readings where id = ?", ids)
            dropped += len(ids)
        self._count -= dropped
        if dropped:
            db.execute("update counters set value = value + ? where name = 'dropped'",
                       (dropped,))
            self._dropped += dropped
        return dropped

    def oldest(self, limit: int, after_id: int = 0) -> list[SpooledReading]:
        """Return up to ``limit`` readings, oldest first, with row id above ``after_id``."""
        if self._db is None:
            return []
        return [SpooledReading(row_id, EncodedReading(s, q, t, bytes(p), b))
                for row_id, s, q, t, p, b in self._db.execute(
                    "select id, session_id, seq, epoch_s, payload, unsynced_boot_s "
                    "from readings where id > ? order by id limit ?", (after_id, limit))]

    def remove(self, keys: Iterable[tuple[str, int]]) -> None:
        """Forget readings the broker has acknowledged (one transaction)."""
        keys = list(keys)
        if keys and self._db is not None:
            with self._transaction() as db:
                self._count -= db.executemany(
                    "delete from readings where session_id = ? and seq = ?", keys).rowcount

    def _transaction(self) -> sqlite3.Connection:
        # isolation_level=None means autocommit; 'with' on a Connection commits or rolls
        # back, so open the transaction explicitly first.
        db = self._open()
        db.execute("begin")
        return db
