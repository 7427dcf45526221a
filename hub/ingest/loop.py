"""The ingest loop: take what arrived, validate, batch; a writer thread stores and acks.

    receive (the MQTT session's thread) → Inbox → run_ingest_loop: validate → batch →
    BatchWriter (its own thread): write → ack, and beside it
    RollupFlusher (its own thread, hub/ingest/flush.py): the rollups of the minutes written
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.clock import ClockPlacer
from hub.ingest.batch import Batch, Batcher, Inbound
from hub.ingest.flush import FlushStore, RollupFlusher
from hub.ingest.receive import Inbox, Receiver
from hub.ingest.validate import Limits, Result, validate
from hub.ingest.write import backoff_s, write_batch
from hub.store import Store
from shared.config import HubSettings
from shared.errors import StoreError

log = logging.getLogger("fleetpulse.hub")
# How often the ingest loop takes what has arrived: adds at most this to the latency, and
# lets a bunch of messages build up between thread switches.
INGEST_POLL_S = 0.05

@dataclass
class IngestStats:
    """Counters shown by the health endpoint and logged at stop."""

    received: int = 0
    acked: int = 0  # stored or quarantined, and acknowledged to the broker
    stale: int = 0  # from a dropped connection; the broker redelivers them
    stored: int = 0
    quarantined: int = 0
    batches: int = 0
    last_write_at: datetime | None = None


# Sets the anomaly score of a batch's rows (``LiveScorer.score``), before they are written.
Score = Callable[[list[tuple[Any, ...]]], list[tuple[Any, ...]]]
# Takes the rows a batch stored, after its commit (``AlertWatcher.feed``).
Stored = Callable[[list[tuple[Any, ...]]], None]


class BatchWriter:
    """Write batches in a thread of its own, then acknowledge their messages.

    The ingest loop goes on validating the next batch while one is written: the database's
    part of a write runs without the GIL. One batch waits at most while another is written,
    so memory stays bounded; acks go out in batch order, each only after its commit.

    ``flush_store``: a connection of its own (``Store.sibling``) on which a
    :class:`RollupFlusher` brings the rollups of the minutes this writer marks up to date,
    ``rollup_flush_s`` after they were marked, beside the writes; and of all of them at
    start (what a crash left) and at :meth:`finish` (hub/rollup.py, "pending minutes").
    ``stored`` is handed the rows each batch stored, after its acks.
    """

    def __init__(self, store: Store, receiver: Receiver, stats: IngestStats,
                 stop: threading.Event, score: Score | None = None,
                 rollup_flush_s: float = 0.0, stored: Stored | None = None,
                 flush_store: FlushStore | None = None) -> None:
        self._store, self._receiver, self._stats, self._stop = store, receiver, stats, stop
        self._score = score
        self._stored = stored
        self._pending: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        # Batches handed over, and batches written: each counted by one thread only.
        self._submitted = self._written = 0
        self._written_at = time.monotonic()
        self._gave_up = threading.Event()  # stopped while the database was away
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        self._flusher = (RollupFlusher(flush_store, rollup_flush_s, stop,
                                       lambda: self._written_at)
                         if flush_store is not None and rollup_flush_s > 0 else None)

    @property
    def failed(self) -> bool:
        """The writer, or its rollups thread, stopped on a bug."""
        return self._failed or (self._flusher is not None and self._flusher.failed)

    def submit(self, batch: Batch | None) -> bool:
        """Queue a batch (None: no more); False once the writer has given up."""
        while not self._gave_up.is_set():
            try:
                self._pending.put(batch, timeout=0.2)
                if batch is not None:
                    self._submitted += 1
                return True
            except queue.Full:
                continue  # the previous batch still waits: the database is slow or away
        return False

    def idle(self) -> bool:
        """Nothing being written and nothing waiting: a batch handed over now goes at once."""
        return self._written >= self._submitted

    def finish(self) -> None:
        """Write what is queued, then end the thread; then flush every mark left."""
        self.submit(None)
        self._thread.join()
        if self._flusher is not None:
            self._flusher.finish()

    def _run(self) -> None:
        try:
            while (batch := self._pending.get()) is not None:
                if not self._write(batch):
                    self._gave_up.set()  # the broker keeps the messages
                    return
        except Exception:
            # A bug, not the database (write_batch retries those): stop the hub, as an
            # exception in a single-threaded hub would; the broker keeps the messages.
            log.exception("The writer failed; stopping.")
            self._failed = True
            self._gave_up.set()
            self._stop.set()

    def _write(self, batch: Batch) -> bool:
        """Write one batch and acknowledge it; False if stopped before it could be written."""
        started, cpu_started = time.monotonic(), time.thread_time()
        if self._score is not None:  # once per batch: a retried write keeps its scores
            batch.rows = self._score(batch.rows)
        outcome = write_batch(self._store, batch, self._stop)
        if outcome is None:
            return False
        self._receiver.ack(batch.acks)
        if self._stored is not None and batch.rows:
            refused = {id(row) for row in outcome.refused}
            self._stored([row for row in batch.rows if id(row) not in refused]
                         if refused else batch.rows)
        stats = self._stats
        stats.acked += len(batch.acks)
        stats.stored += outcome.inserted
        stats.quarantined += outcome.quarantined
        stats.batches += 1
        stats.last_write_at = datetime.now(UTC)
        self._written += 1
        self._written_at = time.monotonic()
        # The rest of the wall time is waiting: for PostgreSQL, or for the GIL.
        log.debug("Stored a batch of %d messages in %.0f ms, %.0f ms of it this thread's "
                  "CPU (%.2f s after it opened).", len(batch),
                  1000 * (time.monotonic() - started),
                  1000 * (time.thread_time() - cpu_started),
                  time.monotonic() - batch.opened_at)
        return True


def place_clock(placer: ClockPlacer, result: Result, message: Inbound,
                stop: threading.Event) -> Result | None:
    """Place an unsynchronised reading (hub/clock.py), waiting while the database is away."""
    attempt = 0
    while True:
        try:
            return placer.apply(result, message.received_at, message.age_s)
        except StoreError as exc:
            attempt += 1
            if attempt == 1:
                log.error("Cannot read or record a clock offset: %s. Retrying.", exc)
            if stop.wait(backoff_s(attempt)):
                return None


def run_ingest_loop(inbox: Inbox, receiver: Receiver, store: Store, settings: HubSettings,
           stop: threading.Event, stats: IngestStats, score: Score | None = None,
           stored: Stored | None = None) -> None:
    """Validate and batch; a :class:`BatchWriter` writes and acknowledges; until ``stop``.

    ``score`` sets each row's anomaly score, a batch at a time (hub/detect/live.py);
    ``stored`` takes the rows of each batch once stored (the alert watcher's feed).
    """
    batcher = Batcher(settings.batch_max_rows, settings.batch_max_age_s,
                      settings.batch_early_rows)
    limits = Limits(settings.max_payload_bytes, settings.max_future_skew_s,
                    settings.retention_days)
    prefix = settings.topic_prefix
    # Connections of their own: the rollups thread's, and the clock placer's (only the first
    # unsynchronised reading of a session uses it).
    flush_store = (store.sibling("fleetpulse-hub-rollups") if store.defers_rollups
                   else None)
    writer = BatchWriter(store, receiver, stats, stop, score, settings.rollup_flush_s,
                         stored, flush_store)
    clock_store = Store(store.url, application_name="fleetpulse-hub-clock")
    placer = ClockPlacer(clock_store, limits)
    try:
        while True:
            stopping = stop.is_set()
            taken = inbox.take_all()
            # Delivered over a connection that has since dropped, a message cannot be
            # acked, and the broker sends it again over the new one: leave it.
            bunch = [m for m in taken if not receiver.is_stale(m)]
            stats.stale += len(taken) - len(bunch)
            stats.received += len(bunch)  # before a submit that may wait: health counts them
            for message in bunch:
                placed = place_clock(placer, validate(message.topic, message.payload,
                                                      message.received_at, prefix, limits),
                                     message, stop)
                if placed is None:
                    return  # stopping while the database is away: the broker keeps it
                result = placed
                now = time.monotonic()
                batcher.add(message, result, now)
                if batcher.due(now) and not writer.submit(batcher.take()):
                    return
            if batcher.due(time.monotonic(), writer.idle()) or (
                    stopping and batcher.seconds_until_due(0) is not None):
                if not writer.submit(batcher.take()):
                    return
            if stopping and not len(inbox):
                return
            due_in = batcher.seconds_until_due(time.monotonic())
            stop.wait(INGEST_POLL_S if due_in is None else min(due_in, INGEST_POLL_S))
    finally:
        writer.finish()
        clock_store.close()
        if flush_store is not None:
            flush_store.close()
        if writer.failed:
            raise RuntimeError("the hub's writer thread failed (see the log above)")
