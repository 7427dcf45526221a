"""Rollups kept in step with inserts, partitions ahead, retention (real PostgreSQL)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest

from hub.retention import Retention, housekeep
from hub.rollup import HOUR, MINUTE, rollup_column_types
from hub.store import Store
from shared.errors import StoreError
from shared.schema import MetricsV1
from tests.readings import reading, series, write_readings

T0 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)


def minute_row(store: Store, device: str, bucket: datetime) -> dict[str, object]:
    rows = store.query("select * from metrics_1m where device_id = %s and bucket = %s",
                       (device, bucket))
    assert len(rows) == 1, rows
    return rows[0]


def test_rollup_tables_have_the_columns_rollup_module_declares(store: Store) -> None:
    for table in (MINUTE, HOUR):
        rows = store.query("select column_name, data_type from information_schema.columns "
                           "where table_name = %s and column_name not in "
                           "('device_id', 'bucket') order by ordinal_position", (table.name,))
        assert {r["column_name"]: r["data_type"] for r in rows} == rollup_column_types()


def test_rollups_summarise_min_mean_max_per_minute_and_hour(store: Store) -> None:
    readings = series("pi-1", T0, 120, cpu_percent=lambda i: float(i % 60),
                      memory_percent=50.0)
    assert write_readings(store, readings).inserted == 120
    first = minute_row(store, "pi-1", T0)
    assert first["readings"] == 60
    assert first["cpu_percent_min"] == 0.0 and first["cpu_percent_max"] == 59.0
    assert first["cpu_percent_sum"] == sum(range(60)) and first["cpu_percent_count"] == 60
    assert first["sensors_cpu_celsius_count"] == 0 and first["sensors_cpu_celsius_sum"] is None
    hour = store.query("select * from metrics_1h where device_id = 'pi-1'")
    assert len(hour) == 1 and hour[0]["readings"] == 120
    assert hour[0]["memory_percent_sum"] / hour[0]["memory_percent_count"] == 50.0


def test_redelivered_readings_are_not_counted_twice_in_rollups(store: Store) -> None:
    readings = series("pi-1", T0, 30, cpu_percent=10.0)
    write_readings(store, readings)
    again = write_readings(store, readings[10:] + series("pi-1", T0 + timedelta(seconds=30), 5,
                                                        cpu_percent=40.0))
    assert again.inserted == 5
    row = minute_row(store, "pi-1", T0)
    assert row["readings"] == 35
    assert row["cpu_percent_sum"] == 30 * 10.0 + 5 * 40.0
    assert row["cpu_percent_max"] == 40.0


def test_late_reading_merges_exactly_into_an_existing_bucket(store: Store) -> None:
    write_readings(store, series("pi-1", T0, 10, cpu_percent=20.0))
    late = reading("pi-1", T0 + timedelta(seconds=45), seq=99, session_id="old",
                   cpu_percent=95.0, sensors_cpu_celsius=61.5)
    assert write_readings(store, [late]).inserted == 1
    row = minute_row(store, "pi-1", T0)
    assert row["readings"] == 11
    assert row["cpu_percent_max"] == 95.0 and row["cpu_percent_min"] == 20.0
    assert row["cpu_percent_sum"] == 10 * 20.0 + 95.0
    assert row["sensors_cpu_celsius_min"] == 61.5 and row["sensors_cpu_celsius_count"] == 1


def test_housekeeping_creates_partitions_ahead_and_drops_expired_ones(store: Store) -> None:
    now = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    old = now - timedelta(days=40)
    write_readings(store, series("pi-1", old, 3, cpu_percent=1.0)
                   + series("pi-1", now - timedelta(minutes=5), 3, cpu_percent=2.0))
    store.execute([("insert into alerts (device_id, rule, started_at, ended_at, message, "
                    "updated_at) values ('pi-1', 'no_data', %s, %s, 'x', %s)",
                    (old, old, old))])
    result = housekeep(store, Retention(metrics_days=30, minute_days=35, hour_days=365), now)

    names = store.partitions()
    assert [f"metrics_{d:%Y%m%d}" for d in (date(2026, 11, 23), date(2026, 11, 24),
                                              date(2026, 11, 25))] == names[-3:]
    assert f"metrics_{old:%Y%m%d}" in result.dropped_partitions
    assert f"metrics_{old:%Y%m%d}" not in names
    assert store.query("select count(*) as n from metrics")[0]["n"] == 3
    assert result.deleted_minute_rows == 1 and result.deleted_hour_rows == 0
    assert store.query("select count(*) as n from metrics_1h")[0]["n"] == 2
    assert result.deleted_alerts == 0  # closed 40 days ago, kept 365


def test_readings_for_a_day_dropped_by_retention_are_stored_again_later(store: Store) -> None:
    now = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    old = now - timedelta(days=40)
    write_readings(store, series("pi-1", old, 2))
    housekeep(store, Retention(30, 90, 730), now)
    # A late reading for that day recreates its partition instead of failing the batch.
    assert write_readings(store, [reading("pi-1", old, seq=7)]).inserted == 1


def test_housekeeping_gives_way_to_a_long_reader_instead_of_stalling_writes(
        store: Store, db_url: str) -> None:
    now = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    write_readings(store, series("pi-1", now, 3))
    reader = Store(db_url)
    housekeeper = Store(db_url)
    try:
        # An export in progress: its transaction holds a share of metrics between chunks.
        export = reader.stream("select * from metrics", chunk_rows=1)
        next(export)
        started = time.monotonic()
        with pytest.raises(StoreError, match="lock timeout"):
            housekeep(housekeeper, Retention(30, 90, 730), now)
        assert time.monotonic() - started < 10
        export.close()  # the export ends; the next round succeeds
        housekeep(housekeeper, Retention(30, 90, 730), now)
        assert store.partitions()[-1] == "metrics_20261125"
    finally:
        reader.close()
        housekeeper.close()


def rollups_of(store: Store, device: str) -> list[dict[str, object]]:
    """Both rollups of one device, without the device id (to compare devices)."""
    found = []
    for table in (MINUTE, HOUR):
        for row in store.query(f"select * from {table.name} where device_id = %s "
                               "order by bucket", (device,)):
            found.append({k: v for k, v in row.items() if k != "device_id"})
    return found


def test_the_copy_fast_path_and_the_duplicate_safe_path_roll_up_alike(store: Store) -> None:
    def readings(device: str) -> list[MetricsV1]:
        # Two minutes and two hours, nulls in some readings, one value of each kind.
        return series(device, T0 + timedelta(minutes=59), 90,
                      cpu_percent=lambda i: float(i % 7) + 0.25,
                      sensors_cpu_celsius=lambda i: None if i % 3 else 40.0 + i,
                      network_bytes_recv_per_s=lambda i: 1e6 * i)
    fast = write_readings(store, readings("pi-fast"))
    assert (fast.inserted, fast.duplicate_safe) == (90, False)
    # The same readings for another device, where one of them is already stored: the COPY
    # meets the duplicate and the whole batch takes the duplicate-safe path.
    slow_readings = readings("pi-slow")
    write_readings(store, slow_readings[:1])
    slow = write_readings(store, slow_readings)
    assert (slow.inserted, slow.duplicate_safe) == (89, True)
    assert len(rollups_of(store, "pi-fast")) == 4
    assert rollups_of(store, "pi-fast") == rollups_of(store, "pi-slow")
    assert store.query("select count(*) as n from metrics")[0]["n"] == 180


def test_a_duplicate_at_the_start_of_a_large_batch_falls_back_and_counts_once(
        store: Store) -> None:
    first = series("pi-1", T0, 1, cpu_percent=5.0)
    write_readings(store, first)
    # The server refuses the COPY at its first row while the client still sends the rest.
    batch = first + series("pi-1", T0 + timedelta(seconds=1), 3000, cpu_percent=1.0)
    result = write_readings(store, batch)
    assert (result.inserted, result.duplicate_safe) == (3000, True)
    assert store.query("select sum(readings) as n from metrics_1m")[0]["n"] == 3001
    assert store.query("select count(*) as n from metrics")[0]["n"] == 3001
