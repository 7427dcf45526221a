"""Read the fleet for the API and the dashboard: latest values, series, alerts, quarantine.

The SQL of the read side, run through any object with ``query(text, params)`` (a
:class:`~hub.store.StorePool` in the hub), so this module stays free of the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from hub import anomalies
from hub.columns import DISK_MAX_PERCENT
from hub.rollup import MINUTE, ROLLUP_COLUMNS, Resolution, per_core_sql, series_sql

# The columns a series can show (the rolled-up ones; interval_s is bookkeeping).
SERIES_COLUMNS: tuple[str, ...] = tuple(c for c in ROLLUP_COLUMNS if c != "interval_s")
# A device's newest reading as the API, the dashboard and ``fleetpulse-hub status`` show it
# (``latest`` of /api/devices): columns of the lateral ``m`` of :data:`_DEVICES`.
LATEST_COLUMNS = (
    "ts", "cpu_percent", "cpu_per_core_percent", "cpu_load_1", "cpu_freq_current_mhz",
    "memory_percent", "memory_used_bytes", "memory_total_bytes", "memory_swap_percent",
    "memory_swap_in_bytes_per_s", "memory_swap_out_bytes_per_s", "sensors_cpu_celsius",
    "sensors_gpu_celsius", "disk_read_bytes_per_s", "disk_write_bytes_per_s",
    "disk_max_percent", "network_bytes_sent_per_s", "network_bytes_recv_per_s",
    "throttling_raw", "throttling_under_voltage_now", "throttling_throttled_now",
    "throttling_freq_capped_now", "throttling_soft_temp_limit_now",
    "throttling_under_voltage_occurred", "throttling_throttled_occurred", "anomaly_score")

_DEVICES = (
    "select d.device_id, d.hostname, d.status, d.status_since, d.first_seen, d.last_seen, "
    "d.last_received_at, d.meta->>'pi_model' as pi_model, d.meta->>'os' as os, "
    "coalesce(m.interval_s, (d.meta->>'interval_s')::float8) as device_interval_s, "
    + ", ".join(f"m.{c}" for c in LATEST_COLUMNS) + ", "
    "coalesce(a.rules, '{}') as alerts "
    # Bounded by devices.last_seen so that only the newest day partitions are searched.
    "from devices d left join lateral (select m.*, " + DISK_MAX_PERCENT + " from metrics m "
    "where m.device_id = d.device_id and m.ts <= d.last_seen "
    "and m.ts > d.last_seen - interval '1 day' order by ts desc limit 1) m on true "
    "left join lateral (select array_agg(rule order by rule) as rules from alerts "
    "where alerts.device_id = d.device_id and ended_at is null) a on true "
    "{where} order by d.device_id")


# The minute rollups a completeness count reads: those from the minute of ``since`` on, and
# the one before it (whose interval applies to a silent start of the window).
_MINUTES = (
    "(select bucket, readings, interval_s_sum, interval_s_max from " + MINUTE.name + " "
    "where device_id = %(device)s and bucket < %(from)s order by bucket desc limit 1) "
    "union all (select bucket, readings, interval_s_sum, interval_s_max from " + MINUTE.name
    + " where device_id = %(device)s and bucket >= %(from)s and bucket < %(end)s "
    "order by bucket)")


@dataclass(frozen=True)
class Minute:
    """One minute rollup's readings and the seconds they cover (each its ``interval_s``)."""

    bucket: datetime
    readings: int
    interval_s_sum: float
    interval_s_max: float


