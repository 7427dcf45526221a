"""The ingest loop: take what arrived, validate, batch; a writer thread stores and acks.

    receive (the MQTT session's thread) → Inbox → run_ingest_loop: validate → batch →
    BatchWriter (its own thread): write → ack
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
# The writer brings the rollups of minutes marked rollup_flush_s ago up to date this often,
# at most FLUSH_LIMIT minutes in one statement. While more are due it goes on with the next
# FLUSH_LIMIT after each batch (or at once, with no batch waiting), so a batch waits for one
# such statement at most: when 1,000 devices' minutes came due together, one flush of all
# of them held the writer for 930 ms at 14,000 msg/s (the p99). Recomputing minutes more
# often costs more: 100 every 0.25 s took 20-28 µs of PostgreSQL a message against 7-12.
FLUSH_EVERY_S = 1.0
FLUSH_LIMIT = 100


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

    ``rollup_flush_s`` > 0: the store marks the minutes it writes, and between batches this
    thread brings the rollups of the minutes marked that long ago up to date (every
    ``FLUSH_EVERY_S``, ``FLUSH_LIMIT`` at a time, and while more are due, the next ones
    after each batch), and of all of them at start (what a crash left) and at stop
    (hub/rollup.py, "pending minutes"). ``stored`` is handed the rows each
    batch stored, after its acks.
    """

    def __init__(self, store: Store, receiver: Receiver, stats: IngestStats,
                 stop: threading.Event, score: Score | None = None,
                 rollup_flush_s: float = 0.0, stored: Stored | None = None) -> None:
        self._store, self._receiver, self._stats, self._stop = store, receiver, stats, stop
        self._score = score
        self._stored = stored
        self._flush_s = rollup_flush_s
        self._pending: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        # Batches handed over, and batches written: each counted by one thread only.
        self._submitted = self._written = 0
        self._gave_up = threading.Event()  # stopped while the database was away
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

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
        """Write what is queued, then end the thread."""
        self.submit(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._write_all()
        except Exception:
            # A bug, not the database (write_batch retries those): stop the hub, as an
            # exception in a single-threaded hub would; the broker keeps the messages.
            log.exception("The writer failed; stopping.")
            self.failed = True
            self._gave_up.set()
            self._stop.set()

    def _write_all(self) -> None:
        if self._flush_s and self._flush_rollups(everything=True) is None:  # a crash's marks
            self._gave_up.set()
            return
        checked_at = time.monotonic()
        pending_until = checked_at  # until then, marks may come due
        backlog = False  # the last flush took FLUSH_LIMIT minutes: more may be due now
        while True:
            try:
                batch = self._pending.get(timeout=(0.0 if backlog else FLUSH_EVERY_S)
                                          if self._flush_s else None)
                ending = batch is None
            except queue.Empty:  # idle: only the rollups may be due
                batch, ending = None, False
            now = time.monotonic()
            if self._flush_s and (ending or backlog or (now <= pending_until
                                                        and now - checked_at >= FLUSH_EVERY_S)):
                flushed = self._flush_rollups(everything=ending)
                if flushed is None and not ending:
                    self._gave_up.set()  # stopped while the database was away
                    return
                checked_at = time.monotonic()
                backlog = flushed is not None and flushed >= FLUSH_LIMIT
            if ending:
                return
            if batch is None:
                continue
            if not self._write(batch):
                self._gave_up.set()  # the broker keeps the messages
                return
            # Its marks come due rollup_flush_s from now; a limited flush may need more.
            pending_until = time.monotonic() + self._flush_s + 2 * FLUSH_EVERY_S

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
        # The rest of the wall time is waiting: for PostgreSQL, or for the GIL.
        log.debug("Stored a batch of %d messages in %.0f ms, %.0f ms of it this thread's "
                  "CPU (%.2f s after it opened).", len(batch),
                  1000 * (time.monotonic() - started),
                  1000 * (time.thread_time() - cpu_started),
                  time.monotonic() - batch.opened_at)
        return True

    def _flush_rollups(self, everything: bool = False) -> int | None:
        """Bring the rollups of minutes marked ``rollup_flush_s`` ago (``everything``: of all
        marked minutes) up to date; return how many, or None if stopped before it could.

        Retried like a write: new batches wait meanwhile, and the marks are in the database,
        so a hub stopped before it succeeds recomputes them at its next start.
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
    writer = BatchWriter(store, receiver, stats, stop, score,
                         settings.rollup_flush_s if store.defers_rollups else 0.0, stored)
    # Its own connection: only the first unsynchronised reading of a session uses it.
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
        if writer.failed:
            raise RuntimeError("the hub's writer thread failed (see the log above)")
