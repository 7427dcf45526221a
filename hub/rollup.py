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

from hub.cold import TABLE as COLD_TABLE
from hub.cold import cold_keys_sql, cold_select_sql, history_source
from hub.cold import layout as cold_layout
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


def _aggregates(step_s: int) -> list[str]:
    """The SELECT list of a rollup row of per-second rows (device_id, ts, the columns), in
    ``rollup_column_types()`` order after device_id and bucket; GROUP BY 1, 2."""
    selects = ["device_id", f"date_bin('{step_s} seconds', ts, {_ORIGIN})", "count(*)"]
    for column in ROLLUP_COLUMNS:
        selects += [f"sum({column})", f"count({column})", f"min({column})", f"max({column})"]
    for column in WEIGHTED_COLUMNS:
        selects += [f"sum({column} * interval_s)",
                    f"coalesce(sum(interval_s) filter (where {column} is not null), 0)"]
    return selects


def _rollup_insert(table: RollupTable, source: str) -> str:
    names = ["device_id", "bucket", *rollup_column_types()]
    return (f"insert into {table.name} as r ({', '.join(names)}) "
            f"select {', '.join(_aggregates(table.step_s))} from {source} group by 1, 2 "
            f"{_MERGE}")


def _merge_clause() -> str:
    """ON CONFLICT clause adding a row of sums, counts and bounds to the stored one."""
    merges = ["readings = r.readings + excluded.readings"]
    merges += [_merge(column, agg) for column in ROLLUP_COLUMNS for agg in AGGREGATES]
    # After the plain sums: SET expressions read the row as it was, whatever their order.
    merges += [_merge_weight(column, w) for column in WEIGHTED_COLUMNS for w in WEIGHTS]
    return f"on conflict (device_id, bucket) do update set {', '.join(merges)}"


_MERGE = _merge_clause()


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


# --- pending minutes: the writer's rollups, deferred ------------------------------------------
# The writer does not merge each batch into the rollups (two wide upserts a device a batch,
# most of its database time). It marks the device-minutes it inserted readings into
# (``PENDING``, in the batch's transaction), and every ``rollup_flush_s`` the hub's rollups
# thread (hub/ingest/flush.py) recomputes each marked minute from the per-second rows of
# both tiers, replaces the minute's row with it and adds the difference to the hour's row
# (:func:`flush_pending_sql`). Recomputing from what is stored needs no state in memory: a
# mark left by a crash is recomputed like any other, and recomputing a minute twice changes
# nothing.
PENDING = "rollup_pending"
# Flushes, the duplicate-safe path's merges and compaction's subtraction take this lock
# before they touch a rollup row, so a flush's snapshot (taken after it has the lock) sees
# every merge made before it, and no merge is overwritten by a flush that did not see it.
LOCK_SQL = "select pg_advisory_xact_lock(hashtext('fleetpulse.rollups'))"
# Parameters: owner, then the device ids and minutes as arrays.
MARK_SQL = (f"insert into {PENDING} (owner, device_id, bucket) select %s, d, b from "
            "unnest(%s::text[], %s::timestamptz[]) as u(d, b) on conflict do nothing")
# A mark older than this is recomputed by any hub: its owner (a client id no hub uses any
# more, or a hub stalled that long) has not flushed it.
ABANDONED_AFTER = "1 day"


def _diff(column: str, agg: str) -> str:
    """The part of the new minute's ``column_agg`` that the stored minute row lacks."""
    name = f"{column}_{agg}"
    if agg in ("min", "max"):
        return f"n.{name}"  # the new minute holds the old one's readings: its bounds do
    if agg in WEIGHTS:
        old = weighted_parts(column, "o.")[WEIGHTS.index(agg)]
        return f"n.{name} - coalesce({old}, 0)"
    return f"n.{name} - coalesce(o.{name}, 0)"