def expected_readings(since: datetime, end: datetime, minutes: list[Minute],
                      before: Minute | None = None) -> float:
    """Return the readings due over [since, end), minute by minute at the interval of then.

    Each reading covers its ``interval_s``: a minute whose readings cover less than its
    time lacks some, due at that minute's mean interval; whole minutes without readings
    are due at the interval the device came back with (or, at the end, had last; ``before``
    for a window without readings). Readings are
    stamped at one end of what they cover, so where the interval changes (1 s, then 5 s)
    one minute's readings overrun it and a neighbour's fall short by up to one interval:
    that overrun first cancels shortfalls no longer than one of their minute's intervals.
    Pure.
    """
    excess = 0.0
    short: list[tuple[float, float, bool]] = []  # (seconds, interval, at most one interval)
    stored = 0
    interval = (before.interval_s_sum / before.readings) if before and before.readings else None
    cursor = since
    for m in minutes:
        lo, hi = max(m.bucket, since), min(m.bucket + timedelta(minutes=1), end)
        if hi <= lo or not m.readings:
            continue
        interval = m.interval_s_sum / m.readings
        if m.bucket > cursor:  # silent whole minutes before this one, due at the interval
            # the device came back with (its first reading covers the one before it)
            short.append(((m.bucket - cursor).total_seconds(), interval, False))
        gap = (hi - lo).total_seconds() - m.interval_s_sum
        if gap < 0:
            excess -= gap
        elif gap > 0:
            short.append((gap, interval, gap <= m.interval_s_max + 1e-9))
        stored += m.readings
        cursor = hi
    if cursor < end and interval:  # silent since the last minute with readings
        short.append(((end - cursor).total_seconds(), interval, False))
    missing = 0.0
    for seconds, each, _ in sorted(short, key=lambda s: not s[2]):  # one-interval ones first
        cancelled = min(seconds, excess)
        excess -= cancelled
        missing += (seconds - cancelled) / each
    return stored + missing


class Querier(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...


class Streamer(Protocol):
    def stream(self, text: str, params: Any = None,
               chunk_rows: int = 5000) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]: ...


@dataclass(frozen=True)
class Completeness:
    start: datetime
    end: datetime
    expected: int
    stored: int

    @property
    def ratio(self) -> float | None:
        return None if self.expected <= 0 else min(1.0, self.stored / self.expected)


