"""Write a batch, whatever the database does: retry what is transient, isolate what is bad.

Policy only; the SQL is in ``hub/store.py``. Transient failures (database down, restarting,
out of connections) are retried with capped exponential backoff until they succeed or the
hub stops — the batch's messages stay unacknowledged meanwhile, so the broker keeps them.
A failure that is the data's fault (SQLSTATE class 22 or 23) is narrowed down by splitting
the batch in halves: the good rows are stored and the bad row is quarantined with the
database's reason. Any other permanent failure (a missing table or privilege) is logged as
an ERROR and retried like a transient one: an operator must act, and nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub.ingest.batch import Batch, DeviceEvents, QuarantineRecord, refused_record
from shared.errors import PermanentStoreError, TransientStoreError

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class StoreLike(Protocol):
    def write(self, rows: Sequence[tuple[Any, ...]], quarantine: Sequence[QuarantineRecord],
              devices: DeviceEvents) -> Any: ...


@dataclass
class WriteOutcome:
    inserted: int = 0
    quarantined: int = 0
    retries: int = 0
    refused: list[tuple[Any, ...]] = field(default_factory=list)  # rows quarantined instead


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): doubling, capped."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)))


def write_batch(store: StoreLike, batch: Batch, stop: threading.Event) -> WriteOutcome | None:
    """Store the batch; return None only if ``stop`` was set before it could be stored."""
    outcome = WriteOutcome()
    attempt = 0
    while True:
        try:
            _write_splitting(store, batch.rows, batch.row_topics, batch.quarantine,
                             batch.devices, outcome)
            if attempt:
                log.warning("Database is back: stored the batch of %d messages after %d "
                            "retries.", len(batch), attempt)
            return outcome
        except (TransientStoreError, PermanentStoreError) as exc:
            # Transient, or permanent but not the data's fault (missing table, privilege):
            # keep the messages and retry; an operator may have to act on the ERROR line.
            attempt += 1
            outcome.retries = attempt
            wait = backoff_s(attempt)
            if attempt == 1 or (wait == BACKOFF_MAX_S and attempt % 10 == 0):
                log.error("Cannot store a batch of %d messages: %s. Retrying (every %g s at "
                          "most); the broker keeps new messages meanwhile.", len(batch), exc,
                          BACKOFF_MAX_S)
            if stop.wait(wait):
                return None


def _write_splitting(store: StoreLike, rows: Sequence[tuple[Any, ...]],
                     topics: Sequence[str], quarantine: Sequence[QuarantineRecord],
                     devices: DeviceEvents, outcome: WriteOutcome) -> None:
    try:
        result = store.write(rows, quarantine, devices)
        outcome.inserted += result.inserted
        outcome.quarantined += result.quarantined
        return
    except PermanentStoreError as exc:
        if not exc.bad_data or len(rows) == 0:
            raise  # not the rows' fault, or nothing left to split: retry the whole batch
        if len(rows) == 1:
            log.warning("Quarantined a reading the database refused: %s", exc)
            bad = refused_record(rows[0], topics[0], f"database refused the row: {exc}")
            outcome.refused.append(rows[0])
            _write_splitting(store, [], [], [*quarantine, bad], devices, outcome)
            return
    # Halve: each half carries on; quarantine records and device events go with the first.
    middle = len(rows) // 2
    _write_splitting(store, rows[:middle], topics[:middle], quarantine, devices, outcome)
    _write_splitting(store, rows[middle:], topics[middle:], [], DeviceEvents(), outcome)
