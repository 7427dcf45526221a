"""The write policy with a fake store: retry what is transient, isolate the bad row."""

import threading

import orjson

from hub.ingest.batch import Ack, Batch, Inbound, QuarantineRecord
from hub.ingest.validate import validate
from hub.ingest.write import BACKOFF_MAX_S, backoff_s, write_batch
from shared.errors import PermanentStoreError, TransientStoreError
from tests.unit.hub.messages import NOW, metrics_bytes

SEQ = 2  # the row's column


class FakeStore:
    def __init__(self, failures=(), bad_seqs=()):
        self.failures = list(failures)  # exceptions raised by the next calls
        self.bad_seqs = set(bad_seqs)
        self.rows: list = []
        self.quarantine: list[QuarantineRecord] = []
        self.calls = 0

    def write(self, rows, quarantine, devices):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if any(row[SEQ] in self.bad_seqs for row in rows):
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
    """Readings of seq 1 … n of device pi-1."""
    batch = Batch(opened_at=0)
    for i in range(1, n + 1):
        message = Inbound("fp/pi-1/metrics", metrics_bytes(seq=i), NOW, Ack(i, 1, 0))
        batch.add(message, validate(message.topic, message.payload, NOW, "fp"))
    return batch


def seqs(rows) -> list[int]:
    return sorted(row[SEQ] for row in rows)


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
    store = FakeStore(bad_seqs={5})
    outcome = write_batch(store, batch_of(8), NoWaitEvent())
    assert seqs(store.rows) == [1, 2, 3, 4, 6, 7, 8]
    bad, = store.quarantine
    assert "database refused the row: value out of range" in bad.reason
    assert (bad.topic, bad.device_id, bad.received_at) == ("fp/pi-1/metrics", "pi-1", NOW)
    stored = orjson.loads(bad.payload)  # the row as the hub built it, by column
    assert (stored["device_id"], stored["seq"]) == ("pi-1", 5)
    assert stored["disk_partitions"] == orjson.loads(metrics_bytes(seq=5))["disk"]["partitions"]
    assert outcome.inserted == 7 and outcome.quarantined == 1


def test_permanent_errors_that_are_not_the_datas_fault_are_retried_not_quarantined():
    store = FakeStore(failures=[PermanentStoreError("permission denied", "42501")] * 2)
    outcome = write_batch(store, batch_of(3), NoWaitEvent())
    assert outcome.inserted == 3 and store.quarantine == []