class FleetReader:
    """Queries of the read side; each method is one or two round trips."""

    def __init__(self, db: Querier) -> None:
        self._db = db

    @property
    def db(self) -> Querier:
        """The connection(s) it reads through, for readers of other tables."""
        return self._db

    def devices(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Every device (or one) with its status, newest reading and open alert rules."""
        if device_id is None:
            return self._db.query(_DEVICES.replace("{where}", ""))
        return self._db.query(_DEVICES.replace("{where}", "where d.device_id = %(device)s"),
                              {"device": device_id})

    def meta(self, device_id: str) -> Any:
        rows = self._db.query("select meta from devices where device_id = %s", (device_id,))
        return rows[0]["meta"] if rows else None

    def series(self, device_id: str, start: datetime, end: datetime, resolution: Resolution,
               columns: tuple[str, ...]) -> dict[str, Any]:
        """Mean, min and max per bucket of each column, columnar (as charts want them)."""
        params = {"device": device_id, "start": start, "end": end}
        rows = self._db.query(series_sql(resolution, columns), params)
        times = [row["t"].timestamp() for row in rows]
        series = {c: {agg: [row[f"{c}_{agg}"] for row in rows] for agg in ("mean", "min", "max")}
                  for c in columns}
        per_core: list[list[float | None]] | None = None
        if resolution.source == "raw":
            # Per-core values exist in the per-second table only.
            cores = {row["t"].timestamp(): row["cores"] or []
                     for row in self._db.query(per_core_sql(resolution), params)}
            width = max((len(v) for v in cores.values()), default=0)
            per_core = [[_at(cores.get(t, []), k) for t in times] for k in range(width)]
        return {"t": times, "series": series, "per_core": per_core}

    def completeness(self, device_id: str, start: datetime, end: datetime) -> Completeness:
        """Compare readings expected from the device's interval with those stored.

        Expected minute by minute at the interval the device had then
        (:func:`expected_readings`), so a device whose interval changed (1 s, then 5 s,
        then 0.5 s) is neither over- nor under-expected, and a gap counts the readings due
        at the interval it fell in.
        """
        rows = self._db.query(
            f"select coalesce(sum(readings), 0) as stored from {MINUTE.name} "
            "where device_id = %(device)s and bucket >= %(start)s and bucket < %(end)s",
            {"device": device_id, "start": start, "end": end})
        # Nothing is expected before the device's first stored reading: its own time, not
        # its minute's start (a device started at :37 would otherwise lack 37 readings).
        first = self._db.query(
            f"select f.bucket as first, (select min(m.ts) from metrics m "
            "where m.device_id = %(device)s and m.ts >= f.bucket "
            "and m.ts < f.bucket + interval '1 minute') as first_reading "
            f"from (select min(bucket) as bucket from {MINUTE.name} "
            "where device_id = %(device)s) f", {"device": device_id})[0]
        # Stored counts whole minutes from the first one starting at or after ``start``;
        # expect readings over the same span.
        counted_from = _next_minute(start)
        if first["first"] is None:
            since = end
        else:
            since = min(max(counted_from, first["first_reading"] or first["first"]), end)
        rows_ = self._db.query(_MINUTES, {"device": device_id, "end": end,
                                          "from": since.replace(second=0, microsecond=0)})
        minutes = [Minute(r["bucket"], int(r["readings"]), float(r["interval_s_sum"] or 0.0),
                          float(r["interval_s_max"] or 0.0)) for r in rows_]
        before = minutes.pop(0) if minutes and minutes[0].bucket < since.replace(
            second=0, microsecond=0) else None
        expected = expected_readings(since, end, minutes, before)
        return Completeness(since, end, round(expected or 0.0), int(rows[0]["stored"]))

    def alerts(self, device_id: str | None = None, open_only: bool = False,
               limit: int = 100) -> list[dict[str, Any]]:
        where = []
        if device_id is not None:
            where.append("device_id = %(device)s")
        if open_only:
            where.append("ended_at is null")
        clause = ("where " + " and ".join(where)) if where else ""
        return self._db.query(
            "select id, device_id, rule, started_at, ended_at, peak_value, last_value, "
            f"threshold, message from alerts {clause} "
            "order by (ended_at is null) desc, started_at desc limit %(limit)s",
            {"device": device_id, "limit": limit})

    def quarantine(self, since: datetime, limit: int = 20) -> dict[str, Any]:
        params = {"since": since, "limit": limit}
        total = self._db.query("select count(*) as n, coalesce(sum(payload_bytes), 0) as bytes "
                               "from quarantine where received_at >= %(since)s", params)[0]
        reasons = self._db.query(
            "select reason, count(*) as count, max(received_at) as last_at from quarantine "
            "where received_at >= %(since)s group by reason order by 2 desc, 1 "
            "limit %(limit)s", params)
        devices = self._db.query(
            "select device_id, count(*) as count from quarantine where received_at >= "
            "%(since)s group by device_id order by 2 desc, 1 limit %(limit)s", params)
        recent = self._db.query(
            "select id, received_at, topic, device_id, reason, payload_bytes from quarantine "
            "where received_at >= %(since)s order by received_at desc, id desc "
            "limit %(limit)s", params)
        return {"since": since, "total": int(total["n"]), "bytes": int(total["bytes"]),
                "by_reason": reasons, "by_device": devices, "recent": recent}

    def check(self) -> bool:
        self._db.query("select 1")
        return True

    def anomaly_rates(self, threshold: float,
                      device_id: str | None = None) -> list[dict[str, Any]]:
        """Each device's anomaly model state and rate over the last hour (hub/anomalies.py)."""
        return anomalies.anomaly_rates(self._db, threshold, device_id)

    def anomaly_band(self, device_id: str, start: datetime, end: datetime, step_s: float,
                     threshold: float) -> dict[str, Any]:
        """The anomaly rate and highest score per bucket of a range (hub/anomalies.py)."""
        return anomalies.anomaly_band(self._db, device_id, start, end, step_s, threshold)

    def device_exists(self, device_id: str) -> bool:
        return bool(self._db.query("select 1 from devices where device_id = %s", (device_id,)))


def _next_minute(moment: datetime) -> datetime:
    """Return ``moment`` if it starts a minute, else the start of the next minute."""
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


def _at(values: list[float | None], k: int) -> float | None:
    return values[k] if k < len(values) else None
