"""Measure the storage tiers on the real agent's readings (run by ``bench.storage --tiers``).

Input: ``bench/data/agent-recording.jsonl.xz``, readings of the real agent
(``python3 -m agent.main run`` at 1 s on this VM, taken off the broker by a subscriber;
each line ``<receive time> <payload>``, or the payload alone), and the same readings
reshaped as a Raspberry Pi's (``pi_shape``: 4 cores, SD card partitions, lo/eth0/wlan0,
two thermal zones whose values follow the recorded CPU load, firmware flags) — the VM has
no sensors and few devices, so its own shape compresses better than a Pi's would.

All in one run, on the same readings, in a private PostgreSQL:

1. the hot tier (today's row format, the baseline): written by ``Store.write`` in batches
   of 500; bytes per value after VACUUM (rows + TOAST + indexes);
2. compaction (``Store.compact_hour``, the hub's code): CPU of the hub's process and of
   its PostgreSQL backend per device-day, and the cold tier's bytes per value after VACUUM
   (heap + TOAST + index, the whole relation), with the candidates it was chosen over
   (float8 arrays instead of numeric, lz4 instead of pglz, delta-encoded counters,
   Parquet zstd of the same rows);
3. rollups per device-day; the whole database at default settings per device-day
   averaged over 30 days;
4. series queries over 1 h (hot, cold, across), 12 h raw from the cold tier, 24 h, 7 d,
   90 d (the cold blocks copied back in time, rollups likewise), and export throughput
   from the cold tier against the hot one.

A value is one leaf of the reading (a number, flag, text or null; every element of a
list, every field of a record; the envelope's ``v`` excluded, ``received_at`` included).

    python3 -m bench.storage --tiers
    python3 -m bench.storage --tiers --recording /tmp/readings.jsonl

Writes bench/results/tiers.json.
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ROOT, describe_machine, machine, progress, table, write_result

sys.path.insert(0, str(ROOT))

import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from hub import cold
from hub.export import export_to_file
from hub.ingest.batch import DeviceEvents
from hub.ingest.validate import Accepted, validate
from hub.read import SERIES_COLUMNS, FleetReader
from hub.rollup import choose_resolution
from hub.store import Store
from shared.schema import MetricsV1, metrics_row
from tests.servers import PostgresServer

RECORDING = ROOT / "bench" / "data" / "agent-recording.jsonl.xz"
PREFIX = "rec"
DAY_S = 86400


def leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(leaves(v) for v in value.values())
    if isinstance(value, list):
        return sum(leaves(v) for v in value)
    return 1


def load_recording(path: Path) -> list[tuple[datetime | None, dict[str, Any]]]:
    opener = lzma.open if path.suffix == ".xz" else open
    out = []
    with opener(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            received = None
            if not line.startswith(b"{"):
                stamp, line = line.split(b" ", 1)
                received = datetime.fromtimestamp(float(stamp), UTC)
            out.append((received, orjson.loads(line)))
    return out


def _zone(value: float, step: float = 0.538) -> float:
    # The Pi's thermal sensor reads in steps of about half a degree, in millidegrees.
    return round(round(value / step) * step, 3)


def pi_shape(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded readings reshaped as a Raspberry Pi 4's (values from the recording)."""
    out = []
    previous_cores: list[float] = []
    for m in messages:
        p = orjson.loads(orjson.dumps(m))
        p["device_id"] = "pi-rec"
        cores = m["cpu"]["per_core_percent"]
        p["cpu"]["per_core_percent"] = (cores + previous_cores[:len(cores)]) if (
            cores and len(previous_cores) == len(cores)) else []
        previous_cores = cores
        busy = m["cpu"]["percent"] or 0.0
        p["cpu"]["freq_current_mhz"] = 1500.0 if busy > 20 else 600.0
        p["cpu"]["freq_min_mhz"], p["cpu"]["freq_max_mhz"] = 600.0, 1500.0
        root = dict(m["disk"]["partitions"][0]) if m["disk"]["partitions"] else None
        parts = []
        if root is not None:
            root.update(mountpoint="/", device="/dev/mmcblk0p2")
            parts.append(root)
        parts.append({"mountpoint": "/boot/firmware", "device": "/dev/mmcblk0p1",
                      "fstype": "vfat", "total_bytes": 535_805_952, "used_bytes": 66_000_000,
                      "free_bytes": 469_805_952, "percent": 12.3})
        p["disk"]["partitions"] = parts
        for d in p["disk"]["per_disk"]:
            d["name"] = "mmcblk0"
        by_name = {i["name"]: i for i in m["network"]["per_interface"]}
        interfaces = []
        for name, source in (("lo", "lo"), ("eth0", "eth0"), ("wlan0", "ifb0")):
            if source in by_name:
                interfaces.append({**by_name[source], "name": name})
        p["network"]["per_interface"] = interfaces
        load = m["cpu"]["load_1"] or 0.0
        cpu_c = _zone(38.0 + 0.12 * busy + 2.0 * load)
        p["sensors"].update(cpu_celsius=cpu_c, gpu_celsius=cpu_c, temperatures=[
            {"sensor": "cpu_thermal", "label": "", "celsius": cpu_c},
            {"sensor": "rp1_adc", "label": "", "celsius": _zone(cpu_c - 3.1)}])
        p["throttling"] = {"raw": 0, **{k: False for k in m["throttling"] if k != "raw"}}
        out.append(p)
    return out


