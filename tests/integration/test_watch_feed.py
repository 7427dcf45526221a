"""The alert watcher fed by the writer (AlertWatcher.feed) against one that reads every
reading back from a real PostgreSQL: the same runs, forecasts and alerts, without the reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub import watch
from hub.alerts import DEFAULT_RULES, evaluate_fleet
from hub.ingest.batch import DeviceEvents
from hub.retention import Retention
from hub.store import Store
from hub.watch import AlertWatcher, run_alerts_loop
from shared.schema import MetricsV1, metrics_row
from tests.readings import partition, series
from tests.servers import wait_for

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GIB = 2 ** 30


class CountingStore:
    """The store, counting the readings the watcher's query streams back."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.streamed = 0

    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]:
        return self.store.query(text, params)

    def stream(self, text: str, params: Any = None, chunk_rows: int = 5000
               ) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        for names, rows in self.store.stream(text, params, chunk_rows):
            self.streamed += len(rows)
            yield names, rows

    def execute(self, statements: Any) -> None:
        self.store.execute(statements)


def fleet_readings(start: datetime, count: int, first_seq: int = 1) -> list[MetricsV1]:
    """Three devices: a memory leak, a hot CPU, a filling disk; interleaved as received."""
    leak = series("pi-leak", start, count, memory_total_bytes=4 * GIB,
                  memory_available_bytes=lambda i: GIB - (first_seq + i) * 2 ** 20)
    hot = series("pi-hot", start, count, sensors_cpu_celsius=lambda i: 70.0 + (i % 30),
                 throttling_throttled_now=lambda i: i % 50 == 0)
    disk = series("pi-disk", start, count, memory_swap_in_bytes_per_s=lambda i: 1e6 * (i % 3),
                  disk_partitions=lambda i: [partition("/", 85.0 + (first_seq + i) / 50),
                                             partition("/boot", 10.0)])
    out = []
    for group in (leak, hot, disk):
        for n, m in enumerate(group):
            m["seq"] = first_seq + n
    for trio in zip(leak, hot, disk, strict=True):
        out += trio
    return out


def store_as_the_hub(store: Store, messages: list[MetricsV1]) -> list[tuple[Any, ...]]:
    """Write as the hub's writer does; return the rows it stored (what it feeds)."""
    received = messages[-1]["ts"]
    events = DeviceEvents()
    for m in messages:
        seen = events.seen.get(m["device_id"])
        if seen is None or m["ts"] > seen[0]:
            events.seen[m["device_id"]] = (m["ts"], received)
    rows = [metrics_row(m, received) for m in messages]
    store.write(rows, [], events)
    return rows


def test_a_fed_watcher_folds_what_one_reading_back_folds_without_reading_it(
        store: Store, prefix: str) -> None:
    fed_store, read_store = CountingStore(store), CountingStore(store)
    fed = AlertWatcher(fed_store, lambda t, p: None, prefix, DEFAULT_RULES,  # type: ignore[arg-type]
                       fed=True)
    read = AlertWatcher(read_store, lambda t, p: None, prefix, DEFAULT_RULES)  # type: ignore[arg-type]
    changes: dict[str, list[tuple[str, str, str]]] = {"fed": [], "read": []}
    # Stored before this hub started (by the one it replaced): read back as history.
    store_as_the_hub(store, fleet_readings(T0 - timedelta(seconds=50), 50, first_seq=1))
    for bunch in range(12):
        start = T0 + timedelta(seconds=25 * bunch)
        rows = store_as_the_hub(store, fleet_readings(start, 25, first_seq=25 * bunch + 51))
        fed.feed(rows)
        if bunch % 2:
            fed.drain()  # between rounds, as the alerts thread does
        now = start + timedelta(seconds=26)
        for name, watcher in (("fed", fed), ("read", read)):
            fleet = watcher.load()
            changes[name] += [(c.action, c.device_id, c.rule)
                              for c in evaluate_fleet(DEFAULT_RULES, fleet, now)]
        assert fed._runs == read._runs, bunch  # every rule's run of every device
        assert fed._newest == read._newest
    assert changes["fed"] == changes["read"]
    assert {rule for _, _, rule in changes["fed"]} >= {
        "memory_exhaustion_forecast", "disk_full_forecast"}
    # Threshold rules saw their readings beyond the threshold too.
    assert fed._runs["pi-hot"]["cpu_temperature_high"].worst > 90.0
    assert fed._runs["pi-disk"]["disk_nearly_full"].since is not None
    # Reading back, every reading is read; fed, only the history from before the start.
    assert read_store.streamed == 150 + 12 * 75
    assert fed_store.streamed == 150


