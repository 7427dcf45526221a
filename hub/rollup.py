"""Rollups and resolution: which columns are summarised per minute and per hour, the SQL
that keeps the summaries in step with the inserts, and which table answers a time range.

Pure: builds SQL text from constant column names and does arithmetic on ranges; the
connection that runs it is in ``hub/store.py``. A rollup row keeps sum, count, min and
max of each column (not the mean), so merging a late or replayed reading into an existing
bucket is exact: sums and counts add, min and max take the extreme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from hub.cold import cold_keys_sql, history_source
from shared.schema import metrics_columns

# The main per-second columns that get a minute and an hour summary.
ROLLUP_COLUMNS: tuple[str, ...] = (
    "interval_s",
    "cpu_percent",
    "cpu_load_1",
    "memory_percent",
    "memory_swap_percent",
    "memory_swap_in_bytes_per_s",
    "memory_swap_out_bytes_per_s",
    "sensors_cpu_celsius",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "network_bytes_sent_per_s",
    "network_bytes_recv_per_s",
)
AGGREGATES = ("sum", "count", "min", "max")
# Means over time weigh each reading by the seconds it covers (its interval_s), so a device
# whose interval changes mid-bucket (1 s → 0.5 s) is not over-counted where it samples
# faster: ``<c>_wsum`` = Σ value × interval_s, ``<c>_wtime`` = Σ interval_s of the readings
# that have a value (0, never null, in rows written since migration 0006; null marks an
# older row, whose readings are weighed by that row's mean interval).
WEIGHTED_COLUMNS: tuple[str, ...] = tuple(c for c in ROLLUP_COLUMNS if c != "interval_s")
WEIGHTS = ("wsum", "wtime")


@dataclass(frozen=True)
class RollupTable:
    name: str
    step_s: int
    keep_setting: str  # the HubSettings field saying how many days it is kept


MINUTE = RollupTable("metrics_1m", 60, "rollup_minute_days")
HOUR = RollupTable("metrics_1h", 3600, "rollup_hour_days")
ROLLUP_TABLES = (MINUTE, HOUR)
# date_bin's origin: a fixed UTC instant, so buckets do not depend on the session time zone
# (date_trunc('hour', …) would cut at local half hours in zones like +05:30).
_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"


def rollup_column_types() -> dict[str, str]:
    """Return each rollup table's columns after (device_id, bucket) with their SQL types."""
    types = {"readings": "bigint"}
    for column in ROLLUP_COLUMNS:
        for agg in AGGREGATES:
            types[f"{column}_{agg}"] = "bigint" if agg == "count" else "double precision"
    for column in WEIGHTED_COLUMNS:  # added by migration 0006, so last
        for weight in WEIGHTS:
            types[f"{column}_{weight}"] = "double precision"
    return types


def _row_mean_interval(row: str) -> str:
    return f"{row}interval_s_sum / nullif({row}interval_s_count, 0)"


def weighted_parts(column: str, row: str = "") -> tuple[str, str]:
    """Return the SQL of a rollup row's Σ value × interval and Σ interval for ``column``.

    Rows from before the weights existed (null ``_wtime``) count each reading at the row's
    mean interval. ``row`` prefixes the column names (e.g. ``"r."``).
    """
    mean = _row_mean_interval(row)
    return (f"coalesce({row}{column}_wsum, {row}{column}_sum * {mean})",
            f"coalesce({row}{column}_wtime, {row}{column}_count * {mean})")


def _merge(column: str, agg: str) -> str:
    name = f"{column}_{agg}"
    if agg == "min":
        return f"{name} = least(r.{name}, excluded.{name})"  # least() skips nulls
    if agg == "max":
        return f"{name} = greatest(r.{name}, excluded.{name})"
    if agg == "count":
        return f"{name} = r.{name} + excluded.{name}"
    return f"{name} = coalesce(r.{name} + excluded.{name}, r.{name}, excluded.{name})"


def _merge_weight(column: str, weight: str) -> str:
    name = f"{column}_{weight}"
    old = weighted_parts(column, "r.")[WEIGHTS.index(weight)]
    if weight == "wtime":
        return f"{name} = coalesce({old}, 0) + excluded.{name}"
    return f"{name} = coalesce({old} + excluded.{name}, {old}, excluded.{name})"


