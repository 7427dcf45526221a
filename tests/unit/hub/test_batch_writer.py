"""The hub's writer thread: batches written in order, acked only after, failures stop it."""

from __future__ import annotations

import threading

import pytest

import hub.ingest.flush as flush
from hub.ingest import BatchWriter, IngestStats
from hub.ingest.batch import Ack
from shared.errors import TransientStoreError
from tests.servers import wait_for
from tests.unit.hub.test_write import SEQ, FakeStore, NoWaitEvent, batch_of


class FakeReceiver:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.acked: list[Ack] = []
        self.rows_stored_at_ack: list[int] = []

    def ack(self, tokens: list[Ack]) -> None:
        self.rows_stored_at_ack.append(len(self.store.rows))
        self.acked += tokens


def test_batches_are_written_in_order_and_acked_after_their_write() -> None:
    store = FakeStore()
    receiver = FakeReceiver(store)
    stats = IngestStats()
    writer = BatchWriter(store, receiver, stats, threading.Event())  # type: ignore[arg-type]
    for size in (3, 1, 2):
        assert writer.submit(batch_of(size))
    writer.finish()
    assert [row[SEQ] for row in store.rows] == [1, 2, 3, 1, 1, 2]
    assert [token.mid for token in receiver.acked] == [1, 2, 3, 1, 1, 2]
    assert receiver.rows_stored_at_ack == [3, 4, 6]  # each ack after its batch was stored
    assert (stats.acked, stats.stored, stats.batches) == (6, 6, 3)
    assert stats.last_write_at is not None and not writer.failed


def test_the_writer_is_idle_only_with_nothing_to_write() -> None:
    release = threading.Event()

    class SlowStore(FakeStore):
        def write(self, *args: object, **kwargs: object) -> object:
            release.wait(10)
            return super().write(*args, **kwargs)  # type: ignore[arg-type]

    store = SlowStore()
    writer = BatchWriter(store, FakeReceiver(store), IngestStats(),  # type: ignore[arg-type]
                         threading.Event())
    assert writer.idle()
    writer.submit(batch_of(2))
    assert not writer.idle()  # queued or being written
    release.set()
    wait_for(writer.idle, 10, "the writer to finish the batch")
    writer.finish()
    assert len(store.rows) == 2


def test_stopped_while_the_database_is_away_nothing_is_acked_and_submit_says_so() -> None:
    store = FakeStore(failures=[TransientStoreError("down")] * 1000)
    receiver = FakeReceiver(store)
    stop = NoWaitEvent()
    stop.set()
    writer = BatchWriter(store, receiver, IngestStats(), stop)  # type: ignore[arg-type]
    writer.submit(batch_of(2))
    writer.finish()
    assert not writer.submit(batch_of(1))
    assert receiver.acked == [] and store.rows == []


def test_an_unexpected_error_stops_the_hub_instead_of_hanging_it(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(failures=[ZeroDivisionError("a bug")])
    stop = threading.Event()
    writer = BatchWriter(store, FakeReceiver(store), IngestStats(), stop)  # type: ignore[arg-type]
    writer.submit(batch_of(1))
    assert stop.wait(10)
    writer.finish()
    assert writer.failed and not writer.submit(batch_of(1))
    assert "The writer failed" in caplog.text


class FlushingStore(FakeStore):
    """A store whose rollups are flushed beside the writes; records each flush (rows written
    before it, the age and limit it was asked for), and fails the flushes it is told to."""

    def __init__(self, flush_failures: int = 0, due: int = 1) -> None:
        super().__init__()
        self.flushes: list[tuple[int, float, int | None]] = []
        self.flush_failures = flush_failures
        self.due = due  # marks the next limited flushes find due

    def flush_rollups(self, age_s: float = 0.0, limit: int | None = None) -> int:
        if self.flush_failures:
            self.flush_failures -= 1
            raise TransientStoreError("connection lost")
        self.flushes.append((len(self.rows), age_s, limit))
        if limit is None:
            return 1
        taken = min(limit, self.due)
        self.due -= taken
        return taken


def flushing_writer(store: FlushingStore, stop: threading.Event | None = None,
                    flush_s: float = 0.2) -> BatchWriter:
    return BatchWriter(store, FakeReceiver(store), IngestStats(),  # type: ignore[arg-type]
                       stop or threading.Event(), rollup_flush_s=flush_s, flush_store=store)


@pytest.fixture
def quick_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flush, "FLUSH_EVERY_S", 0.05)