def test_fed_readings_beyond_the_bound_are_read_back_at_the_next_round(
        store: Store, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MAX_FED_ROWS", 100)
    counting = CountingStore(store)
    fed = AlertWatcher(counting, lambda t, p: None, prefix, DEFAULT_RULES,  # type: ignore[arg-type]
                       fed=True)
    read = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES)
    fed.feed(store_as_the_hub(store, fleet_readings(T0, 10)))
    fed.load()
    read.load()
    # The alerts thread is stuck: more than the bound waits, so the feed is dropped...
    for bunch in range(1, 6):
        fed.feed(store_as_the_hub(store, fleet_readings(T0 + timedelta(seconds=10 * bunch), 10,
                                                       first_seq=10 * bunch + 1)))
    assert fed.drain() == 0  # ... and nothing more is folded from memory until a round
    streamed = counting.streamed
    fed.load()
    read.load()
    assert counting.streamed - streamed == 150  # read back instead
    assert fed._runs == read._runs and fed._newest == read._newest


def test_the_alerts_thread_folds_in_as_soon_as_many_readings_wait(
        store: Store, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rounds and timed drains an hour apart: only the readings waiting can start a drain.
    monkeypatch.setattr(watch, "DRAIN_S", 3600.0)
    monkeypatch.setattr(watch, "DRAIN_ROWS", 50)
    monkeypatch.setattr(watch, "DRAIN_POLL_S", 0.01)
    rounds = threading.Event()

    class Watcher(AlertWatcher):
        def check(self, now: datetime) -> list[Any]:
            changes = super().check(now)
            rounds.set()
            return changes

    fed = Watcher(store, lambda t, p: None, prefix, DEFAULT_RULES, fed=True)
    stop = threading.Event()
    thread = threading.Thread(target=run_alerts_loop, args=(
        store, fed, Retention(30, 90, 730), 3600.0, stop), daemon=True)
    thread.start()
    try:
        assert rounds.wait(30), "the first round"
        fed.feed(store_as_the_hub(store, fleet_readings(T0, 25)))  # 75 readings
        wait_for(lambda: fed.waiting() == 0, 10, "the readings folded in")
        assert sorted(fed._newest) == ["pi-disk", "pi-hot", "pi-leak"]
    finally:
        stop.set()
        thread.join(30)


def test_a_redelivered_or_refused_reading_is_not_folded_twice(store: Store, prefix: str) -> None:
    fed = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES, fed=True)
    read = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES)
    rows = store_as_the_hub(store, fleet_readings(T0, 10))
    fed.feed(rows)
    fed.load()
    later = store_as_the_hub(store, fleet_readings(T0 + timedelta(seconds=10), 10,
                                                   first_seq=11))
    fed.feed(later)
    fed.feed(later[:5])  # the same batch again (redelivered after a lost PUBACK)
    fed.feed(rows[3:6])  # older than what the device has: replayed from a spool
    assert fed.drain() == 30
    read.load()
    assert fed._runs == read._runs and fed._newest == read._newest


def test_a_fed_watcher_still_reads_back_what_another_writer_stored(store: Store,
                                                                   prefix: str) -> None:
    fed = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES, fed=True)
    read = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES)
    fed.feed(store_as_the_hub(store, fleet_readings(T0, 10)))
    fed.load()
    # An import (or another hub on another broker) stores readings this hub never sees.
    imported = series("pi-imported", T0, 20, sensors_cpu_celsius=95.0)
    store_as_the_hub(store, imported)
    fed.load()
    read.load()
    assert fed._runs == read._runs and fed._newest == read._newest
    assert fed._runs["pi-imported"]["cpu_temperature_high"].since == T0