def _rollup_insert(table: RollupTable, source: str) -> str:
    names = ["device_id", "bucket", *rollup_column_types()]
    selects = ["device_id", f"date_bin('{table.step_s} seconds', ts, {_ORIGIN})", "count(*)"]
    for column in ROLLUP_COLUMNS:
        selects += [f"sum({column})", f"count({column})", f"min({column})", f"max({column})"]
    for column in WEIGHTED_COLUMNS:
        selects += [f"sum({column} * interval_s)",
                    f"coalesce(sum(interval_s) filter (where {column} is not null), 0)"]
    merges = ["readings = r.readings + excluded.readings"]
    merges += [_merge(column, agg) for column in ROLLUP_COLUMNS for agg in AGGREGATES]
    # After the plain sums: SET expressions read the row as it was, whatever their order.
    merges += [_merge_weight(column, w) for column in WEIGHTED_COLUMNS for w in WEIGHTS]
    return (f"insert into {table.name} as r ({', '.join(names)}) "
            f"select {', '.join(selects)} from {source} group by 1, 2 "
            f"on conflict (device_id, bucket) do update set {', '.join(merges)}")


def insert_with_rollups_sql(staging: str) -> str:
    """Return one statement that moves ``staging`` rows into ``metrics`` and the rollups.

    Only rows the insert really added reach the rollups (``RETURNING`` of ``ON CONFLICT DO
    NOTHING``), so a redelivered message is counted once; the statement's single result is
    the number of new rows. Data-modifying CTEs always run to completion (PostgreSQL docs,
    7.8.4), and all of it is one statement in the caller's transaction.
    """
    columns = ", ".join(c.name for c in metrics_columns())
    returning = ", ".join(["device_id", "ts", *dict.fromkeys(ROLLUP_COLUMNS)])
    # A reading already moved to the cold tier (hub/cold.py) is a redelivery too. Only
    # readings older than the newest cold hour are looked up; each cold block they fall in
    # is decoded once (live readings skip the check).
    parts = [f"k as materialized ({cold_keys_sql(staging)})",
             f"ins as (insert into metrics ({columns}) select {columns} from {staging} s "
             "where not exists (select 1 from k where k.device_id = s.device_id and "
             "k.ts = s.ts and k.session_id = s.session_id and k.seq = s.seq) "
             f"on conflict do nothing returning {returning})"]
    for i, table in enumerate(ROLLUP_TABLES):
        parts.append(f"r{i} as ({_rollup_insert(table, 'ins')})")
    return "with " + ", ".join(parts) + " select count(*) from ins"


def subtract_rollups_sql(source: str) -> str:
    """Return one statement taking the rows of ``source`` out of the rollups again.

    For readings counted twice: a redelivery inserted hot in the instant its first copy was
    compacted (its insert waited for the compaction's delete, then found no conflict), which
    the next compaction finds in both tiers. Counts and sums go back (a sum to within the
    last bit of a double); min and max stay, as the copy held the same values.
    """
    parts = [f"s as materialized (select * from {source})"]
    for i, table in enumerate(ROLLUP_TABLES):
        selects = ["device_id", f"date_bin('{table.step_s} seconds', ts, {_ORIGIN}) as bucket",
                   "count(*) as readings"]
        sets = ["readings = r.readings - d.readings"]
        for column in ROLLUP_COLUMNS:
            selects += [f"sum({column}) as {column}_sum", f"count({column}) as {column}_count"]
            sets += [f"{column}_sum = case when r.{column}_count = d.{column}_count then null "
                     f"else r.{column}_sum - coalesce(d.{column}_sum, 0) end",
                     f"{column}_count = r.{column}_count - d.{column}_count"]
        for column in WEIGHTED_COLUMNS:  # rows from before the weights keep them null
            selects += [f"sum({column} * interval_s) as {column}_wsum",
                        f"coalesce(sum(interval_s) filter (where {column} is not null), 0) "
                        f"as {column}_wtime"]
            sets += [f"{column}_wsum = case when r.{column}_count = d.{column}_count then null "
                     f"else r.{column}_wsum - coalesce(d.{column}_wsum, 0) end",
                     f"{column}_wtime = r.{column}_wtime - d.{column}_wtime"]
        parts.append(f"u{i} as (update {table.name} r set {', '.join(sets)} from (select "
                     f"{', '.join(selects)} from s group by 1, 2) d where r.device_id = "
                     "d.device_id and r.bucket = d.bucket)")
    return "with " + ", ".join(parts) + " select count(*) from s"


# What the fast path (hub/store.py) sends of each inserted row, one array per column, for
# :func:`rollups_from_arrays_sql`.
ROLLUP_SOURCE_COLUMNS: tuple[str, ...] = ("device_id", "ts", *ROLLUP_COLUMNS)


def rollups_from_arrays_sql() -> str:
    """Return one statement that adds rows given as arrays to both rollups.

    Parameters: one array per :data:`ROLLUP_SOURCE_COLUMNS` entry, in that order, holding
    the rows the caller has just inserted into ``metrics`` (all of them: the fast path
    inserts a whole batch or nothing). The aggregation and the merge are those of
    :func:`insert_with_rollups_sql`, so both paths sum, count and bound alike.
    """
    types = {c.name: c.pg_type for c in metrics_columns()}
    arrays = ", ".join(f"%b::{types[c]}[]" for c in ROLLUP_SOURCE_COLUMNS)
    parts = [f"ins as (select * from unnest({arrays}) as u({', '.join(ROLLUP_SOURCE_COLUMNS)}))"]
    for i, table in enumerate(ROLLUP_TABLES):
        parts.append(f"r{i} as ({_rollup_insert(table, 'ins')})")
    return "with " + ", ".join(parts) + " select count(*) from ins"