def test_deferred_rollups_all_at_start_and_end_and_due_ones_between(quick_flushes) -> None:
    store = FlushingStore()
    writer = flushing_writer(store)
    wait_for(lambda: store.flushes == [(0, 0.0, None)], 10, "the flush of a crash's marks")
    writer.submit(batch_of(2))
    # Idle after a write: the minutes marked rollup_flush_s ago, a limited number at once.
    wait_for(lambda: (2, 0.2, flush.FLUSH_LIMIT) in store.flushes, 10, "a flush of due marks")
    writer.submit(batch_of(3))
    writer.finish()  # every mark is flushed, after the last batch, before the threads end
    assert store.flushes[-1] == (5, 0.0, None)
    assert len(store.rows) == 5


def test_while_more_marks_are_due_a_limited_flush_follows_at_once(monkeypatch) -> None:
    # 2.5 limits' worth of marks due together: no flush takes more than FLUSH_LIMIT, and the
    # next follows at once, not FLUSH_EVERY_S later: that is made an hour as the first of
    # them runs.
    monkeypatch.setattr(flush, "FLUSH_EVERY_S", 0.05)

    class Store(FlushingStore):
        def flush_rollups(self, age_s: float = 0.0, limit: int | None = None) -> int:
            if limit is not None:
                monkeypatch.setattr(flush, "FLUSH_EVERY_S", 3600.0)
            return super().flush_rollups(age_s, limit)

    store = Store(due=5 * flush.FLUSH_LIMIT // 2)
    writer = flushing_writer(store, flush_s=0.01)
    writer.submit(batch_of(2))
    wait_for(lambda: store.due == 0, 10, "the due marks flushed, one limit at a time")
    assert [f[2] for f in store.flushes] == [None] + [flush.FLUSH_LIMIT] * 3
    writer.submit(batch_of(3))
    writer.finish()
    assert len(store.rows) == 5 and store.flushes[-1] == (5, 0.0, None)


def test_batches_are_written_and_acked_while_a_flush_takes_its_time(quick_flushes) -> None:
    started, release = threading.Event(), threading.Event()

    class SlowFlushes(FlushingStore):
        def flush_rollups(self, age_s: float = 0.0, limit: int | None = None) -> int:
            if limit is not None:
                started.set()
                release.wait(10)  # the database busy with a long flush
            return super().flush_rollups(age_s, limit)

    store = SlowFlushes()
    receiver = FakeReceiver(store)
    writer = BatchWriter(store, receiver, IngestStats(),  # type: ignore[arg-type]
                         threading.Event(), rollup_flush_s=0.01, flush_store=store)
    writer.submit(batch_of(2))
    assert started.wait(10)  # the flush of the first batch's marks, held from here on
    for size in (3, 4):
        writer.submit(batch_of(size))
    wait_for(lambda: len(receiver.acked) == 9, 5, "the batches written beside the flush")
    assert not release.is_set()
    release.set()
    writer.finish()
    assert store.flushes[-1] == (9, 0.0, None) and not writer.failed


def test_a_failed_flush_is_retried_and_the_writes_go_on(quick_flushes) -> None:
    store = FlushingStore(flush_failures=2)
    stop = NoWaitEvent()  # backoff without sleeping
    writer = flushing_writer(store, stop, flush_s=0.01)
    writer.submit(batch_of(2))
    writer.finish()
    assert store.flushes[0][1:] == (0.0, None) and store.flushes[-1] == (2, 0.0, None)
    assert stop.waited[:2] == [0.5, 1.0]  # the two failures, backed off as a write is
    assert len(store.rows) == 2 and not writer.failed


def test_a_bug_in_the_rollups_thread_stops_the_hub(caplog: pytest.LogCaptureFixture) -> None:
    class Buggy(FlushingStore):
        def flush_rollups(self, age_s: float = 0.0, limit: int | None = None) -> int:
            raise ZeroDivisionError("a bug")

    stop = threading.Event()
    writer = flushing_writer(Buggy(), stop)
    assert stop.wait(10)
    writer.finish()
    assert writer.failed and "The rollups thread failed" in caplog.text


def test_the_rows_a_batch_stored_are_handed_on_after_the_ack_without_refused_ones() -> None:
    store = FakeStore(bad_seqs={2})  # the database refuses the row of seq 2
    receiver = FakeReceiver(store)
    handed: list[list[int]] = []

    def stored(rows: list) -> None:
        assert len(receiver.acked) == 3  # after the ack
        handed.append([row[SEQ] for row in rows])

    writer = BatchWriter(store, receiver, IngestStats(), NoWaitEvent(),  # type: ignore[arg-type]
                         stored=stored)
    writer.submit(batch_of(3))
    writer.finish()
    assert handed == [[1, 3]]  # seq 2 went to quarantine, not to the alert watcher
    assert len(store.quarantine) == 1
