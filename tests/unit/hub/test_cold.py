"""The cold tier's layout and the storage arithmetic (pure)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hub import cold
from hub.retention import (
    ColdStats,
    Compactor,
    Retention,
    cold_bytes_per_device_day,
    device_days_fit,
    tier_summary,
    used_bytes,
)
from hub.table import format_tiers
from shared.errors import PermanentStoreError
from shared.schema import Column, metrics_columns

SIZES = {"hot": 4_000_000, "cold": 9_000_000, "cold_live": 8_000_000, "minute": 500_000,
         "hour": 100_000, "quarantine": 50_000, "database": 20_000_000, "cold_blocks": 10,
         "cold_readings": 36_000, "hot_readings": 2_000}


def test_layout_has_an_array_for_every_column_and_record_field() -> None:
    lay = cold.layout()
    names = {p.name for p in lay.parts}
    for column in metrics_columns():
        if column.name == "device_id":
            assert column.name not in names  # the block's key
        elif column.pg_type == "jsonb":
            assert f"{column.name}__n" in names
        else:
            assert column.name in names
    assert {"network_per_interface__name", "network_per_interface__bytes_sent_per_s",
            "disk_partitions__mountpoint", "sensors_temperatures__celsius",
            "cpu_per_core_percent__n"} <= names
    assert lay.part("cpu_percent").pg_type == "double precision[]"
    assert lay.part("disk_partitions__percent").pg_type == "numeric[]"  # as jsonb had it
    assert lay.part("seq").pg_type == "bigint[]"


def test_a_column_added_to_the_schema_gets_its_array_and_is_read_back() -> None:
    columns = [*metrics_columns(), Column("clock_offset_s", "double precision",
                                          ("clock", "offset_s"))]
    lay = cold.layout(columns)
    assert lay.part("clock_offset_s").pg_type == "double precision[]"
    ddl = cold.ensure_sql(lay)
    assert ('alter table metrics_cold add column if not exists "clock_offset_s" '
            "double precision[]") in ddl
    assert '"clock_offset_s"' in cold.rows_function_sql(lay)


def test_a_block_is_the_utc_hour_of_its_readings() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2026, 11, 20, 15, 59, 59, 999000, tzinfo=india)
    assert cold.hour_of(local) == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_the_budget_counts_live_cold_bytes_not_the_files() -> None:
    assert used_bytes(SIZES) == 4_000_000 + 8_000_000 + 500_000 + 100_000 + 50_000
    per_day = cold_bytes_per_device_day(SIZES)
    assert per_day == 8_000_000 / 36_000 * 86400
    fit = device_days_fit(SIZES, 100_000_000)
    assert fit is not None and round(fit * per_day) == 100_000_000 - 4_650_000
    assert device_days_fit(SIZES, 0) is None
    assert device_days_fit({**SIZES, "cold_readings": 0}, 10**9) is None
    assert device_days_fit(SIZES, 1_000) == 0.0


def test_status_shows_each_tier_and_the_room_left() -> None:
    text = format_tiers(tier_summary(SIZES, 100_000_000))
    assert "hot (one row per reading)      3.8 MB, 2,000 readings" in text
    assert "cold (one row per device-hour) 7.6 MB, 36,000 readings, 18.3 MB per device-day" in text
    assert "12.1 MB used of 95.4 MB, room for 5 device-days of cold history" in text
    assert "none (storage_budget_bytes = 0)" in format_tiers(tier_summary(SIZES, 0))


class FakeColdStore:
    """Device-hours to compact; one of them refuses (its block would not read back)."""

    def __init__(self, hours: list[tuple[str, datetime]], refusing: tuple[str, datetime]) -> None:
        self.hot = list(hours)
        self.refusing = refusing
        self.compacted: list[tuple[str, datetime]] = []

    def cold_candidates(self, before: datetime, limit: int) -> list[tuple[str, datetime, int]]:
        return [(d, h, 1) for d, h in self.hot if h < before][:limit]

    def compact_hour(self, lay: cold.Layout, device_id: str, hour: datetime,
                     check: bool = True) -> object:
        if (device_id, hour) == self.refusing:
            raise PermanentStoreError("the cold block does not read back")
        self.hot.remove((device_id, hour))
        self.compacted.append((device_id, hour))
        return None

    def tier_sizes(self) -> dict[str, int]:
        return SIZES

    def drop_oldest_cold(self, count: int) -> list[tuple[str, datetime, int]]:
        return []


def test_a_block_that_does_not_read_back_stays_hot_and_holds_up_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    hours = [("pi-1", t0), ("pi-2", t0), ("pi-1", t0 + timedelta(hours=1))]
    store = FakeColdStore(hours, refusing=("pi-1", t0))
    stats = ColdStats()
    compactor = Compactor(store, Retention(30, 90, 730), stats,
                          clock=lambda: t0 + timedelta(days=3))
    with caplog.at_level(logging.ERROR):
        assert compactor.round() == 2
        assert compactor.round() == 0  # nothing left but the refused one: not retried
    assert store.compacted == hours[1:] and store.hot == [("pi-1", t0)]
    assert stats.failures == 1 and caplog.text.count("Not compacting pi-1") == 1


def test_history_source_lists_both_tiers_columns_in_the_same_order():
    # UNION ALL pairs columns by position: asked out of the table's order, the cold rows'
    # values must not land in another column.
    import re

    from hub.cold import history_source

    sql = history_source(["memory_percent", "ts", "cpu_percent"])
    hot = sql.split("select ", 1)[1].split(" from metrics", 1)[0]
    hot_names = [n.strip().strip('"') for n in hot.split(",")]
    cold_part = sql.split("union all ", 1)[1]
    cold_names = re.findall(r' as "([a-z0-9_]+)"', cold_part.split(" from metrics_cold", 1)[0])
    assert hot_names == cold_names == ["ts", "cpu_percent", "memory_percent"]


def test_counters_timestamps_and_record_numbers_have_their_compact_parts() -> None:
    lay = cold.layout()
    # Timestamps: microseconds since the hour (delta-coded) now; timestamptz[] only read.
    assert lay.part("ts__us").delta and lay.part("ts__us").micros
    assert lay.part("ts").legacy and lay.part("ts") not in lay.written
    # Counters, also inside records, may be kept as differences; doubles and text not.
    assert lay.part("cpu_ctx_switches").delta
    assert lay.part("network_per_interface__bytes_sent").delta
    assert not lay.part("cpu_percent").delta and not lay.part("session_id").delta
    # A record's decimal number has a numeric[] part and its integer twin.
    plain, scaled = lay.part("disk_partitions__percent"), lay.part("disk_partitions__percent__k")
    assert scaled.scaled and scaled.pg_type == "bigint[]" and lay.twin(plain) == scaled
    assert lay.twin(scaled) == plain and lay.twin(lay.part("cpu_percent")) is None


def test_a_block_is_written_with_integers_or_numeric_never_both() -> None:
    lay = cold.layout()
    slots = dict.fromkeys(cold.list_names(lay), 2)
    scaled = cold.insert_block_sql(lay, "src", slots, scaled=True)
    plain = cold.insert_block_sql(lay, "src", slots, scaled=False)
    targets = [sql.split("insert into metrics_cold (")[1].split(")")[0] for sql in (scaled, plain)]
    assert '"disk_partitions__percent__k"' in targets[0]
    assert '"disk_partitions__percent",' not in targets[0]
    assert '"disk_partitions__percent__k"' not in targets[1]
    assert '"disk_partitions__percent",' in targets[1]
    # Either way the block lists the field under its plain name (readers look for it there).
    assert "'disk_partitions__percent'" in scaled and "'disk_partitions__percent'" in plain
