"""The writer's deferred rollups (hub/rollup.py, "pending minutes"), on a real PostgreSQL.

A hub's store marks the minutes it writes and brings their rollups up to date at a flush.
Each test compares what the deferred path gives with the rollups of the same readings
written under another device id by a store that updates them with every write.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from hub.retention import ColdStats, Compactor, Retention, housekeep
from hub.rollup import HOUR, MINUTE, ROLLUP_TABLES, _rollup_insert, flush_pending_sql
from hub.store import Store
from shared.schema import MetricsV1
from tests.readings import series, write_readings
from tests.servers import wait_for

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
SUMS = ("_sum", "_wsum")  # added up in another order: equal to within a double's last bits


@pytest.fixture
def hub_store(store: Store, db_url: str) -> Iterator[Store]:
    """A store writing as the hub with client id hub-a does (the fixture ``store`` is the
    reference: its rollups are updated with every write)."""
    deferred = Store(db_url, rollup_owner="hub-a")
    yield deferred
    deferred.close()


def readings(device: str, start: datetime = T0 + timedelta(minutes=58), count: int = 300,
             step_s: float = 1.0, first_seq: int = 1) -> list[MetricsV1]:
    """Readings across minutes and an hour boundary, with nulls and a changing value."""
    out = series(device, start, count, step_s,
                 cpu_percent=lambda i: float(i % 7) + 0.25,
                 sensors_cpu_celsius=lambda i: None if i % 3 else 40.0 + i,
                 network_bytes_recv_per_s=lambda i: 1e6 * i)
    for i, message in enumerate(out):
        message["seq"] = first_seq + i
    return out


def rollups_of(store: Store, device: str) -> list[dict[str, Any]]:
    return [{"table": table.name, **{k: v for k, v in row.items() if k != "device_id"}}
            for table in (MINUTE, HOUR)
            for row in store.query(f"select * from {table.name} where device_id = %s "
                                   "order by bucket", (device,))]


def assert_same_rollups(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [{k: v for k, v in r.items() if not k.endswith(SUMS)} for r in got] == [
        {k: v for k, v in r.items() if not k.endswith(SUMS)} for r in expected]
    for row, want in zip(got, expected, strict=True):
        for key in (k for k in row if k.endswith(SUMS)):
            assert row[key] == pytest.approx(want[key], rel=1e-12, abs=1e-9), key


def pending(store: Store) -> list[tuple[str, str]]:
    return [(r["owner"], r["device_id"])
            for r in store.query("select distinct owner, device_id from rollup_pending "
                                 "order by 1, 2")]


def test_deferred_writes_reach_the_rollups_at_the_flush_as_immediate_ones_do(
        store: Store, hub_store: Store) -> None:
    batches = readings("pi-hub")
    for start in range(0, len(batches), 70):  # five batches, as the writer would send them
        write_readings(hub_store, batches[start:start + 70])
    assert rollups_of(store, "pi-hub") == []  # not yet: the minutes are marked
    assert pending(store) == [("hub-a", "pi-hub")]
    write_readings(store, readings("pi-ref"))

    assert hub_store.flush_rollups() == 5  # 10:58 to 11:02
    assert_same_rollups(rollups_of(store, "pi-hub"), rollups_of(store, "pi-ref"))
    assert pending(store) == []
    assert hub_store.flush_rollups() == 0  # nothing left: a second flush changes nothing
    assert len(rollups_of(store, "pi-hub")) == 5 + 2


def test_a_late_reading_into_a_flushed_minute_is_added_once(store: Store,
                                                            hub_store: Store) -> None:
    on_time = readings("pi-hub", count=100)
    late = readings("pi-hub", start=T0 + timedelta(minutes=58, seconds=0.5), count=3,
                    first_seq=500)
    write_readings(hub_store, on_time)
    hub_store.flush_rollups()
    write_readings(hub_store, late)  # into minutes whose rows exist already
    hub_store.flush_rollups()
    write_readings(hub_store, late)  # redelivered: the duplicate-safe path, counted once
    hub_store.flush_rollups()
    write_readings(store, [*readings("pi-ref", count=100),
                           *readings("pi-ref", start=late[0]["ts"], count=3, first_seq=500)])
    assert_same_rollups(rollups_of(store, "pi-hub"), rollups_of(store, "pi-ref"))
    assert sum(r["readings"] for r in rollups_of(store, "pi-hub")
               if r["table"] == "metrics_1m") == 103


def test_marks_a_crash_left_are_recomputed_by_their_owner_or_once_abandoned(
        store: Store, db_url: str) -> None:
    crashed = Store(db_url, rollup_owner="hub-a")
    write_readings(crashed, readings("pi-a"))
    crashed.close()  # as a SIGKILL would: committed rows and marks, no flush
    other = Store(db_url, rollup_owner="hub-b")
    try:
        write_readings(other, readings("pi-b"))
        # hub-b's flush leaves hub-a's marks: hub-a may be running, and flush them itself.
        assert other.flush_rollups() == 5
        assert rollups_of(store, "pi-a") == []
        assert pending(store) == [("hub-a", "pi-a")]

        restarted = Store(db_url, rollup_owner="hub-a")  # same client id: its next start
        assert restarted.flush_rollups() == 5
        restarted.close()
        assert_same_rollups(rollups_of(store, "pi-a"), rollups_of(store, "pi-b"))

        # A client id no hub uses any more: its marks are anyone's after a day.
        gone = Store(db_url, rollup_owner="hub-gone")
        write_readings(gone, readings("pi-c"))
        gone.close()
        assert other.flush_rollups() == 0
        store.execute([("update rollup_pending set created_at = now() - interval '25 hours'",
                        ())])
        assert other.flush_rollups() == 5
        assert_same_rollups(rollups_of(store, "pi-c"), rollups_of(store, "pi-b"))
        assert pending(store) == []
    finally:
        other.close()


def test_two_hubs_writing_the_same_minutes_each_flush_their_own(store: Store, db_url: str,
                                                                hub_store: Store) -> None:
    second = Store(db_url, rollup_owner="hub-b")
    try:
        shared = readings("pi-1")
        # A share group hands one device's readings to either hub, message by message.
        for i in range(0, len(shared), 25):
            write_readings(hub_store if i % 50 else second, shared[i:i + 25])
            if i % 75 == 0:
                (second if i % 150 else hub_store).flush_rollups()
        hub_store.flush_rollups()
        assert pending(store) == [("hub-b", "pi-1")]
        second.flush_rollups()
        write_readings(store, readings("pi-ref"))
        assert_same_rollups(rollups_of(store, "pi-1"), rollups_of(store, "pi-ref"))
    finally:
        second.close()


def test_a_minute_compacted_before_its_flush_is_recomputed_from_the_cold_tier(
        store: Store, hub_store: Store) -> None:
    write_readings(hub_store, readings("pi-hub"))
    now = T0 + timedelta(days=3)
    compactor = Compactor(store, Retention(30, 90, 730, hot_window_h=48), ColdStats(),
                          clock=lambda: now)
    while compactor.round():
        pass
    assert store.query("select count(*) as n from metrics")[0]["n"] == 0  # all cold
    assert hub_store.flush_rollups() == 5
    write_readings(store, readings("pi-ref"))
    assert_same_rollups(rollups_of(store, "pi-hub"), rollups_of(store, "pi-ref"))


def test_a_minute_whose_readings_retention_dropped_keeps_its_rollup_and_says_so(
        store: Store, hub_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    old = now - timedelta(days=40)
    write_readings(store, series("pi-1", old, 2))
    housekeep(store, Retention(30, 90, 730), now)  # the rows go, the minute rollup stays
    late = series("pi-1", old + timedelta(seconds=10), 1)
    late[0]["seq"] = 7
    write_readings(hub_store, late)
    with caplog.at_level(logging.WARNING, logger="hub.store"):
        assert hub_store.flush_rollups() == 0
    assert "retention dropped them" in caplog.text
    minute = store.query("select readings from metrics_1m where device_id = 'pi-1'")
    assert minute == [{"readings": 2}]  # not replaced by the one reading left
    assert pending(store) == []


def test_a_flush_meeting_an_older_hubs_merge_does_not_overwrite_it(store: Store,
                                                                   db_url: str) -> None:
    """A hub of the version before merges every batch into the rollups, without the lock.
    Its merge of minute K, committed while a flush of K waits on its row, must survive."""
    flusher = Store(db_url, rollup_owner="hub-a", application_name="flusher")
    try:
        write_readings(flusher, readings("pi-1", count=30))  # 10:58:00-29, one minute
        with psycopg.connect(db_url) as older:
            # The older hub stores one more reading of that minute and merges it at once.
            older.execute("create temp table again as select * from metrics order by ts "
                          "limit 1")
            older.execute("update again set seq = 999, ts = ts + interval '45 seconds'")
            older.execute("insert into metrics select * from again")
            for table in ROLLUP_TABLES:
                older.execute(_rollup_insert(table, "again").encode())
            result: list[int] = []
            flush = threading.Thread(target=lambda: result.append(flusher.flush_rollups()))
            flush.start()
            wait_for(lambda: store.query(
                "select count(*) as n from pg_stat_activity where application_name = "
                "'flusher' and wait_event_type = 'Lock'")[0]["n"] == 1, 10,
                "the flush to wait on the older hub's row")
            older.commit()
            flush.join(10)
        assert result == [1]
        stored = store.query("select count(*) as n from metrics")[0]["n"]
        assert stored == 31
        for table in ("metrics_1m", "metrics_1h"):
            assert store.query(f"select readings from {table}") == [{"readings": 31}], table
    finally:
        flusher.close()


def test_a_flush_takes_the_marks_old_enough_oldest_first_and_at_most_its_limit(
        store: Store, hub_store: Store) -> None:
    first = readings("pi-hub", count=150)  # 10:58:00 to 11:00:29: three minutes
    write_readings(hub_store, first)
    assert hub_store.flush_rollups(age_s=3600) == 0  # marked just now: not due yet
    assert hub_store.flush_rollups(limit=2) == 2
    assert len(store.query("select * from rollup_pending")) == 1
    # More readings of a flushed minute and of the one still marked: the flushed one is
    # marked again (the store forgot it was marked), the other stays marked once.
    more = readings("pi-hub", start=T0 + timedelta(minutes=58, seconds=0.5), count=150,
                    first_seq=1000)
    write_readings(hub_store, more)
    assert len(store.query("select * from rollup_pending")) == 3
    hub_store.flush_rollups()
    write_readings(store, [*readings("pi-ref", count=150),
                           *readings("pi-ref", start=more[0]["ts"], count=150,
                                     first_seq=1000)])
    assert_same_rollups(rollups_of(store, "pi-hub"), rollups_of(store, "pi-ref"))


def test_a_flush_looks_each_minute_up_by_its_key_however_full_the_day(hub_store: Store,
                                                                       db_url: str) -> None:
    # A day's partition holds every device's readings; a flush recomputes 100 minutes.
    # Planned as a join, it read the whole partition at every flush (a hash join over a
    # sequential scan): its cost grew with the day, not with the minutes it recomputed.
    for n in range(40):
        write_readings(hub_store, readings(f"pi-{n:02d}", count=600))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("analyze")
        plan = "\n".join(row[0] for row in conn.execute(
            b"explain " + flush_pending_sql().encode(),
            {"owner": "hub-a", "age_s": 0.0, "limit": 100}))
    assert "metrics_20261120_pkey" in plan  # the minute's rows, by device and time
    assert not re.search(r"Seq Scan on metrics_\d{8}", plan), plan
    assert hub_store.flush_rollups() == 40 * 10  # each device's 10 minutes


# --- a flush beside the writes (hub/ingest/flush.py): the writer's connection and the
# flusher's share the marks (Store.sibling). A write that counted on a mark the flush
# deletes, and that the flush's snapshot did not see, must find its minute marked again.

def waiting_on_a_lock(store: Store, application_name: str) -> bool:
    return store.query("select count(*) as n from pg_stat_activity where application_name = "
                       "%s and wait_event_type = 'Lock'", (application_name,))[0]["n"] == 1


@pytest.fixture
def writer_and_flusher(db_url: str) -> Iterator[tuple[Store, Store]]:
    writer = Store(db_url, rollup_owner="hub-a", application_name="writer")
    flusher = writer.sibling("flusher")
    yield writer, flusher
    writer.close()
    flusher.close()


def test_a_write_under_way_as_a_flush_begins_finds_its_minute_marked_again(
        store: Store, db_url: str, writer_and_flusher: tuple[Store, Store]) -> None:
    writer, flusher = writer_and_flusher
    first, second = readings("pi-hub", count=20), readings(
        "pi-hub", start=T0 + timedelta(minutes=58, seconds=30), count=20, first_seq=100)
    write_readings(writer, first)  # marks 10:58; the writer knows it is marked
    with psycopg.connect(db_url) as holder:
        # The second write (same minute, so no mark of its own) is held at its COPY...
        holder.execute("lock table metrics_20261120 in share mode")
        done = threading.Thread(target=write_readings, args=(writer, second))
        done.start()
        wait_for(lambda: waiting_on_a_lock(store, "writer"), 10, "the write to be under way")
        # ...while a flush recomputes 10:58 without it and deletes the mark.
        assert flusher.flush_rollups() == 1
        holder.commit()
        done.join(10)
    assert pending(store) == [("hub-a", "pi-hub")]  # marked again for the readings it missed
    assert flusher.flush_rollups() == 1
    write_readings(store, [*readings("pi-ref", count=20),
                           *readings("pi-ref", start=second[0]["ts"], count=20,
                                     first_seq=100)])
    assert_same_rollups(rollups_of(store, "pi-hub"), rollups_of(store, "pi-ref"))


def test_writes_go_on_while_a_flush_runs_and_the_minutes_they_wrote_stay_marked(
        store: Store, db_url: str, writer_and_flusher: tuple[Store, Store]) -> None:
    writer, flusher = writer_and_flusher
    first = readings("pi-hub", count=20)
    more = [readings("pi-hub", start=T0 + timedelta(minutes=58, seconds=21 + 10 * n),
                     count=5, first_seq=100 + 10 * n) for n in range(3)]
    write_readings(writer, first)
    with psycopg.connect(db_url) as holder:
        # The flush is held at its update of the minute rollup, its snapshot taken...
        holder.execute("lock table metrics_1m in exclusive mode")
        result: list[int] = []
        flush = threading.Thread(target=lambda: result.append(flusher.flush_rollups()))
        flush.start()
        wait_for(lambda: waiting_on_a_lock(store, "flusher"), 10, "the flush to be under way")
        for batch in more:  # ...while the writer stores three batches of the same minute
            assert write_readings(writer, batch).inserted == 5
        holder.commit()
        flush.join(10)
    assert result == [1]
    assert pending(store) == [("hub-a", "pi-hub")]
    assert flusher.flush_rollups() == 1
    write_readings(store, [m for batch in ([readings("pi-ref", count=20)] + [
        readings("pi-ref", start=b[0]["ts"], count=5, first_seq=b[0]["seq"]) for b in more])
        for m in batch])
    assert_same_rollups(rollups_of(store, "pi-hub"), rollups_of(store, "pi-ref"))
    assert sum(r["readings"] for r in rollups_of(store, "pi-hub")
               if r["table"] == "metrics_1m") == 35
