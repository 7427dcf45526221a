"""Bring the rollups of the minutes the writer marked up to date, beside the writes.

    BatchWriter (its thread): write → ack        RollupFlusher (its thread): flush due marks

The writer marks the device-minutes it stores readings into (hub/rollup.py, "pending
minutes"); this thread recomputes the rollups of those marked ``rollup_flush_s`` ago, on a
connection of its own, so a batch never waits for a flush. Its store shares the writer's
marks (``Store.sibling``), which keeps a flush from deleting a mark a write it did not see
still needs (``hub.store.PendingMarks``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from hub.ingest.write import backoff_s
from shared.errors import StoreError

log = logging.getLogger("fleetpulse.hub")
# The marks made rollup_flush_s ago are looked for this often, at most FLUSH_LIMIT minutes
# in one statement; while more are due, the next FLUSH_LIMIT follow at once. Short
# statements keep the rollups' lock short (another hub's flush and the duplicate-safe path
# take it), and recomputing minutes more often costs more: 100 every 0.25 s took 20-28 µs
# of PostgreSQL a message against 7-12.
FLUSH_EVERY_S = 1.0
FLUSH_LIMIT = 100


class FlushStore(Protocol):
    def flush_rollups(self, age_s: float = 0.0, limit: int | None = None) -> int: ...


class RollupFlusher:
    """Flush the rollups of every marked minute at start (what a crash left), of the minutes
    marked ``flush_s`` ago while the hub runs, and of all of them at :meth:`finish`.

    ``last_write`` gives the monotonic time of the writer's last batch: marks come due only
    up to ``flush_s`` after it, so an idle hub stops asking the database.
    """

    def __init__(self, store: FlushStore, flush_s: float, stop: threading.Event,
                 last_write: Callable[[], float]) -> None:
        self._store, self._flush_s, self._stop = store, flush_s, stop
        self._last_write = last_write
        self._ending = threading.Event()
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="rollups", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Flush every mark left (call once the writer has written its last batch), then end."""
        self._ending.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._flush_all()
        except Exception:
            # A bug, not the database (those are retried): stop the hub, as the writer does.
            log.exception("The rollups thread failed; stopping.")
            self.failed = True
            self._stop.set()

    def _flush_all(self) -> None:
        if self._flush(everything=True) is None:  # a crash's marks
            return
        backlog = False  # the last flush took FLUSH_LIMIT minutes: more may be due now
        while not self._ending.wait(0.0 if backlog else FLUSH_EVERY_S):
            due_until = self._last_write() + self._flush_s + 2 * FLUSH_EVERY_S
            if not backlog and time.monotonic() > due_until:
                continue  # nothing written for a while: no mark can come due
            flushed = self._flush(everything=False)
            if flushed is None:
                return  # stopped while the database was away: the marks stay for next start
            backlog = flushed >= FLUSH_LIMIT
        self._flush(everything=True)

    def _flush(self, everything: bool) -> int | None:
        """Bring the rollups of minutes marked ``flush_s`` ago (``everything``: of all marked
        minutes) up to date; return how many, or None if stopped before it could.

        Retried while the database is away; the marks are in the database, so a hub stopped
        before it succeeds recomputes them at its next start.
        """
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                minutes = self._store.flush_rollups(*((0.0, None) if everything else
                                                      (self._flush_s, FLUSH_LIMIT)))
            except StoreError as exc:
                attempt += 1
                if attempt == 1:
                    log.error("Cannot bring the rollups up to date: %s. Retrying.", exc)
                if self._stop.wait(backoff_s(attempt)):
                    return None
                continue
            if attempt:
                log.warning("Database is back: the rollups are up to date.")
            log.debug("Recomputed the rollups of %d device-minutes in %.0f ms.", minutes,
                      1000 * (time.monotonic() - started))
            return minutes
