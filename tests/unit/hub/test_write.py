"""The write policy with a fake store: retry what is transient, isolate the bad row."""

import threading

from hub.ingest.batch import Ack, Batch, Inbound, QuarantineRecord
from hub.ingest.write import BACKOFF_MAX_S, backoff_s, write_batch
from shared.errors import PermanentStoreError, TransientStoreError
from tests.unit.hub.messages import NOW


class FakeStore:
    def __init__(self, failures=(), bad_rows=()):
        self.failures = list(failures)  # exceptions raised by the next calls
        self.bad_rows = set(bad_rows)
        self.rows: list = []
        self.quarantine: list[QuarantineRecord] = []
        self.calls = 0

    def write(self, rows, quarantine, devices):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.bad_rows & set(rows):
            raise PermanentStoreError("value out of range (SQLSTATE 22003)", "22003")
        self.rows += rows
        self.quarantine += quarantine

        class Result:
            inserted = len(rows)
            quarantined = len(quarantine)
        return Result()


class NoWaitEvent(threading.Event):
    """A stop event whose waits return at once (the test does not sleep through backoff)."""

    def __init__(self):
        super().__init__()
        self.waited: list[float] = []

    def wait(self, timeout=None):
        self.waited.append(timeout)
        return self.is_set()


def batch_of(n: int) -> Batch:
    batch = Batch(opened_at=0)
    for i in range(n):
        batch.rows.append((i,))
        ack = Ack(i, 1, 0)
        batch.row_sources.append(Inbound("fp/d/metrics", f"payload {i}".encode(), NOW, ack))
        batch.acks.append(ack)
    return batch


def test_transient_failures_are_retried_with_growing_backoff_until_stored():
    store = FakeStore(failures=[TransientStoreError("connection refused")] * 3)
    stop = NoWaitEvent()
    outcome = write_batch(store, batch_of(4), stop)
    assert outcome is not None and outcome.inserted == 4 and outcome.retries == 3
    assert stop.waited == [backoff_s(1), backoff_s(2), backoff_s(3)]
    assert backoff_s(1) < backoff_s(2) < backoff_s(3) and backoff_s(50) == BACKOFF_MAX_S


def test_stop_during_an_outage_returns_none_so_nothing_is_acknowledged():
    store = FakeStore(failures=[TransientStoreError("down")] * 100)
    stop = NoWaitEvent()
    stop.set()
    assert write_batch(store, batch_of(2), stop) is None
    assert store.rows == []


def test_one_bad_row_is_quarantined_and_the_rest_stored():
    store = FakeStore(bad_rows={(5,)})
    outcome = write_batch(store, batch_of(8), NoWaitEvent())
    assert sorted(store.rows) == [(i,) for i in range(8) if i != 5]
    assert [q.payload for q in store.quarantine] == [b"payload 5"]
    assert "database refused the row: value out of range" in store.quarantine[0].reason
    assert outcome.inserted == 7 and outcome.quarantined == 1


def test_permanent_errors_that_are_not_the_datas_fault_are_retried_not_quarantined():
    store = FakeStore(failures=[PermanentStoreError("permission denied", "42501")] * 2)
    outcome = write_batch(store, batch_of(3), NoWaitEvent())
    assert outcome.inserted == 3 and store.quarantine == []