def create_rollup_table_sql(table: RollupTable) -> str:
    """Return the DDL of one rollup table (used to write and check the migration)."""
    body = ",\n".join(f"    {name} {tp}" + (" not null default 0" if name == "readings" else "")
                      for name, tp in rollup_column_types().items())
    return (f"create table {table.name} (\n    device_id text not null,\n"
            f"    bucket timestamptz not null,\n{body},\n"
            f"    primary key (device_id, bucket)\n);")


# --- choosing a resolution -------------------------------------------------------------------

MAX_POINTS = 1000
# Per-second rows cost ~15-35 µs each to aggregate, in either tier (bench.storage --tiers):
# up to 5 readings a point (ranges up to ~1.4 h at 1 s) stays within ~100 ms; longer ranges
# read the minute rollup, whose points are no coarser than the range needs.
RAW_MAX_STEP_S = 5
MAX_RANGE = timedelta(days=3660)  # ten years of hourly rollups, binned: still ≤ MAX_POINTS


@dataclass(frozen=True)
class Resolution:
    source: str  # "raw", "1m" or "1h"
    table: str
    step_s: int  # width of one point


def choose_resolution(start: datetime, end: datetime, max_points: int = MAX_POINTS,
                      source: str = "auto") -> Resolution:
    """Pick the table and bucket width that give at most ``max_points`` points per series.

    Ranges short enough for per-second points (at most ``RAW_MAX_STEP_S`` readings a
    point) read both per-second tiers (``metrics`` and the cold tier); longer ones the minute
    rollup, then the hour rollup; the bucket is widened (to a whole number of the table's
    step) until the range fits in ``max_points``.

    Args:
        source: "auto", or "raw" / "1m" / "1h" to force a table (still binned to fit).
    """
    span_s = (end - start).total_seconds()
    needed = max(1, math.ceil(span_s / max_points))
    if source == "auto":
        source = "raw" if needed <= RAW_MAX_STEP_S else "1m" if needed < 3600 else "1h"
    base = {"raw": 1, "1m": 60, "1h": 3600}[source]
    step = max(base, math.ceil(needed / base) * base)
    table = {"raw": "metrics", "1m": MINUTE.name, "1h": HOUR.name}[source]
    return Resolution(source, table, step)


def series_sql(resolution: Resolution, columns: tuple[str, ...]) -> str:
    """Return the query of one device's series: ``t``, then ``<column>_mean/_min/_max``.

    Parameters: device_id, start, end (``%(device)s``, ``%(start)s``, ``%(end)s``).
    """
    bucket = f"date_bin('{resolution.step_s} seconds', {{ts}}, {_ORIGIN})"
    selects = []
    if resolution.source == "raw":
        for c in columns:
            # Weighed by the seconds each reading covers (see WEIGHTED_COLUMNS).
            selects += [f"sum({c} * interval_s) / nullif(sum(interval_s) filter "
                        f"(where {c} is not null), 0) as {c}_mean",
                        f"min({c}) as {c}_min", f"max({c}) as {c}_max"]
        # Both tiers (hub/cold.py): per-second readings older than the hot window are in
        # the cold tier.
        return (f"select {bucket.format(ts='ts')} as t, {', '.join(selects)} "
                f"from {history_source(['ts', 'interval_s', *columns])} group by 1 order by 1")
    for c in columns:
        wsum, wtime = weighted_parts(c)
        selects += [f"sum({wsum}) / nullif(sum({wtime}), 0) as {c}_mean",
                    f"min({c}_min) as {c}_min", f"max({c}_max) as {c}_max"]
    return (f"select {bucket.format(ts='bucket')} as t, {', '.join(selects)} "
            f"from {resolution.table} where device_id = %(device)s "
            "and bucket >= %(start)s and bucket < %(end)s group by 1 order by 1")


def per_core_sql(resolution: Resolution) -> str:
    """Return the query of the per-core CPU means per bucket (per-second data only)."""
    bucket = f"date_bin('{resolution.step_s} seconds', ts, {_ORIGIN})"
    return ("select t, array_agg(v order by i) as cores from (select " + bucket +
            " as t, u.i, sum(u.v * m.interval_s) / nullif(sum(m.interval_s), 0) as v from "
            f"{history_source(['interval_s', 'cpu_per_core_percent'])}, "
            "unnest(m.cpu_per_core_percent) with ordinality as u(v, i) "
            "group by 1, 2) cores group by t order by t")