def flush_pending_sql() -> str:
    """Return one statement that brings the rollups of the pending minutes up to date.

    Parameters ``%(owner)s``, ``%(age_s)s`` and ``%(limit)s``: the marks of that owner at
    least ``age_s`` old (and any mark older than ``ABANDONED_AFTER``), at most ``limit`` of
    them, oldest first, are deleted and their minutes recomputed from ``metrics`` and the
    cold tier (UNION ALL, so a reading in both tiers counts twice until compaction subtracts
    it, as with merged rollups). The minute row is replaced; the hour row gets the
    difference (sums and counts add, bounds take the extreme). A minute whose per-second
    rows hold fewer readings than its rollup (retention dropped them) is left as it is.
    Run after :data:`LOCK_SQL` in the same transaction. Result: minutes recomputed,
    minutes left as they were, and the device ids and minutes of the marks deleted.
    """
    names = ["device_id", "bucket", *rollup_column_types()]
    source = ", ".join(["device_id", "ts", *ROLLUP_COLUMNS])
    # The cold part decodes each device-hour's block once, only where a block exists.
    lay = cold_layout()
    listed = [c.name for c in lay.columns if c.name in ("device_id", "ts", *ROLLUP_COLUMNS)]
    hours = (f"select distinct k.device_id, date_bin('1 hour', k.bucket, {_ORIGIN}) as hour "
             f"from k where exists (select 1 from {COLD_TABLE} b where b.device_id = "
             f"k.device_id and b.hour = date_bin('1 hour', k.bucket, {_ORIGIN}))")
    cold_rows = cold_select_sql(lay, listed, "t.device_id", "t.hour",
                                "t.hour + interval '1 hour'")
    selects = _aggregates(MINUTE.step_s)
    diffs = ["n.device_id", f"date_bin('3600 seconds', n.bucket, {_ORIGIN})",
             "n.readings - coalesce(o.readings, 0)"]
    diffs += [_diff(c, agg) for c in ROLLUP_COLUMNS for agg in AGGREGATES]
    diffs += [_diff(c, w) for c in WEIGHTED_COLUMNS for w in WEIGHTS]
    hour_names = names[2:]
    hour_aggs = ["sum(readings)"] + [
        f"{'min' if n.endswith('_min') else 'max' if n.endswith('_max') else 'sum'}({n})"
        for n in hour_names[1:]]
    replace = ", ".join(f"{n} = excluded.{n}" for n in names[2:])
    # Each minute's rows, and its rollup row, looked up through the primary key once per
    # minute: "offset 0" keeps the lateral subquery from being flattened into a join. As a
    # join it was planned as a hash join over a sequential scan of the whole day's partition
    # at every flush (135 of the 150 ms a flush of 100 minutes took, with a partition only
    # minutes old).
    minute_rows = ("select m.* from k cross join lateral (select * from metrics m where "
                   "m.device_id = k.device_id and m.ts >= k.bucket and m.ts < k.bucket + "
                   "interval '1 minute' offset 0) m")
    rollup_rows = (f"select r.* from k cross join lateral (select * from {MINUTE.name} r "
                   "where r.device_id = k.device_id and r.bucket = k.bucket offset 0) r")
    return (
        f"with d as (delete from {PENDING} where (owner, device_id, bucket) in (select owner, "
        f"device_id, bucket from {PENDING} where (owner = %(owner)s and created_at <= now() - "
        f"make_interval(secs => %(age_s)s)) or created_at < now() - interval "
        f"'{ABANDONED_AFTER}' order by created_at limit %(limit)s) "
        "returning owner, device_id, bucket), "
        "k as materialized (select distinct device_id, bucket from d), "
        f"src as (select {source} from ({minute_rows}) m "
        f"union all select {source} from (select c.* from ({hours}) t cross join lateral "
        f"({cold_rows}) c join k on k.device_id = c.device_id and c.ts >= k.bucket and "
        "c.ts < k.bucket + interval '1 minute') c), "
        f"n0 as materialized (select {', '.join(selects)} from src group by 1, 2), "
        f"n as (select * from n0 as n ({', '.join(names)})), "
        f"o as materialized ({rollup_rows}), "
        "kept as materialized (select n.* from n left join o using (device_id, bucket) "
        "where n.readings >= coalesce(o.readings, 0)), "
        f"m as (insert into {MINUTE.name} as r ({', '.join(names)}) select * from kept "
        f"on conflict (device_id, bucket) do update set {replace}), "
        f"h as (insert into {HOUR.name} as r ({', '.join(names)}) select x.device_id, x.bucket, "
        f"{', '.join(hour_aggs)} from (select {', '.join(diffs)} from kept n left join o "
        f"using (device_id, bucket)) as x ({', '.join(names)}) group by 1, 2 {_MERGE}) "
        "select (select count(*) from kept), (select count(*) from n) - "
        "(select count(*) from kept), (select array_agg(device_id) from d where owner = "
        "%(owner)s), (select array_agg(bucket) from d where owner = %(owner)s)")


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