def validated(pairs: list[tuple[datetime | None, dict[str, Any]]],
              device: str) -> list[tuple[MetricsV1, datetime]]:
    out = []
    for received, message in pairs:
        message = dict(message, device_id=device)
        payload = orjson.dumps(message)
        ts = datetime.fromisoformat(message["ts"].replace("Z", "+00:00"))
        # Recordings without receive times: the hub's receive time, a few ms after ts.
        received = received or ts + timedelta(milliseconds=3 + (ts.microsecond // 1000) % 7)
        result = validate(f"{PREFIX}/{device}/metrics", payload, received, PREFIX)
        if not isinstance(result, Accepted):
            raise SystemExit(f"recorded reading refused: {result}")
        out.append((result.value, received))
    return out


def write_hot(store: Store, readings: list[tuple[MetricsV1, datetime]], batch: int) -> None:
    rows = [metrics_row(m, r) for m, r in readings]
    for i in range(0, len(rows), batch):
        events = DeviceEvents()
        for row in rows[i:i + batch]:
            events.seen[row[0]] = (row[3], row[5])
        store.write(rows[i:i + batch], [], events)


def relation_bytes(conn: psycopg.Connection[Any], relation: str) -> int:
    row = conn.execute("select pg_total_relation_size(%s::regclass)", (relation,)).fetchone()
    return int(row[0]) if row else 0


def hot_bytes(conn: psycopg.Connection[Any], device: str | None = None) -> int:
    row = conn.execute("select coalesce(sum(pg_total_relation_size(inhrelid)), 0) from "
                       "pg_inherits where inhparent = 'metrics'::regclass").fetchone()
    return int(row[0]) if row else 0


def backend_cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def candidates(conn: psycopg.Connection[Any], lay: cold.Layout, values: int) -> dict[str, float]:
    """Bytes per value of the cold blocks re-encoded other ways (same readings)."""
    floats = [p.name for p in lay.parts if p.pg_type == "double precision[]"]
    differences = [p.name for p in lay.parts if p.delta and not p.micros]

    def fresh(expr: str) -> str:  # a new datum, so it is compressed afresh
        return f"array_cat({expr}, null)"

    def build(name: str, compression: str, float8: bool, delta: bool) -> float:
        conn.execute(f"set default_toast_compression = {compression}")
        selects = []
        for p in lay.parts:
            q = cold._q(p.name)
            if not float8 and p.name in floats:  # the shortest decimal of each double
                expr = (f"array(select v::text::numeric from unnest({q}) with ordinality "
                        "u(v, i) order by i)")
            elif not delta and p.name in differences:  # back to the values themselves
                expr = (f"case when '{p.name}' = any(delta) then array(select {cold.SUM}(v) "
                        f"over (order by i) from unnest({q}) with ordinality u(v, i) "
                        f"order by i) else {q} end")
            else:
                expr = q
            selects.append(f"{fresh(expr)} as {q}")
        conn.execute(f"drop table if exists {name}")
        conn.execute(f"create table {name} as select device_id, hour, readings, parts, delta, "
                     f"{', '.join(selects)} from {cold.TABLE}")
        conn.execute(f"alter table {name} add primary key (device_id, hour)")
        conn.execute(f"vacuum analyze {name}")
        size = relation_bytes(conn, name)
        conn.execute(f"drop table {name}")
        conn.execute("reset default_toast_compression")
        return size / values

    return {
        "chosen: float8 floats, counters as differences, pglz": build("cand_a", "pglz", True,
                                                                     True),
        "numeric floats, pglz": build("cand_b", "pglz", False, True),
        "float8 floats, counters as they are (schema 4), pglz": build("cand_c", "pglz", True,
                                                                     False),
        "float8 floats, lz4": build("cand_d", "lz4", True, True),
    }


def parquet_bytes(rows: list[tuple[Any, ...]], columns: list[str], delta: bool) -> int:
    """Parquet (zstd) of the same rows, one row group per device-hour, as a block would be."""
    total = 0
    groups: dict[tuple[str, datetime], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault((row[0], cold.hour_of(row[3])), []).append(row)
    for group in groups.values():
        data = {}
        for i, name in enumerate(columns):
            values = [r[i] for r in group]
            if (values and isinstance(values[0], list | dict)) or name in (
                    "disk_partitions", "disk_per_disk", "network_per_interface",
                    "sensors_temperatures"):
                values = [orjson.dumps(v).decode() for v in values]
            elif delta and values and all(isinstance(v, int) or v is None for v in values) \
                    and any(isinstance(v, int) and not isinstance(v, bool) for v in values):
                prev = 0
                out = []
                for v in values:
                    out.append(None if v is None else v - prev)
                    prev = v if v is not None else prev
                values = out
            data[name] = values
        buf = io.BytesIO()
        pq.write_table(pa.table(data), buf, compression="zstd")
        total += len(buf.getvalue())
    return total


def timed(fn: Any, repeat: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="storage tiers on recorded readings")
    parser.add_argument("--recording", type=Path, default=RECORDING)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--label", default="tiers")
    args = parser.parse_args(argv)
    info = machine()
    pairs = load_recording(args.recording)
    progress(f"{len(pairs):,} recorded readings, {pairs[0][1]['ts']} to {pairs[-1][1]['ts']}")
    real = validated(pairs, "host-rec")
    pi = validated([(r, m) for (r, _), m in zip(pairs, pi_shape([m for _, m in pairs]),
                                                   strict=True)], "pi-rec")
    shapes = {"host-rec": real, "pi-rec": pi}
    values = {d: sum(leaves(orjson.loads(orjson.dumps(m))) for m, _ in rs)
              for d, rs in shapes.items()}  # + received_at - v: the same count
    readings = {d: len(rs) for d, rs in shapes.items()}

    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-tiers-"))
    pg = PostgresServer(workdir / "pg").init().start()
    result: dict[str, Any] = {"readings": readings, "values": values}
    try:
        store = Store(pg.url)
        store.migrate()
        conn = psycopg.connect(pg.url, autocommit=True)
        conn.execute("set jit = off")
        lay = cold.layout()
        columns = [c.name for c in lay.columns]
        per: dict[str, dict[str, Any]] = {}
        for device, rs in shapes.items():
            # One device at a time, so each tier's bytes are this shape's alone.
            conn.execute(f"truncate metrics, {cold.TABLE}, metrics_1m, metrics_1h, devices")
            progress(f"{device}: writing {len(rs):,} readings hot")
            write_hot(store, rs, args.batch)
            conn.execute("vacuum analyze")
            hot = hot_bytes(conn)
            rows = conn.execute(f"select {', '.join(columns)} from metrics order by "
                                "device_id, ts, session_id, seq").fetchall()
            progress(f"{device}: compacting")
            compactor = Store(pg.url, application_name="fleetpulse-bench-compact")
            compactor.check()
            pid = compactor.query("select pg_backend_pid() as p")[0]["p"]
            hours = compactor.cold_candidates(datetime.now(UTC) + timedelta(days=1), 1000)
            own0, pg0, wall0 = time.process_time(), backend_cpu_s(pid), time.perf_counter()
            for dev, hour, _ in hours:
                compactor.compact_hour(lay, dev, hour)
            own_s, pg_s = time.process_time() - own0, backend_cpu_s(pid) - pg0
            wall_s = time.perf_counter() - wall0
            compactor.close()
            back = conn.execute(f"select {', '.join(columns)} from metrics_history(null, "
                                "'-infinity', 'infinity') order by device_id, ts, session_id, "
                                "seq").fetchall()
            assert back == rows, "the cold tier did not give the readings back"
            conn.execute("vacuum analyze")
            cold_alone = relation_bytes(conn, cold.TABLE)
            live = store.tier_sizes()
            # A table of a few blocks is mostly fixed overhead (empty pages, free space
            # and visibility maps, index roots): what each block adds at scale is the
            # growth when the same blocks are written 24 more times (earlier hours).
            copy_back(conn, lay, 24)
            conn.execute("vacuum analyze")
            cold_total = (relation_bytes(conn, cold.TABLE) - cold_alone) / 24
            minute, hour_r = relation_bytes(conn, "metrics_1m"), relation_bytes(conn, "metrics_1h")
            conn.execute("vacuum full metrics_1m, metrics_1h")
            minute_live = relation_bytes(conn, "metrics_1m")
            hour_live = relation_bytes(conn, "metrics_1h")
            # Per row at scale: the tuple, its line pointer and its primary-key entry (a
            # table of a few rows is mostly its first empty pages).
            rollup_row = {t: float(conn.execute(
                f"select avg(pg_column_size(r.*)) + 4 + 40 from {t} r").fetchone()[0])  # type: ignore[index]
                for t in ("metrics_1m", "metrics_1h")}
            n, v = readings[device], values[device]
            span_s = (rows[-1][3] - rows[0][3]).total_seconds() + 1
            conn.execute(f"delete from {cold.TABLE} where hour < %s", (hours[0][1],))
            conn.execute(f"vacuum full {cold.TABLE}")
            progress(f"{device}: candidates")
            cands = candidates(conn, lay, v)
            cands["Parquet zstd, JSON lists"] = parquet_bytes(rows, columns, False) / v
            cands["Parquet zstd, delta counters"] = parquet_bytes(rows, columns, True) / v
            per[device] = {
                "readings": n, "values_per_reading": v / n, "span_s": span_s,
                "blocks": len(hours),
                "hot_bytes_per_value": hot / v, "hot_bytes_per_reading": hot / n,
                "cold_bytes_per_value": cold_total / v, "cold_bytes_per_reading": cold_total / n,
                "cold_bytes_per_value_this_data_alone": cold_alone / v,
                "cold_live_bytes_per_value": live["cold_live"] / v,
                "minute_bytes_per_device_day": rollup_row["metrics_1m"] * 1440,
                "hour_bytes_per_device_day": rollup_row["metrics_1h"] * 24,
                "minute_file_bytes_after_load": minute, "hour_file_bytes_after_load": hour_r,
                "minute_live_bytes": minute_live, "hour_live_bytes": hour_live,
                "compaction_cpu_s_per_device_day": (own_s + pg_s) / n * DAY_S,
                "compaction_hub_cpu_s_per_device_day": own_s / n * DAY_S,
                "compaction_pg_cpu_s_per_device_day": pg_s / n * DAY_S,
                "compaction_wall_s": wall_s, "candidates": cands,
            }
            p = per[device]
            p["hot_bytes_per_device_day"] = p["hot_bytes_per_reading"] * DAY_S
            p["cold_bytes_per_device_day"] = p["cold_bytes_per_reading"] * DAY_S
            # One device reporting for 30 days: 48, 24 (the default) or 12 h hot, the rest cold,
            # 30 days of minute and hour rollups; per day.
            for hot_days in (2, 1, 0.5):
                p[f"whole_db_bytes_per_device_day_30d_hot_{hot_days:g}d"] = (
                    hot_days * p["hot_bytes_per_device_day"]
                    + (30 - hot_days) * p["cold_bytes_per_device_day"]
                    + 30 * (p["minute_bytes_per_device_day"]
                            + p["hour_bytes_per_device_day"])) / 30
            p["whole_db_bytes_per_device_day_30d"] = p["whole_db_bytes_per_device_day_30d_hot_1d"]
            # Today's format: 30 days of rows, and the same rollups.
            p["baseline_whole_db_bytes_per_device_day_30d"] = (
                p["hot_bytes_per_device_day"] + p["minute_bytes_per_device_day"]
                + p["hour_bytes_per_device_day"])
            # Compaction as a share of one core, for 100 devices at 1 reading/s.
            p["compaction_core_percent_per_100_devices"] = (
                100 * p["compaction_cpu_s_per_device_day"] * 100 / DAY_S)

        progress("queries and export")
        result["queries"] = queries(store, conn, pi, lay, args.batch)
        conn.close()
        store.close()
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["per_device"] = per
    report(result, info)
    path = write_result(args.label, {"benchmark": "tiers", "at": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": info,
        "recording": str(args.recording), **result})
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def shifted(p: cold.Part, shift: str, fresh: bool = False) -> str:
    """Part ``p`` of a block moved back in time by ``shift``: a block of schema 5 keeps its
    timestamps relative to its hour (moving the hour moves them); one of schema 4 as
    timestamptz[]. ``fresh``: a new datum, compressed afresh."""
    q = cold._q(p.name)
    if p.legacy and p.pg_type == "timestamptz[]":
        return (f"case when {q} is null then null else array(select t - {shift} from "
                f"unnest({q}) with ordinality u(t, i) order by i) end")
    return f"array_cat({q}, null)" if fresh else q


def copy_back(conn: psycopg.Connection[Any], lay: cold.Layout, times: int) -> None:
    """Write every cold block ``times`` more times, each set an hour-span earlier."""
    blocks = conn.execute(f"select min(hour), max(hour) from {cold.TABLE}").fetchone()
    assert blocks is not None
    span = blocks[1] - blocks[0] + timedelta(hours=1)
    parts = ", ".join(cold._q(p.name) for p in lay.parts)
    shift = "(k * %(span)s::interval)"
    moved = ", ".join(shifted(p, shift, fresh=True) for p in lay.parts)
    conn.execute(f"insert into {cold.TABLE} (device_id, hour, readings, parts, delta, {parts}) "
                 f"select device_id, hour - {shift}, readings, parts, delta, {moved} "
                 f"from {cold.TABLE}, generate_series(1, %(times)s) k where hour >= %(first)s",
                 {"span": span, "times": times, "first": blocks[0]})


def queries(store: Store, conn: psycopg.Connection[Any], pi: list[tuple[MetricsV1, datetime]],
            lay: cold.Layout, batch: int) -> dict[str, Any]:
    """Series and export timings over the Pi-shaped device, blocks copied back 90 days."""
    conn.execute(f"truncate metrics, {cold.TABLE}, metrics_1m, metrics_1h, devices")
    write_hot(store, pi, batch)
    hours = store.cold_candidates(datetime.now(UTC) + timedelta(days=1), 1000)
    # The first recorded hour stays hot (baseline); the rest is compacted.
    for dev, hour, _ in hours[1:]:
        store.compact_hour(lay, dev, hour)
    whole = hours[-1][1]  # the last block (a whole hour when the recording is long enough)
    hot_start = hours[0][1]
    # History copied back in time, before the first recorded hour: the last block for
    # 24 h, its minute and hour rollups for 90 days.
    parts = ", ".join(cold._q(p.name) for p in lay.parts)
    shift = "(%(whole)s - (%(hot)s - k * interval '1 hour'))"
    moved = ", ".join(shifted(p, shift) for p in lay.parts)
    conn.execute(f"insert into {cold.TABLE} (device_id, hour, readings, parts, delta, {parts}) "
                 "select device_id, %(hot)s - k * interval '1 hour', readings, parts, delta, "
                 f"{moved} from {cold.TABLE}, generate_series(1, 24) k where hour = %(whole)s",
                 {"hot": hot_start, "whole": whole})
    for rollup in ("metrics_1m", "metrics_1h"):
        names = [d.name for d in conn.execute(f"select * from {rollup} limit 0").description
                 or []][2:]
        listed = ", ".join(names)
        conn.execute(f"insert into {rollup} (device_id, bucket, {listed}) select device_id, "
                     f"bucket - (%s - %s) - d * interval '1 hour', {listed} from {rollup}, "
                     "generate_series(1, 90 * 24) d where bucket >= %s and bucket < %s "
                     "on conflict do nothing", (whole, hot_start, whole,
                                                whole + timedelta(hours=1)))
    conn.execute("vacuum analyze")
    reader = FleetReader(store)
    end = whole + timedelta(hours=1)
    out: dict[str, Any] = {}
    cases = {
        "1 h hot (baseline)": (hot_start, hot_start + timedelta(hours=1)),
        "1 h cold": (whole, end),
        "1 h across tiers": (hot_start + timedelta(minutes=30), hot_start + timedelta(minutes=90)),
        "12 h raw, cold": (hot_start - timedelta(hours=12), hot_start),
        "12 h cold": (hot_start - timedelta(hours=12), hot_start),
        "24 h": (end - timedelta(hours=24), end),
        "7 d": (end - timedelta(days=7), end),
        "90 d": (end - timedelta(days=90), end),
    }
    for name, (start, stop) in cases.items():
        resolution = choose_resolution(start, stop, source="raw" if "raw" in name else "auto")
        points = len(reader.series("pi-rec", start, stop, resolution, SERIES_COLUMNS)["t"])
        out[f"series {name} ms"] = timed(lambda s=start, e=stop, r=resolution: reader.series(
            "pi-rec", s, e, r, SERIES_COLUMNS))
        out[f"series {name} points"] = points
        out[f"series {name} source"] = resolution.source
    for fmt in ("csv", "parquet"):
        for name, (start, stop) in (("hot", cases["1 h hot (baseline)"]),
                                    ("cold", cases["1 h cold"])):
            sink = io.BytesIO()
            t0 = time.perf_counter()
            rows = export_to_file(store, sink, fmt, start, stop, "pi-rec")
            out[f"export {fmt} {name} rows/s"] = rows / (time.perf_counter() - t0)
    return out


def report(result: dict[str, Any], info: dict[str, Any]) -> None:
    print(f"\nStorage tiers on the real agent's readings; {describe_machine(info)}")
    rows = []
    for device, p in result["per_device"].items():
        rows.append([device, p["readings"], p["values_per_reading"], p["hot_bytes_per_value"],
                     p["cold_bytes_per_value"],
                     p["hot_bytes_per_value"] / p["cold_bytes_per_value"],
                     p["hot_bytes_per_device_day"] / 1e6, p["cold_bytes_per_device_day"] / 1e6,
                     (p["minute_bytes_per_device_day"] + p["hour_bytes_per_device_day"]) / 1e6,
                     p["whole_db_bytes_per_device_day_30d"] / 1e6,
                     p["compaction_core_percent_per_100_devices"]])
    print(table(["device", "readings", "values/reading", "hot B/value (baseline)",
                 "cold B/value", "× smaller", "hot MB/dev-day", "cold MB/dev-day",
                 "rollups MB/dev-day", "whole DB MB/dev-day (30 d)",
                 "compaction % core /100 dev, every block read back"], rows))
    for device, p in result["per_device"].items():
        print(f"{device}: candidates, bytes per value (whole relation or file): " + ", ".join(
            f"{k} {v:.3f}" for k, v in p["candidates"].items()))
        print(f"{device}: whole database per device-day over 30 days: hot window 48 h "
              f"{p['whole_db_bytes_per_device_day_30d_hot_2d'] / 1e6:.1f} MB, 24 h "
              f"{p['whole_db_bytes_per_device_day_30d_hot_1d'] / 1e6:.1f} MB (the default), 12 h "
              f"{p['whole_db_bytes_per_device_day_30d_hot_0.5d'] / 1e6:.1f} MB; today's format "
              f"{p['baseline_whole_db_bytes_per_device_day_30d'] / 1e6:.1f} MB")
        print(f"{device}: compaction CPU per device-day, every block read back (the hub reads "
              "one in cold_check_every back; bench.compaction_ab gives that figure) "
              f"{p['compaction_cpu_s_per_device_day']:.1f} s "
              f"(hub {p['compaction_hub_cpu_s_per_device_day']:.1f}, PostgreSQL "
              f"{p['compaction_pg_cpu_s_per_device_day']:.1f}); rollups after load "
              f"{p['minute_file_bytes_after_load']:,} / {p['hour_file_bytes_after_load']:,} B, "
              f"live {p['minute_live_bytes']:,} / {p['hour_live_bytes']:,} B")
    print(table(["query", "value"], [[k, v] for k, v in result["queries"].items()]))


if __name__ == "__main__":
    sys.exit(main())
